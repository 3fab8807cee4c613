"""python -m fastp2p.datasets against a local HTTP server on 127.0.0.1 (never the internet): full downloads in the
reference's layout, a cut download resumed with a Range request, sizes that disagree with the server's, corrupt
archives and archives with members outside their folder refused, dead links, and a pretrained generator that lands
where fastp2p.test finds it."""

import importlib
import io
import os
import re
import subprocess
import sys
import tarfile
import threading
import tomllib
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from fastp2p import datasets as command
from fastp2p.downloads import catalog
from fastp2p.networks import define_G

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FileServer(HTTPServer):
    """Serves ``files`` (name -> bytes) with byte ranges; ``cut`` (name -> n) sends the full length in its header
    and only n bytes before closing (a dropped connection); ``no_ranges`` answers every request with the whole file;
    ``requests`` records (path, Range header) of each request."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files, self.cut, self.no_ranges, self.requests = {}, {}, False, []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/mirror"


class RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request a connection: a cut response ends with the connection

    def do_GET(self):
        server = self.server
        name = self.path.removeprefix("/mirror/")
        wanted = self.headers.get("Range")
        server.requests.append((self.path, wanted))
        if name not in server.files:
            self.send_error(404, "Not Found")
            return
        body = server.files[name]
        start = int(re.match(r"bytes=(\d+)-$", wanted)[1]) if wanted and not server.no_ranges else 0
        if start >= len(body) and wanted and not server.no_ranges:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:start + server.cut.pop(name, len(body))])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = FileServer()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="test-file-server", daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)
    assert not thread.is_alive()


def tar_gz(members):
    """A .tar.gz of (name, bytes) files, or TarInfo objects as they are (links, devices)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                archive.addfile(info, io.BytesIO(member[1]))
    return buffer.getvalue()


