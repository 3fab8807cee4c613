"""Line charts drawn with PIL alone (no matplotlib), for the curves on the run's web page.

A chart is a stack of panels; each panel has a title, axes with tick labels, one coloured line per series and a
legend. A panel whose values are all positive and span more than a factor of 20 is drawn on a log scale, so
pix2pix's G_L1 (tens) and its D losses (below 1) are all readable on one panel.
"""

import math

from PIL import Image, ImageDraw, ImageFont

WIDTH, PANEL_HEIGHT = 900, 300
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 70, 20, 28, 40
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
LOG_SPAN = 20  # a positive panel spanning more than this factor gets a log scale


def nice_ticks(low, high, count=5):
    """Round tick values covering [low, high]: steps of 1, 2 or 5 times a power of ten."""
    if high <= low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        if value >= low - step * 1e-9:
            ticks.append(round(value, 12))
        value += step
    return ticks


def log_ticks(low, high):
    """Tick positions (log10 of the values) in [low, high]: 1, 2 and 5 times powers of ten, or the powers alone
    when those would crowd the axis."""
    decades = range(math.floor(low), math.ceil(high) + 1)
    for multiples in ((1, 2, 5), (1,)):
        ticks = [math.log10(m) + k for k in decades for m in multiples
                 if low - 1e-9 <= math.log10(m) + k <= high + 1e-9]
        if len(ticks) <= 8:
            break
    return ticks if len(ticks) >= 2 else nice_ticks(low, high)


def tick_label(value):
    return f"{value:.3g}"


def draw_panel(draw, font, top, title, series, x_label):
    """One panel at ``top``: ``series`` maps a name to its (x, y) points."""
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    plot_top, plot_bottom = top + MARGIN_TOP, top + PANEL_HEIGHT - MARGIN_BOTTOM
    draw.text((left, top + 6), title, fill="black", font=font)
    points = [(x, y) for values in series.values() for x, y in values if math.isfinite(y)]
    draw.rectangle((left, plot_top, right, plot_bottom), outline=(160, 160, 160))
    if not points:
        draw.text((left + 10, plot_top + 10), "no values yet", fill=(120, 120, 120), font=font)
        return
    xs, ys = [x for x, _ in points], [y for _, y in points]
    log = min(ys) > 0 and max(ys) / min(ys) > LOG_SPAN
    scale = math.log10 if log else (lambda v: v)
    x_low, x_high = min(xs), max(xs)
    y_low, y_high = scale(min(ys)), scale(max(ys))
    if x_high == x_low:
        x_low, x_high = x_low - 0.5, x_high + 0.5
    if y_high == y_low:
        y_low, y_high = y_low - 0.5, y_high + 0.5

    def px(x):
        return left + (x - x_low) / (x_high - x_low) * (right - left)

    def py(scaled):
        return plot_bottom - (scaled - y_low) / (y_high - y_low) * (plot_bottom - plot_top)

    for tick in nice_ticks(x_low, x_high):
        draw.line((px(tick), plot_bottom, px(tick), plot_bottom + 4), fill="black")
        draw.text((px(tick) - 8, plot_bottom + 6), tick_label(tick), fill="black", font=font)
    for tick in (log_ticks if log else nice_ticks)(y_low, y_high):
        draw.line((left - 4, py(tick), left, py(tick)), fill="black")
        draw.line((left + 1, py(tick), right - 1, py(tick)), fill=(232, 232, 232))
        draw.text((4, py(tick) - 6), tick_label(10 ** tick if log else tick), fill="black", font=font)
    draw.text(((left + right) // 2 - 20, plot_bottom + 22), x_label + (" (y: log scale)" if log else ""),
              fill="black", font=font)
    legend_x = right - 10
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        line = [(px(x), py(scale(y))) for x, y in values if math.isfinite(y)]
        if len(line) > 1:  # each line narrower than the one before, so that equal series all show
            draw.line(line, fill=color, width=max(5 - i, 1))
        elif line:
            x, y = line[0]
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)
        legend_x -= draw.textlength(name, font=font) + 24
        draw.line((legend_x, top + 13, legend_x + 14, top + 13), fill=color, width=3)
        draw.text((legend_x + 17, top + 6), name, fill="black", font=font)


def draw_chart(panels, x_label="epoch"):
    """An RGB image of ``panels``, a list of (title, {series name: [(x, y), ...]}), one above the other."""
    image = Image.new("RGB", (WIDTH, PANEL_HEIGHT * max(len(panels), 1)), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for i, (title, series) in enumerate(panels):
        draw_panel(draw, font, i * PANEL_HEIGHT, title, series, x_label)
    return image
