"""One file over HTTP into place: resumed from its ``.part`` file, its size checked against the server's.

The bytes go to ``DEST.part`` and become ``DEST`` only once the server's size is reached, so an interrupted
download (a dropped connection, Ctrl-C) leaves a ``.part`` that the next run continues with an HTTP Range request.
A server that ignores the range sends the whole file again, which replaces the ``.part``. Whether the bytes are the
right ones is the caller's check (an archive's CRCs, a checkpoint's unpickling): the size is all HTTP gives.
"""

import os
import re
import sys
import time
from http.client import HTTPException
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from fastp2p.errors import DownloadError

CHUNK_BYTES = 1 << 20
LINE_INTERVAL_S = 5.0  # how often plain progress lines are printed when there is no terminal for a bar
CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+)")
UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")


def mirror_hint(url):
    return f"fetch {os.path.basename(url)} from a mirror with --base_url URL (the file is taken from URL/" \
           f"{os.path.basename(url)})"


class ByteProgress:
    """A tqdm bar of bytes on stderr when it is a terminal, else a plain line on stdout now and then (a log, a
    pipe), as the trainer's progress does."""

    def __init__(self, label, total, done):
        self.label, self.total, self.done = label, total, done
        self.bar = None
        self.last_line = 0.0
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                                desc=label, file=sys.stderr, dynamic_ncols=True)
        if self.bar is None:
            self.line(force=True)

    def update(self, count):
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        else:
            self.line()

    def line(self, force=False):
        now = time.monotonic()
        if force or now - self.last_line >= LINE_INTERVAL_S:
            self.last_line = now
            share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
            total = f" of {size_text(self.total)}" if self.total else ""
            print(f"{self.label}: {size_text(self.done)}{total}{share}", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        else:
            self.line(force=True)


def size_text(count):
    """A byte count as people read it: 812 B, 3.4 KiB, 112.0 MiB."""
    for unit in ("B", "KiB", "MiB"):
        if count < 1024 or unit == "MiB":
            return f"{count} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def open_url(url, offset, timeout):
    """The server's response for the bytes of ``url`` from ``offset`` on; a one-line error for a dead link or an
    unreachable server. An offset at or past the end comes back as the HTTPError 416, for the caller."""
    headers = {"User-Agent": "fastp2p", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as error:
        if error.code == 416 and offset:
            return error
        error.close()
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}: the link is dead or the file has moved; "
                            f"{mirror_hint(url)}") from None
    except (URLError, OSError, HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"cannot reach {url}: {reason}; {mirror_hint(url)}") from None


def download(url, dest, timeout=60.0):
    """Fetch ``url`` into ``dest`` (see the module doc); a ``dest`` already there is taken as complete."""
    if os.path.isfile(dest):
        return dest
    part = dest + ".part"
    for _ in range(2):  # a second pass after a .part that the server says is not a start of its file
        offset = os.path.getsize(part) if os.path.isfile(part) else 0
        response = open_url(url, offset, timeout)
        with response:
            if response.status == 416:
                total = UNSATISFIED_RANGE.match(response.headers.get("Content-Range", ""))
                if total and int(total[1]) == offset:
                    break  # the .part already holds the whole file
                os.remove(part)
                continue
            total = receive(response, part, offset, url)
        check_size(url, part, total)
        break
    else:
        raise DownloadError(f"{url}: the server refuses the range of the partial download {part} again")
    os.replace(part, dest)
    return dest


def receive(response, part, offset, url):
    """Append the response's bytes to ``part`` (or write it anew when the server sent the whole file); the file's
    whole size as the server gives it, None when it gives none."""
    resumed = offset and response.status == 206
    length = response.headers.get("Content-Length")
    if resumed:
        span = CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not span or int(span[1]) != offset:
            raise DownloadError(f"{url}: the server answered the resume of {part} with another range "
                                f"({response.headers.get('Content-Range')}); delete {part} and run again")
        total = int(span[2])
    else:
        offset = 0
        total = int(length) if length and length.isdigit() else None
    if resumed:
        print(f"resuming {os.path.basename(part)} at {size_text(offset)}", flush=True)
    progress = ByteProgress(os.path.basename(url), total, offset)
    try:
        with open(part, "ab" if resumed else "wb") as f:
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
                progress.update(len(chunk))
    except (OSError, HTTPException) as error:  # a dropped connection: what arrived stays for a resume
        raise DownloadError(f"{url}: the download broke off at {os.path.getsize(part)} bytes ({error}); run the "
                            f"same command again to resume it") from None
    finally:
        progress.close()
    return total


def check_size(url, part, total):
    """The download is as long as the server said; a short one is kept for a resume, a long one removed."""
    size = os.path.getsize(part)
    if total is None or size == total:
        return
    if size < total:
        raise DownloadError(f"{url}: the download stopped at {size} of the {total} bytes the server announced; "
                            f"run the same command again to resume it from {part}")
    os.remove(part)
    raise DownloadError(f"{url}: got {size} bytes where the server announced {total}; the partial file was "
                        f"removed, run the same command again")
