"""What a run shows a person: the loss log, a progress line, images and HTML pages, TensorBoard.

The loss line keeps the reference's format, ``(epoch: E, iters: I, time: T, data: D) G_GAN: x ...``,
in the console and in ``checkpoints/NAME/loss_log.txt``, so existing log parsers keep working; speed
(images/s, data-loading share) goes on the progress line and on an end-of-epoch line. TensorBoard is
used only when the package is installed.
"""

import html
import importlib.util
import os
import re
import sys
import time

import numpy as np
from PIL import Image


def tensor2im(image_tensor):
    """First image of a [-1, 1] batch as an HxWx3 uint8 array (grayscale tiled to RGB), the reference's bytes.

    As the reference, ``(x + 1) / 2 * 255`` in float32 is truncated, not rounded. The reference does not
    clamp, so a value outside [-1, 1] wraps around in its uint8 cast; here it is clamped first. NaN becomes
    0, as the reference's cast gives.
    """
    array = image_tensor[0].detach().float().cpu().nan_to_num(nan=-1.0).clamp(-1, 1).numpy()
    if array.shape[0] == 1:
        array = np.tile(array, (3, 1, 1))
    return ((np.transpose(array, (1, 2, 0)) + 1) / 2.0 * 255.0).astype(np.uint8)


def save_image(array, path, aspect_ratio=1.0):
    image = Image.fromarray(array)
    h, w = array.shape[:2]
    if aspect_ratio > 1.0:
        image = image.resize((w, int(h * aspect_ratio)), Image.BICUBIC)
    elif aspect_ratio < 1.0:
        image = image.resize((int(w / aspect_ratio), h), Image.BICUBIC)
    image.save(path)


class HTMLPage:
    """A static page of image rows: each row is one sample, its visuals side by side."""

    def __init__(self, folder, title, refresh=0):
        self.folder = folder
        self.title = title
        self.refresh = refresh
        self.image_folder = os.path.join(folder, "images")
        os.makedirs(self.image_folder, exist_ok=True)
        self.parts = []

    def add_header(self, text):
        self.parts.append(f"<h3>{html.escape(text)}</h3>")

    def add_images(self, image_names, captions, width=256):
        cells = "".join(
            f'<td style="text-align:center;vertical-align:top;padding:4px">'
            f'<a href="images/{html.escape(name)}"><img src="images/{html.escape(name)}" style="width:{width}px"></a>'
            f"<br>{html.escape(caption)}</td>"
            for name, caption in zip(image_names, captions)
        )
        self.parts.append(f'<table border="1" style="table-layout:fixed"><tr>{cells}</tr></table>')

    def save(self):
        meta = f'<meta http-equiv="refresh" content="{self.refresh}">' if self.refresh > 0 else ""
        body = "\n".join(self.parts)
        page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">{meta}<title>{html.escape(self.title)}"
                f"</title></head>\n<body>\n{body}\n</body></html>\n")
        path = os.path.join(self.folder, "index.html")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(page)
        os.replace(tmp, path)


def save_visuals(page, visuals, sample_name, aspect_ratio=1.0):
    """Write one sample's visuals as ``{sample_name}_{label}.png`` into the page's image folder."""
    names = []
    for label, tensor in visuals.items():
        name = f"{sample_name}_{label}.png"
        save_image(tensor2im(tensor), os.path.join(page.image_folder, name), aspect_ratio)
        names.append(name)
    return names


WEB_IMAGE_NAME = re.compile(r"epoch(\d+)_(.+)\.png")


def snapshots_on_disk(image_folder, labels):
    """(epoch, file names, their labels) for each epoch with snapshots in ``image_folder``, newest first.

    Read from the files rather than kept in memory, so the page of a resumed run keeps the epochs before
    it. Labels come in the order of ``labels`` (the model's visuals), then any others by name.
    """
    snapshots = {}
    for name in os.listdir(image_folder):
        match = WEB_IMAGE_NAME.fullmatch(name)
        if match:
            snapshots.setdefault(int(match[1]), {})[match[2]] = name
    rank = {label: i for i, label in enumerate(labels)}
    for epoch in sorted(snapshots, reverse=True):
        names = snapshots[epoch]
        ordered = sorted(names, key=lambda label: (rank.get(label, len(rank)), label))
        yield epoch, [names[label] for label in ordered], ordered


