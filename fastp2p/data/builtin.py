"""The built-in default dataset: synthetic facades, generated on first use, nothing downloaded.

Each sample is a label map of a building front (wall, floors separated by cornices, a grid of windows
with sills, some balconies, a door) and a "photo" rendered from it: a colour and texture per class
(brick courses on the wall, glass with a reflection gradient, wood grain on the door, railing bars on
balconies), a soft sideways light and a little sensor noise. The photo follows from the labels except
for small per-building tints and the light, so labels -> photo (``--direction BtoA``, as for the
facades set) is learnable in minutes on a CPU, and so is photo -> labels.

Both layouts are written under one root: aligned ``train/`` and ``test/`` (A|B files, A = photo,
B = labels, as the facades set) and unaligned ``trainA/ trainB/ testA/ testB/`` with the same halves.
Files are PNG: label maps must keep their exact flat colours (JPEG would ring at every edge), and PNG
costs little here because the images are small and mostly flat.

Generation is deterministic (a NumPy ``RandomState`` per sample with a fixed seed), takes a couple of
seconds, and is atomic: it fills a temporary sibling folder and renames it into place, so a crash or
two processes starting at once never leave a half-written dataset.
"""

import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from fastp2p.errors import DatasetError

VERSION = 1
SIZE = 128
COUNTS = {"train": 200, "test": 20}
MARKER = "fastp2p_builtin.json"
SEED = 20240601

# label colours (RGB) per class
BACKGROUND, WALL, WINDOW, DOOR, BALCONY, CORNICE, SILL = range(7)
LABEL_COLOURS = np.array([
    (20, 20, 150),    # background (sky)
    (40, 110, 255),   # wall
    (0, 220, 255),    # window
    (255, 150, 0),    # door
    (210, 30, 40),    # balcony
    (110, 250, 110),  # cornice
    (250, 250, 0),    # sill
], dtype=np.uint8)


def builtin_dataroot(root="./datasets/fastp2p_builtin"):
    """Path of the built-in dataset, generating it first if ``root`` does not hold it yet."""
    if os.path.isfile(os.path.join(root, MARKER)):
        return root
    if os.path.exists(root):
        raise DatasetError(f"{root} exists but is not a complete fastp2p built-in dataset "
                           f"(no {MARKER}); remove it or pass --dataroot")
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".fastp2p_builtin.", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
    try:
        write_dataset(staging)
        os.rename(staging, root)
    except OSError:
        if not os.path.isfile(os.path.join(root, MARKER)):  # not just another process finishing first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def write_dataset(folder):
    """All splits in both layouts, then the marker that says the folder is complete."""
    jobs = []
    for phase, count in COUNTS.items():
        for sub in (phase, phase + "A", phase + "B"):
            os.makedirs(os.path.join(folder, sub))
        jobs += [(folder, phase, number, len(jobs) + number) for number in range(1, count + 1)]
    # PNG encoding releases the GIL, so threads use every core; each sample has its own seed.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(lambda job: write_sample(*job), jobs))
    with open(os.path.join(folder, MARKER), "w") as marker:
        json.dump({"version": VERSION, "size": SIZE, "counts": COUNTS, "seed": SEED}, marker)


def write_sample(folder, phase, number, sample_id):
    photo, labels = render_sample(np.random.RandomState(SEED + sample_id))
    name = f"{number}.png"
    save_png(np.concatenate([photo, labels], axis=1), os.path.join(folder, phase, name))
    save_png(photo, os.path.join(folder, phase + "A", name))
    save_png(labels, os.path.join(folder, phase + "B", name))


def save_png(array, path):
    Image.fromarray(array).save(path)


def render_sample(rng):
    """(photo, label map) as uint8 HxWx3 arrays of one synthetic building."""
    classes = np.full((SIZE, SIZE), BACKGROUND, dtype=np.uint8)
    layout = building_layout(rng)
    for cls, (y0, y1, x0, x1) in layout:
        classes[y0:y1, x0:x1] = cls
    photo = render_photo(classes, layout, rng)
    return photo, LABEL_COLOURS[classes]


