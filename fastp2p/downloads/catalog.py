"""What can be downloaded: the reference's datasets and pretrained generators, their URLs and file names.

The names are those the reference's download scripts accept (datasets/download_pix2pix_dataset.sh,
datasets/download_cyclegan_dataset.sh, scripts/download_pix2pix_model.sh, scripts/download_cyclegan_model.sh);
a file is fetched from ``<base URL>/<file name>``, the reference's server unless ``--base_url`` names a mirror.
A few names belong to both families (facades, maps, cityscapes; sat2map, map2sat, facades_label2photo): pix2pix's
is taken unless ``--kind cyclegan`` is given, as the pix2pix set is the one the name means in most commands.
"""

from dataclasses import dataclass

from fastp2p.errors import DownloadError

SERVER = "http://efrosgans.eecs.berkeley.edu"
FAMILIES = ("pix2pix", "cyclegan")

DATASETS = {
    "pix2pix": ("facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day"),
    "cyclegan": ("apple2orange", "summer2winter_yosemite", "horse2zebra", "monet2photo", "cezanne2photo",
                 "ukiyoe2photo", "vangogh2photo", "maps", "cityscapes", "facades", "iphone2dslr_flower", "ae_photos",
                 "mini", "mini_pix2pix", "mini_colorization"),
}
MODELS = {
    "pix2pix": ("edges2shoes", "sat2map", "map2sat", "facades_label2photo", "day2night"),
    "cyclegan": ("apple2orange", "orange2apple", "summer2winter_yosemite", "winter2summer_yosemite", "horse2zebra",
                 "zebra2horse", "monet2photo", "style_monet", "style_cezanne", "style_ukiyoe", "style_vangogh",
                 "sat2map", "map2sat", "cityscapes_photo2label", "cityscapes_label2photo", "facades_photo2label",
                 "facades_label2photo", "iphone2dslr_flower"),
}
WITHHELD = {
    ("dataset", "pix2pix", "cityscapes"): "the reference does not distribute pix2pix's Cityscapes set (its licence): "
    "download gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip from https://cityscapes-dataset.com and pair "
    "them with the reference's datasets/prepare_cityscapes_dataset.py, or take CycleGAN's with --kind cyclegan",
}
LAYOUTS = {
    ("dataset", "pix2pix"): "train/ val/ test/ of A|B side-by-side images (--dataset_mode aligned)",
    ("dataset", "cyclegan"): "trainA/ trainB/ testA/ testB/ (--dataset_mode unaligned)",
    ("model", "pix2pix"): "a pix2pix generator (unet_256, batch norm): --model pix2pix with the set's --direction",
    ("model", "cyclegan"): "one direction's generator (resnet_9blocks): --model test --no_dropout",
}
DEFAULT_BASES = {
    ("dataset", "pix2pix"): f"{SERVER}/pix2pix/datasets",
    ("dataset", "cyclegan"): f"{SERVER}/cyclegan/datasets",
    ("model", "pix2pix"): f"{SERVER}/pix2pix/models-pytorch",
    ("model", "cyclegan"): f"{SERVER}/cyclegan/pretrained_models",
}
EXTENSIONS = {("dataset", "pix2pix"): ".tar.gz", ("dataset", "cyclegan"): ".zip",
              ("model", "pix2pix"): ".pth", ("model", "cyclegan"): ".pth"}


@dataclass(frozen=True)
class Entry:
    """One downloadable thing: ``what`` is 'dataset' or 'model', ``family`` 'pix2pix' or 'cyclegan'."""

    what: str
    family: str
    name: str

    @property
    def file_name(self):
        """The reference's name of the file on its server (and on a mirror)."""
        return self.name + EXTENSIONS[self.what, self.family]

    @property
    def layout(self):
        return LAYOUTS[self.what, self.family]

    def url(self, base_url=None):
        base = (base_url or DEFAULT_BASES[self.what, self.family]).rstrip("/")
        return f"{base}/{self.file_name}"


def known(what):
    """family -> the names of ``what`` ('dataset' or 'model') the reference's scripts offer."""
    return DATASETS if what == "dataset" else MODELS


def find(what, name, family=None):
    """The entry ``name`` of ``what``, in ``family`` or else the first family that has it; a one-line error for a
    name the reference does not offer, or one it withholds."""
    families = [family] if family else [f for f in FAMILIES if name in known(what)[f]]
    if not families or name not in known(what)[families[0]]:
        where = f" of {family}" if family else ""
        offered = ", ".join(sorted({n for f in ([family] if family else FAMILIES) for n in known(what)[f]}))
        raise DownloadError(f"unknown {what} '{name}'{where}; known: {offered} (python -m fastp2p.datasets list)")
    withheld = WITHHELD.get((what, families[0], name))
    if withheld:
        raise DownloadError(f"{name}: {withheld}")
    return Entry(what, families[0], name)


def listing():
    """The text of ``list``: every dataset and model by family, with the folder layout each lands in."""
    lines = []
    titles = (("dataset", "datasets (download NAME)"), ("model", "pretrained generators (download_model NAME)"))
    for what, title in titles:
        lines.append(f"{title}:")
        for family in FAMILIES:
            names = [n if (what, family, n) not in WITHHELD else f"{n} (not distributed)" for n in known(what)[family]]
            lines.append(f"  {family}: {', '.join(names)}")
            lines.append(f"    {LAYOUTS[what, family]}")
    lines.append("a name of both families means pix2pix's unless --kind cyclegan is given")
    return "\n".join(lines)
