"""Training progress, shown by rank 0: a tqdm bar on a terminal, plain periodic lines in a log or a pipe.

Both show the same figures: images/s and iterations/s over the epoch so far (this process's part of it, after a
resume), the share of that time spent waiting for data, and the time left in the epoch and in the run at that
pace. Images are counted over all ranks (world size x local batch), so a DDP run shows the speed of the whole
run, once. The bar is drawn on stderr when stdout and stderr are terminals; otherwise (nohup, cluster logs,
captured notebooks, ``> log``) a line goes to stdout after each loss line (every --print_freq images) instead of
a bar, whose carriage returns would fill the log.
"""

import sys
import time

from tqdm import tqdm

POSTFIX_INTERVAL_S = 0.5  # how often the bar's figures are recomputed; tqdm redraws at most this often too


def format_duration(seconds):
    """H:MM:SS, or '?' before anything was timed."""
    if seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Figures of the epoch under way, drawn as a bar or written as lines; does nothing when not ``enabled``."""

    def __init__(self, batches_per_epoch, images_per_batch, last_epoch, enabled=True, bar=None, stream=None):
        """``bar``: draw a bar on ``stream`` (default stderr) rather than print lines; by default when stderr and
        stdout are both terminals (``train > log`` puts the progress lines in the log)."""
        self.batches_per_epoch = batches_per_epoch
        self.images_per_batch = images_per_batch
        self.last_epoch = last_epoch
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.use_bar = enabled and (sys.stderr.isatty() and sys.stdout.isatty() if bar is None else bar)
        self.bar = None
        self.start_epoch(1, 0)

    def start_epoch(self, epoch, batches_done):
        """``batches_done``: batches of this epoch trained before a resume, shown but not timed. The bar appears
        at the epoch's first iteration."""
        self.close()
        self.epoch, self.batches_before, self.batches = epoch, batches_done, 0
        self.data_wait = 0.0
        self.started = self.last_postfix = time.perf_counter()

    def update(self, data_wait):
        """One iteration done, after ``data_wait`` seconds spent waiting for its batch."""
        self.batches += 1
        self.data_wait += data_wait
        if self.use_bar and self.bar is None:
            self.bar = tqdm(total=self.batches_per_epoch, initial=self.batches_before, file=self.stream,
                            desc=f"epoch {self.epoch}/{self.last_epoch}", unit="it", leave=False, dynamic_ncols=True,
                            mininterval=POSTFIX_INTERVAL_S)
        if self.bar is not None:
            now = time.perf_counter()
            if now - self.last_postfix >= POSTFIX_INTERVAL_S:
                self.last_postfix = now
                self.bar.set_postfix_str(self.postfix(self.figures()), refresh=False)
            self.bar.update(1)

    def report(self):
        """Plain output's progress line (the bar shows the figures all along)."""
        if self.enabled and self.bar is None:
            print(self.line(), flush=True)

    def figures(self):
        """elapsed_s, images_per_s, iterations_per_s, data_wait_share, epoch_eta_s and run_eta_s (the time left
        at this pace)."""
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        rate = self.batches / elapsed
        left_in_epoch = max(self.batches_per_epoch - self.batches_before - self.batches, 0)
        left_in_run = left_in_epoch + max(self.last_epoch - self.epoch, 0) * self.batches_per_epoch
        return {
            "elapsed_s": elapsed,
            "images_per_s": rate * self.images_per_batch,
            "iterations_per_s": rate,
            "data_wait_share": self.data_wait / elapsed,
            "epoch_eta_s": left_in_epoch / rate if rate else float("inf"),
            "run_eta_s": left_in_run / rate if rate else float("inf"),
        }

    @staticmethod
    def postfix(figures):
        return (f"{figures['images_per_s']:.1f} img/s, data {100 * figures['data_wait_share']:.0f}%, "
                f"run ETA {format_duration(figures['run_eta_s'])}")

    def line(self):
        figures = self.figures()
        done = self.batches_before + self.batches
        return (f"[progress] epoch {self.epoch}/{self.last_epoch} iter {done}/{self.batches_per_epoch} "
                f"({100 * done / max(self.batches_per_epoch, 1):.0f}%) images {done * self.images_per_batch} | "
                f"{figures['images_per_s']:.1f} img/s {figures['iterations_per_s']:.2f} it/s | data wait "
                f"{100 * figures['data_wait_share']:.0f}% | ETA epoch {format_duration(figures['epoch_eta_s'])}, "
                f"run {format_duration(figures['run_eta_s'])}")

    def end_epoch(self):
        """The epoch's figures, with the bar taken down."""
        figures = self.figures()
        self.close()
        return figures

    def write(self, message):
        """A console line (stdout) that does not tear the bar: tqdm clears it, prints, and redraws it."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.clear()
            print(message, flush=True)
            self.bar.refresh()
        else:
            print(message)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