def building_layout(rng):
    """Rectangles ``(class, (y0, y1, x0, x1))`` in painting order, later ones on top."""
    left, right = rng.randint(4, 20), SIZE - rng.randint(4, 20)
    top = rng.randint(6, 30)
    floors = rng.randint(3, 6)
    columns = rng.randint(3, 6)
    floor_h = (SIZE - top) // floors
    col_w = (right - left) // columns
    win_w = max(4, int(col_w * rng.uniform(0.4, 0.65)))
    win_h = max(6, int(floor_h * rng.uniform(0.45, 0.65)))
    door_col = rng.randint(columns)
    rects = [(WALL, (top, SIZE, left, right))]
    for floor in range(floors):
        y = top + floor * floor_h
        rects.append((CORNICE, (y, y + 3, left - 2, right + 2)))
        win_y = y + 3 + (floor_h - 3 - win_h) // 2
        ground = floor == floors - 1
        balcony = not ground and floor > 0 and rng.rand() < 0.35
        for column in range(columns):
            x = left + column * col_w + (col_w - win_w) // 2
            if ground and column == door_col:
                rects.append((DOOR, (win_y - 2, SIZE, x - 1, x + win_w + 1)))
                continue
            rects.append((WINDOW, (win_y, win_y + win_h, x, x + win_w)))
            if balcony:
                rects.append((BALCONY, (win_y + win_h * 2 // 3, win_y + win_h + 2, x - 3, x + win_w + 3)))
            else:
                rects.append((SILL, (win_y + win_h, win_y + win_h + 2, x - 1, x + win_w + 1)))
    return [(cls, clip_rect(rect)) for cls, rect in rects]


def clip_rect(rect):
    y0, y1, x0, x1 = rect
    return max(0, y0), min(SIZE, y1), max(0, x0), min(SIZE, x1)


def render_photo(classes, layout, rng):
    """Paint each class's material, then light and noise over the whole image."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    photo = np.zeros((SIZE, SIZE, 3), dtype=np.float32)

    sky = np.array([150, 190, 235], np.float32) + (yy[..., None] / SIZE) * np.array([40, 30, 10], np.float32)
    photo[:] = sky

    wall_tint = np.array([190, 120, 90], np.float32) + rng.uniform(-15, 15, 3)
    mortar = ((yy % 5) == 0) | (((xx + 5 * ((yy // 5) % 2)) % 10) == 0)
    wall = wall_tint - 45 * mortar[..., None]
    photo[classes == WALL] = wall[classes == WALL]

    stone = np.array([225, 215, 195], np.float32)
    wood = np.array([110, 65, 35], np.float32)
    metal = np.array([50, 50, 55], np.float32)
    for cls, (y0, y1, x0, x1) in layout:
        if y1 <= y0 or x1 <= x0:
            continue
        mask = classes[y0:y1, x0:x1] == cls
        ly, lx = yy[y0:y1, x0:x1] - y0, xx[y0:y1, x0:x1] - x0
        if cls == WINDOW:
            glass = 40 + 90 * np.clip(1 - (ly + lx) / (y1 - y0 + x1 - x0) * 1.6, 0, 1)
            frame = (ly == 0) | (lx == 0) | (ly == y1 - y0 - 1) | (lx == x1 - x0 - 1) | (lx == (x1 - x0) // 2)
            patch = np.where(frame[..., None], 235, glass[..., None] * np.array([0.8, 0.9, 1.1], np.float32))
        elif cls == DOOR:
            patch = wood * (1 - 0.25 * ((lx % 3) == 0))[..., None]
        elif cls == BALCONY:
            bars = ((lx % 3) == 0) | (ly == 0)
            patch = np.where(bars[..., None], metal, wall_tint * 0.6)
        elif cls in (CORNICE, SILL):
            patch = stone * (1 - 0.2 * (ly == y1 - y0 - 1))[..., None]
        else:
            continue
        photo[y0:y1, x0:x1][mask] = patch[mask]

    light_from_left = rng.rand() < 0.5
    ramp = (xx if light_from_left else SIZE - 1 - xx) / SIZE
    photo *= (1.1 - 0.25 * ramp)[..., None]
    photo += rng.normal(0, 2, photo.shape)
    return np.clip(photo, 0, 255).round().astype(np.uint8)