class ProgressLine:
    """A one-line progress bar on a terminal; silent when output goes to a file or pipe."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.enabled = stream.isatty()
        self.drawn = False

    def update(self, epoch, done, total, images_per_s, data_share):
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        self.drawn = True
        self.stream.write(f"\repoch {epoch} [{bar}] {done}/{total} {images_per_s:8.1f} img/s "
                          f"data {100 * data_share:4.1f}%")
        self.stream.flush()

    def close(self):
        """End the bar's line so that the next print starts on a fresh one."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


class Visualizer:
    """Loss log, training-image pages under checkpoints/NAME/web, and optional TensorBoard scalars."""

    def __init__(self, opt, enabled=True):
        self.opt = opt
        self.enabled = enabled
        self.folder = os.path.join(opt.checkpoints_dir, opt.name)
        self.log_path = os.path.join(self.folder, "loss_log.txt")
        self.web_folder = os.path.join(self.folder, "web")
        self.progress = ProgressLine()
        self.tensorboard = None
        self.saved = False  # whether this epoch has a web/ snapshot yet (see reset)
        if not enabled:
            return
        os.makedirs(self.folder, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(f"================ Training Loss ({time.strftime('%c')}) ================\n")
        if not opt.no_tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(os.path.join(self.folder, "tensorboard"))
            print(f"TensorBoard logs: {os.path.join(self.folder, 'tensorboard')}")

    def print_current_losses(self, epoch, epoch_iter, losses, t_comp, t_data):
        message = f"(epoch: {epoch}, iters: {epoch_iter}, time: {t_comp:.3f}, data: {t_data:.3f}) "
        message += "".join(f"{name}: {value:.3f} " for name, value in losses.items())
        if not self.enabled:
            return
        self.progress.close()
        print(message)
        with open(self.log_path, "a") as f:
            f.write(message + "\n")

    def log_line(self, message):
        """A line for the console and the loss log (epoch summaries, learning-rate changes)."""
        if not self.enabled:
            return
        print(message)
        with open(self.log_path, "a") as f:
            f.write(message + "\n")

    def plot_current_losses(self, total_iters, losses, images_per_s=None):
        if self.tensorboard is None:
            return
        for name, value in losses.items():
            self.tensorboard.add_scalar(f"loss/{name}", value, total_iters)
        if images_per_s is not None:
            self.tensorboard.add_scalar("speed/images_per_s", images_per_s, total_iters)

    def reset(self):
        """Called at the start of each epoch: its first display is saved to web/ whatever save_result says."""
        self.saved = False

    def display_current_results(self, visuals, epoch, total_iters, save_result):
        """TensorBoard images; as the reference, web/images/epochNNN_<label>.png and web/index.html are written
        when save_result or at the epoch's first display, so every epoch keeps a snapshot."""
        if not self.enabled:
            return
        if self.tensorboard is not None:
            for label, tensor in visuals.items():
                self.tensorboard.add_image(label, tensor2im(tensor), total_iters, dataformats="HWC")
        if self.opt.no_html or (self.saved and not save_result):
            return
        self.saved = True
        page = HTMLPage(self.web_folder, f"Experiment name = {self.opt.name}")
        save_visuals(page, visuals, f"epoch{epoch:03d}")
        for snapshot_epoch, names, labels in snapshots_on_disk(page.image_folder, list(visuals)):
            page.add_header(f"epoch [{snapshot_epoch}]")
            page.add_images(names, labels, self.opt.display_winsize)
        page.save()

    def close(self):
        self.progress.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