def zip_bytes(members):
    """A .zip of (name, bytes, unix mode or None)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


FACADES = [(f"facades/{split}/{i}.jpg", os.urandom(3000) + bytes([i])) for split in ("train", "val", "test")
           for i in range(1, 4)]


def run(capsys, *argv):
    """(exit status, stdout, stderr) of the command."""
    status = command.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastp2p.datasets: error: "), err
    return lines[0]


def leftovers(root):
    """Everything under ``root`` that is not the landed folder: .part files, archives, staging folders."""
    return sorted(entry for entry in os.listdir(root) if entry.startswith(".") or "." in entry)


def test_the_reference_urls_and_file_names_are_the_default():
    assert catalog.find("dataset", "facades").url() == \
        "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/facades.tar.gz"
    assert catalog.find("dataset", "horse2zebra").url() == \
        "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/horse2zebra.zip"
    assert catalog.find("dataset", "facades", "cyclegan").url("http://m/x/") == "http://m/x/facades.zip"
    assert catalog.find("model", "horse2zebra").url() == \
        "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/horse2zebra.pth"
    assert catalog.find("model", "facades_label2photo").url() == \
        "http://efrosgans.eecs.berkeley.edu/pix2pix/models-pytorch/facades_label2photo.pth"


def test_the_console_script_and_the_module_are_the_command():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["fastp2p-datasets"]
    module, name = target.split(":")
    assert getattr(importlib.import_module(module), name) is command.main
    listed = subprocess.run([sys.executable, "-m", "fastp2p.datasets", "list"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert listed.returncode == 0 and "horse2zebra" in listed.stdout


def test_list_shows_datasets_and_models_and_unknown_names_are_one_line(capsys, tmp_path):
    status, out, _ = run(capsys, "list")
    assert status == 0 and "horse2zebra" in out and "edges2handbags" in out and "style_monet" in out
    status, _, err = run(capsys, "download", "horse2zebraa", "--root", tmp_path)
    assert status == 2 and "unknown dataset 'horse2zebraa'" in one_line_error(err)
    status, _, err = run(capsys, "download", "cityscapes", "--root", tmp_path)
    assert status == 2 and "--kind cyclegan" in one_line_error(err)
    assert os.listdir(tmp_path) == []


def test_a_pix2pix_set_lands_in_the_reference_layout(server, capsys, tmp_path):
    server.files["facades.tar.gz"] = tar_gz(FACADES)
    status, out, err = run(capsys, "download", "facades", "--root", tmp_path, "--base_url", server.url)
    assert status == 0, err
    for name, data in FACADES:
        assert (tmp_path / name).read_bytes() == data
    assert leftovers(tmp_path) == []  # the archive is removed, as the reference's script does
    status, out, _ = run(capsys, "download", "facades", "--root", tmp_path, "--base_url", server.url)
    assert status == 0 and "already there" in out and len(server.requests) == 1


def test_a_cyclegan_zip_lands_in_the_reference_layout(server, capsys, tmp_path):
    members = [(f"horse2zebra/{side}/n{i}.jpg", os.urandom(500), None) for side in ("trainA", "trainB", "testA",
                                                                                  "testB") for i in range(2)]
    server.files["horse2zebra.zip"] = zip_bytes(members + [("__MACOSX/horse2zebra/._x", b"fork", None)])
    status, _, err = run(capsys, "download", "horse2zebra", "--root", tmp_path, "--base_url", server.url)
    assert status == 0, err
    for name, data, _ in members:
        assert (tmp_path / name).read_bytes() == data
    assert sorted(os.listdir(tmp_path / "horse2zebra")) == ["testA", "testB", "trainA", "trainB"]
    assert os.listdir(tmp_path) == ["horse2zebra"]


def test_a_staging_folder_left_by_a_killed_run_is_cleared(server, capsys, tmp_path):
    server.files["facades.tar.gz"] = tar_gz(FACADES)
    (tmp_path / ".facades.x1y2.unpacking" / "facades").mkdir(parents=True)
    status, _, err = run(capsys, "download", "facades", "--root", tmp_path, "--base_url", server.url)
    assert status == 0, err
    assert os.listdir(tmp_path) == ["facades"]


def test_a_cut_download_is_kept_and_resumed_with_a_range_request(server, capsys, tmp_path):
    archive = tar_gz(FACADES)
    server.files["facades.tar.gz"] = archive
    server.cut["facades.tar.gz"] = 5000
    status, _, err = run(capsys, "download", "facades", "--root", tmp_path, "--base_url", server.url, "--timeout", 5)
    line = one_line_error(err)
    assert status == 2 and "stopped at 5000 of" in line and "again to resume" in line
    assert (tmp_path / "facades.tar.gz.part").read_bytes() == archive[:5000]
    assert not (tmp_path / "facades").exists()
    status, out, err = run(capsys, "download", "facades", "--root", tmp_path, "--base_url", server.url)
    assert status == 0, err
    assert server.requests[-1] == ("/mirror/facades.tar.gz", "bytes=5000-")
    assert "resuming facades.tar.gz.part at 4.9 KiB" in out
    assert (tmp_path / FACADES[0][0]).read_bytes() == FACADES[0][1]
    assert leftovers(tmp_path) == []


def test_a_server_that_ignores_the_range_sends_the_whole_file_again(server, capsys, tmp_path):
    archive = tar_gz(FACADES)
    server.files["facades.tar.gz"] = archive
    server.no_ranges = True
    (tmp_path / "facades.tar.gz.part").write_bytes(b"stale bytes of an older attempt")
    status, _, err = run(capsys, "download", "facades", "--root", tmp_path, "--base_url", server.url)
    assert status == 0, err
    assert (tmp_path / FACADES[-1][0]).read_bytes() == FACADES[-1][1]


def test_a_part_longer_than_the_file_is_downloaded_anew(server, capsys, tmp_path):
    archive = tar_gz(FACADES)
    server.files["facades.tar.gz"] = archive
    (tmp_path / "facades.tar.gz.part").write_bytes(os.urandom(len(archive) + 10))
    status, _, err = run(capsys, "download", "facades", "--root", tmp_path, "--base_url", server.url)
    assert status == 0, err
    assert [r[1] for r in server.requests] == [f"bytes={len(archive) + 10}-", None]
    assert (tmp_path / FACADES[0][0]).read_bytes() == FACADES[0][1]


def test_a_whole_part_file_needs_no_more_bytes(server, capsys, tmp_path):
    archive = tar_gz(FACADES)
    server.files["facades.tar.gz"] = archive
    (tmp_path / "facades.tar.gz.part").write_bytes(archive)
    status, _, err = run(capsys, "download", "facades", "--root", tmp_path, "--base_url", server.url)
    assert status == 0, err
    assert len(server.requests) == 1 and (tmp_path / FACADES[0][0]).is_file()


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
@pytest.mark.parametrize("file_name", ["facades.tar.gz", "facades.zip"])
def test_a_corrupt_archive_is_refused_before_anything_is_unpacked(server, capsys, tmp_path, damage, file_name):
    archive = bytearray(tar_gz(FACADES) if file_name.endswith(".tar.gz")
                        else zip_bytes([(name, data, None) for name, data in FACADES]))
    if damage == "flipped byte":
        archive[len(archive) // 2] ^= 0xFF
    else:
        archive = archive[: len(archive) - 40]
    server.files[file_name] = bytes(archive)  # served as it is: the server's size agrees with the bad file
    kind = "cyclegan" if file_name.endswith(".zip") else "pix2pix"
    status, _, err = run(capsys, "download", "facades", "--kind", kind, "--root", tmp_path, "--base_url", server.url)
    line = one_line_error(err)
    assert status == 2 and "is corrupt or incomplete" in line and "download it anew" in line
    assert os.listdir(tmp_path) == []  # neither the bad archive nor any of its files stay


def symlink(name, target):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def hardlink(name, target):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


def device(name):
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


OUTSIDE_TAR = {
    "dot-dot": [("facades/train/1.jpg", b"x"), ("facades/../../escaped.txt", b"owned")],
    "absolute": [("facades/train/1.jpg", b"x"), ("/tmp/fastp2p-escaped.txt", b"owned")],
    "symlink": [symlink("facades/train/link", "../../.."), ("facades/train/link/escaped.txt", b"owned")],
    "hardlink": [hardlink("facades/train/passwd", "/etc/passwd")],
    "device": [device("facades/train/null")],
}


@pytest.mark.parametrize("case", sorted(OUTSIDE_TAR))
def test_a_tar_member_outside_the_folder_refuses_the_whole_archive(server, capsys, tmp_path, case):
    root = tmp_path / "datasets"
    server.files["facades.tar.gz"] = tar_gz(OUTSIDE_TAR[case])
    status, _, err = run(capsys, "download", "facades", "--root", root, "--base_url", server.url)
    line = one_line_error(err)
    assert status == 2 and "refusing to unpack" in line and "nothing was unpacked" in line
    assert os.listdir(root) == [] and sorted(os.listdir(tmp_path)) == ["datasets"]
    assert not os.path.exists("/tmp/fastp2p-escaped.txt")


@pytest.mark.parametrize("member", [("horse2zebra/../escaped.txt", b"owned", None),
                                    ("/escaped.txt", b"owned", None),
                                    ("horse2zebra/trainA/link", b"../../..", 0o120777)])
def test_a_zip_member_outside_the_folder_refuses_the_whole_archive(server, capsys, tmp_path, member):
    root = tmp_path / "datasets"
    server.files["horse2zebra.zip"] = zip_bytes([("horse2zebra/trainA/1.jpg", b"x", None), member])
    status, _, err = run(capsys, "download", "horse2zebra", "--root", root, "--base_url", server.url)
    assert status == 2 and "refusing to unpack" in one_line_error(err)
    assert os.listdir(root) == [] and sorted(os.listdir(tmp_path)) == ["datasets"]


def test_a_dead_link_is_one_line_naming_the_url_and_the_mirror_flag(server, capsys, tmp_path):
    status, _, err = run(capsys, "download", "maps", "--root", tmp_path, "--base_url", server.url)
    line = one_line_error(err)
    assert status == 2 and f"{server.url}/maps.tar.gz: HTTP 404" in line and "--base_url" in line
    assert os.listdir(tmp_path) == []


def test_an_unreachable_server_is_one_line(capsys, tmp_path):
    with HTTPServer(("127.0.0.1", 0), RangeHandler) as closed:  # a port that was bound, then freed: nobody listens
        port = closed.server_address[1]
    status, _, err = run(capsys, "download", "maps", "--root", tmp_path, "--base_url", f"http://127.0.0.1:{port}",
                         "--timeout", 5)
    line = one_line_error(err)
    assert status == 2 and f"cannot reach http://127.0.0.1:{port}/maps.tar.gz" in line and "--base_url" in line


def generator_file(ngf=4):
    torch.manual_seed(0)
    state = define_G(3, 3, ngf, "resnet_9blocks", "instance", use_dropout=False).state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def test_a_file_that_is_no_state_dict_is_refused_as_a_pretrained_generator(server, capsys, tmp_path):
    buffer = io.BytesIO()
    torch.save([1, 2, 3], buffer)
    server.files["horse2zebra.pth"] = buffer.getvalue()
    status, _, err = run(capsys, "download_model", "horse2zebra", "--root", tmp_path, "--base_url", server.url)
    assert status == 2 and "is not a pretrained generator" in one_line_error(err)
    assert os.listdir(tmp_path) == []
    status, _, err = run(capsys, "download_model", "zebra2horse", "--root", tmp_path, "--base_url", server.url)
    assert status == 2 and f"{server.url}/zebra2horse.pth: HTTP 404" in one_line_error(err)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_pretrained_generator_lands_where_fastp2p_test_loads_it(server, capsys, tmp_path):
    from fastp2p import test as inference

    server.files["horse2zebra.pth"] = generator_file()
    checkpoints = tmp_path / "checkpoints"
    status, out, err = run(capsys, "download_model", "horse2zebra", "--root", checkpoints, "--base_url", server.url)
    assert status == 0, err
    assert os.listdir(checkpoints / "horse2zebra_pretrained") == ["latest_net_G.pth"]
    status = inference.main(["--model", "test", "--no_dropout", "--name", "horse2zebra_pretrained", "--ngf", "4",
                             "--checkpoints_dir", str(checkpoints), "--results_dir", str(tmp_path / "results"),
                             "--load_size", "64", "--crop_size", "64", "--num_test", "1", "--gpu_ids", "-1"])
    assert status == 0, capsys.readouterr().err
    images = os.listdir(tmp_path / "results" / "horse2zebra_pretrained" / "test_latest" / "images")
    assert any(name.endswith("_fake.png") for name in images)
