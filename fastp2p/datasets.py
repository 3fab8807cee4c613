"""``python -m fastp2p.datasets``: the reference's datasets and pretrained generators, downloaded into place.

    python -m fastp2p.datasets list
    python -m fastp2p.datasets download facades              # -> ./datasets/facades/{train,val,test}
    python -m fastp2p.datasets download horse2zebra          # -> ./datasets/horse2zebra/{trainA,trainB,testA,testB}
    python -m fastp2p.datasets download_model horse2zebra    # -> ./checkpoints/horse2zebra_pretrained/latest_net_G.pth

Files come from the reference's server, or with ``--base_url URL`` from ``URL/<the reference's file name>``
(``facades.tar.gz``, ``horse2zebra.zip``, ``horse2zebra.pth``). A download cut short resumes where it stopped when
the command is run again; an archive is read in full and checked before anything is unpacked, and a pretrained
file must load as weights alone (fastp2p.checkpoint refuses one that would run code). Every failure is one line,
exit status 2.
"""

import argparse
import os
import sys

from fastp2p.checkpoint import read_checkpoint
from fastp2p.downloads import archives, catalog
from fastp2p.downloads.fetch import download
from fastp2p.errors import CheckpointError, DownloadError


def fetch_dataset(name, root="datasets", base_url=None, kind=None, timeout=60.0):
    """Download and unpack dataset ``name`` as ROOT/NAME; the folder's path (left as it is when already there)."""
    entry = catalog.find("dataset", name, kind)
    target = os.path.join(root, name)
    if os.path.exists(target):
        print(f"{target} is already there: nothing downloaded (remove it to download {name} again)")
        return target
    os.makedirs(root, exist_ok=True)
    url = entry.url(base_url)
    print(f"{entry.family} dataset {name}: {url}")
    archive = download(url, os.path.join(root, entry.file_name), timeout)
    archives.unpack(archive, target)
    print(f"{name} is at {target}: {entry.layout}")
    return target


def fetch_model(name, root="checkpoints", base_url=None, kind=None, timeout=60.0):
    """Download pretrained generator ``name`` as ROOT/NAME_pretrained/latest_net_G.pth, the reference's place for
    it; the file's path. It becomes that file only once it loads as a state_dict of tensors."""
    entry = catalog.find("model", name, kind)
    folder = os.path.join(root, f"{name}_pretrained")
    target = os.path.join(folder, "latest_net_G.pth")
    if os.path.exists(target):
        print(f"{target} is already there: nothing downloaded (remove it to download {name} again)")
        return target
    os.makedirs(folder, exist_ok=True)
    url = entry.url(base_url)
    print(f"{entry.family} pretrained generator {name}: {url}")
    try:
        fetched = download(url, os.path.join(folder, entry.file_name), timeout)
        check_state_dict(fetched, url)
    except DownloadError:
        if not os.listdir(folder):  # nothing to resume from: no empty NAME_pretrained folder is left behind
            os.rmdir(folder)
        raise
    os.replace(fetched, target)
    print(f"{name} is at {target}: {entry.layout}; test it with --name {name}_pretrained --checkpoints_dir {root}")
    return target


def check_state_dict(path, url):
    """A fetched generator must read as a state_dict of tensors; anything else is removed with a one-line error."""
    try:
        state = read_checkpoint(path)
        problem = None if isinstance(state, dict) and state and all(hasattr(v, "shape") for v in state.values()) \
            else f"it holds a {type(state).__name__}, not a network's state_dict"
    except CheckpointError as error:
        problem = str(error)
    if problem:
        os.remove(path)
        raise DownloadError(f"{url} is not a pretrained generator ({problem}); it was removed")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fastp2p.datasets", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the datasets and pretrained generators that can be downloaded")
    for command, what, root in (("download", "dataset", "datasets"), ("download_model", "model", "checkpoints")):
        sub = commands.add_parser(command, help=f"download a {what} of the reference's")
        sub.add_argument("name", help="a name that `list` shows")
        sub.add_argument("--root", default=root, metavar="DIR", help=f"where it lands: DIR/NAME (default ./{root})")
        sub.add_argument("--base_url", default=None, metavar="URL",
                         help="a mirror: the file is fetched from URL/<the reference's file name>")
        sub.add_argument("--kind", choices=catalog.FAMILIES, default=None,
                         help="pix2pix's or CycleGAN's, for a name both have (default: pix2pix's)")
        sub.add_argument("--timeout", type=float, default=60.0, help="seconds to wait on the server")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.command == "list":
            print(catalog.listing())
        else:
            fetch = fetch_dataset if args.command == "download" else fetch_model
            fetch(args.name, args.root, args.base_url, args.kind, args.timeout)
    except DownloadError as error:
        print(f"fastp2p.datasets: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastp2p.datasets: interrupted: run the same command again to resume the download", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
