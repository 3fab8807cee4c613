"""Pages of result images: each visual saved as a PNG (the reference's bytes, stretched by --aspect_ratio) and a
static HTML page of them, for fastp2p.test's results and the training run's web/ folder. Nothing is written through
a link planted in the folder (output_files)."""

import html
import os

from PIL import Image

from fastp2p.data.image_folder import MAX_IMAGE_PIXELS
from fastp2p.errors import OptionError
from fastp2p.metrics import to_uint8
from fastp2p.output_files import open_output, output_folder


def tensor2im(image_tensor):
    """First image of a [-1, 1] batch as an HxWx3 uint8 array (grayscale tiled to RGB), the reference's bytes
    (metrics.to_uint8 says how)."""
    return to_uint8(image_tensor[:1].cpu())[0].permute(1, 2, 0).numpy()


def stretched_size(width, height, aspect_ratio):
    """(width, height) of an image saved with --aspect_ratio: the height times it above 1, the width times its
    inverse below 1, as the reference stretches them; refused when that is over the pixel limit of an image."""
    size = ((width, int(height * aspect_ratio)) if aspect_ratio > 1.0 else
            (int(width / aspect_ratio), height) if aspect_ratio < 1.0 else (width, height))
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise OptionError(f"--aspect_ratio {aspect_ratio:g} would stretch the {width}x{height} results to "
                          f"{size[0]}x{size[1]} pixels, over the limit of {MAX_IMAGE_PIXELS:,} pixels per image; "
                          f"use a ratio nearer 1")
    return size


def save_image(array, path, aspect_ratio=1.0):
    """A PNG of ``array`` stretched by ``aspect_ratio`` (stretched_size), never written through a link."""
    image = Image.fromarray(array)
    size = stretched_size(image.width, image.height, aspect_ratio)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    with open_output(path, "wb") as f:
        image.save(f, format="PNG")


class HTMLPage:
    """A static page of image rows: each row is one sample, its visuals side by side."""

    def __init__(self, folder, title, refresh=0):
        self.folder = folder
        self.title = title
        self.refresh = refresh
        self.image_folder = os.path.join(folder, "images")
        output_folder(folder)
        output_folder(self.image_folder)
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

    def add_figure(self, name):
        """An image of the page's own folder (not images/), at its own size."""
        self.parts.append(f'<p><a href="{html.escape(name)}"><img src="{html.escape(name)}"></a></p>')

    def add_table(self, columns, rows):
        head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
        self.parts.append(f'<table border="1" style="border-collapse:collapse"><tr>{head}</tr>{body}</table>')

    def save(self):
        meta = f'<meta http-equiv="refresh" content="{self.refresh}">' if self.refresh > 0 else ""
        body = "\n".join(self.parts)
        page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">{meta}<title>{html.escape(self.title)}"
                f"</title></head>\n<body>\n{body}\n</body></html>\n")
        path = os.path.join(self.folder, "index.html")
        tmp = path + ".tmp"
        with open_output(tmp) as f:
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
