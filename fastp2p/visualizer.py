"""What a run shows a person: console lines, the loss log, web pages of images and curves, TensorBoard, wandb.

The loss line keeps the reference's format, ``(epoch: E, iters: I, time: T, data: D) G_GAN: x ...``,
in the console and in ``checkpoints/NAME/loss_log.txt``, so existing log parsers keep working; speed
(images/s, data-loading share, time left) goes on the progress bar or lines (progress.py) and on an end-of-epoch
line, which also names each optimizer's learning rate. The web page's curves are drawn from that log.
TensorBoard is used only when the package is installed, wandb only with --use_wandb.
"""

import csv
import importlib
import importlib.util
import os
import re
import time

from fastp2p import distributed
from fastp2p.chart import draw_chart
from fastp2p.errors import OptionError
from fastp2p.metrics import format_scores
from fastp2p.output_files import open_output, output_folder
from fastp2p.progress import Progress
from fastp2p.web_page import HTMLPage, save_visuals, tensor2im

CURVES_IMAGE = "curves.png"
WANDB_RUN_ID = "wandb_run_id"  # in the checkpoint folder: the wandb run a resumed training run continues


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


LOSS_LINE = re.compile(r"\(epoch: (\d+), iters: (\d+), [^)]*\) (.*)")
EPOCH_LINE = re.compile(r"End of epoch (\d+) / .*, lr ((?:\S+=\S+ ?)+)$")
NAME_VALUE = re.compile(r"([^\s:=]+)[:=] ?(\S+)")


class LossHistory:
    """The loss and learning-rate curves of ``loss_log.txt``, read from the file (each call reads the lines added
    since the last), so that the curves of a resumed run start where the first run started.

    x is in epochs: a loss line at ``iters`` images into epoch E is at E - 1 + iters / epoch_images, the learning
    rate of epoch E (on its end-of-epoch line) at E. A resumed run redoes the iterations after its checkpoint; its
    points replace those of the run it resumed."""

    def __init__(self, path, epoch_images):
        self.path = path
        self.epoch_images = max(epoch_images, 1)
        self.losses, self.learning_rates = {}, {}
        self.offset = 0

    @staticmethod
    def add(series, x, text):
        for name, value in NAME_VALUE.findall(text):
            points = series.setdefault(name, [])
            while points and points[-1][0] >= x:
                points.pop()
            points.append((x, float(value)))

    def read(self):
        if not os.path.isfile(self.path):
            return self
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line being written is read next time
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            loss = LOSS_LINE.match(line)
            epoch = EPOCH_LINE.match(line)
            if loss:
                self.add(self.losses, int(loss[1]) - 1 + int(loss[2]) / self.epoch_images, loss[3])
            elif epoch:
                self.add(self.learning_rates, int(epoch[1]), epoch[2])
        return self


def read_metrics(path):
    """(columns, rows) of metrics.csv, or None before the first evaluation."""
    if not os.path.isfile(path):
        return None
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return (rows[0], rows[1:]) if rows else None


def require_wandb(opt):
    """--use_wandb without the wandb package: an OptionError before anything is built or trained."""
    if opt.use_wandb:
        try:
            importlib.import_module("wandb")
        except ImportError:
            raise OptionError("--use_wandb needs the wandb package: pip install 'fastp2p[wandb]'") from None


class Visualizer:
    """What rank 0 shows of a run: console lines beside the progress bar, the loss log, the web page of
    snapshots, curves and metrics, metrics.csv, TensorBoard (when installed) and wandb (--use_wandb).
    ``enabled=False`` (other ranks) does nothing but keep a silent progress object."""

    def __init__(self, opt, enabled=True, batches_per_epoch=1):
        self.opt = opt
        self.enabled = enabled
        self.folder = os.path.join(opt.checkpoints_dir, opt.name)
        self.log_path = os.path.join(self.folder, "loss_log.txt")
        self.metrics_path = os.path.join(self.folder, "metrics.csv")
        self.web_folder = os.path.join(self.folder, "web")
        images_per_step = opt.batch_size * getattr(opt, "accum_steps", 1)
        self.progress = Progress(batches_per_epoch, images_per_step * distributed.world_size(),
                                 opt.n_epochs + opt.n_epochs_decay, enabled=enabled)
        self.history = LossHistory(self.log_path, batches_per_epoch * images_per_step)
        self.labels = []  # the model's visuals, in its order, once displayed
        self.tensorboard = None
        self.wandb = None
        self.saved = False  # whether this epoch has a web/ snapshot yet (see reset)
        if not enabled:
            return
        os.makedirs(self.folder, exist_ok=True)
        with open_output(self.log_path, "a") as f:
            f.write(f"================ Training Loss ({time.strftime('%c')}) ================\n")
        if not opt.no_tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(output_folder(os.path.join(self.folder, "tensorboard")))
            print(f"TensorBoard logs: {os.path.join(self.folder, 'tensorboard')}")
        if opt.use_wandb:
            self.wandb = self.start_wandb(opt)

    def start_wandb(self, opt):
        """A wandb run for this training run; a resumed one (--continue_train) continues the run it started, whose
        id it kept in the checkpoint folder, so the curves go on in one place."""
        import wandb

        config = opt.values()
        id_path = os.path.join(self.folder, WANDB_RUN_ID)
        resume = {}
        if getattr(opt, "continue_train", False) and os.path.isfile(id_path):  # a FIFO there would block
            with open(id_path) as f:
                resume = dict(id=f.read().strip(), resume="allow")
        run = wandb.init(project=opt.wandb_project_name, name=opt.name, config=config, dir=self.folder, **resume)
        with open_output(id_path) as f:
            f.write(run.id)
        return run

    def write(self, message):
        """A line for the console and the loss log."""
        if not self.enabled:
            return
        self.progress.write(message)
        with open_output(self.log_path, "a") as f:
            f.write(message + "\n")

    def print_current_losses(self, epoch, epoch_iter, losses, t_comp, t_data):
        message = f"(epoch: {epoch}, iters: {epoch_iter}, time: {t_comp:.3f}, data: {t_data:.3f}) "
        self.write(message + "".join(f"{name}: {value:.3f} " for name, value in losses.items()))

    def log_epoch_end(self, epoch, last_epoch, figures, learning_rates):
        """The end-of-epoch line (the reference's, with the speed and each optimizer's learning rate, which the
        curves read back: EPOCH_LINE), then the page again: its curves were last drawn before the epoch's last
        loss lines and this line were written."""
        rates = " ".join(f"{name}={value:.7f}" for name, value in learning_rates.items())
        self.write(f"End of epoch {epoch} / {last_epoch} \t Time Taken: {int(figures['elapsed_s'])} sec \t "
                   f"{figures['images_per_s']:.1f} img/s, data wait {100 * figures['data_wait_share']:.1f}%, "
                   f"lr {rates}")
        if self.enabled:
            self.write_page()

    def log_scalars(self, step, scalars):
        """``{'group/name': value}`` at iteration ``step`` to TensorBoard and wandb."""
        if self.tensorboard is not None:
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def plot_current_losses(self, total_iters, losses, learning_rates, figures):
        """Losses, each optimizer's learning rate and the progress figures (images/s, iterations/s, data wait)."""
        scalars = {f"loss/{name}": value for name, value in losses.items()}
        scalars.update({f"lr/{name}": value for name, value in learning_rates.items()})
        scalars.update({f"speed/{name}": figures[name]
                        for name in ("images_per_s", "iterations_per_s", "data_wait_share")})
        self.log_scalars(total_iters, scalars)

    def log_metrics(self, epoch, total_iters, phase, values):
        """An evaluation's scores: the console, metrics.csv (epoch, iteration, one column a metric), TensorBoard,
        wandb and the web page."""
        if not self.enabled:
            return
        self.write(f"metrics of epoch {epoch} on the {phase} split: "
                   + ", ".join(format_scores(values).splitlines()))
        existing = read_metrics(self.metrics_path)
        columns = existing[0] if existing else ["epoch", "iteration", *values]
        with open_output(self.metrics_path, "a", newline="") as f:
            writer = csv.DictWriter(f, columns, restval="", extrasaction="ignore")
            if not existing:
                writer.writeheader()
            writer.writerow({"epoch": epoch, "iteration": total_iters, **{k: f"{v:.6g}" for k, v in values.items()}})
        self.log_scalars(total_iters, {f"metrics/{name}": value for name, value in values.items()})
        self.write_page()

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
        self.labels = list(visuals)
        save_visuals(HTMLPage(self.web_folder, ""), visuals, f"epoch{epoch:03d}")
        self.write_page()

    def draw_curves(self, metrics):
        """The losses and learning rates of the loss log, and the metrics of ``metrics`` (read_metrics), by epoch."""
        history = self.history.read()
        panels = [("losses", history.losses), ("learning rate", history.learning_rates)]
        if metrics:
            columns, rows = metrics
            panels.append(("metrics (--eval_freq)", {
                name: [(int(row[0]), float(row[i])) for row in rows if len(row) > i and row[i]]
                for i, name in enumerate(columns) if name not in ("epoch", "iteration")}))
        return draw_chart(panels)

    def write_page(self):
        """web/index.html: the curves (web/curves.png, redrawn from the loss log now), the metrics table, and
        the snapshots of every epoch on disk, newest first."""
        if self.opt.no_html:
            return
        page = HTMLPage(self.web_folder, f"Experiment name = {self.opt.name}")
        metrics = read_metrics(self.metrics_path)
        tmp = os.path.join(self.web_folder, "curves.tmp.png")
        with open_output(tmp, "wb") as f:
            self.draw_curves(metrics).save(f, format="PNG")
        os.replace(tmp, os.path.join(self.web_folder, CURVES_IMAGE))
        page.add_header("curves")
        page.add_figure(CURVES_IMAGE)
        if metrics:
            page.add_header("metrics")
            page.add_table(metrics[0], reversed(metrics[1]))
        for snapshot_epoch, names, labels in snapshots_on_disk(page.image_folder, self.labels):
            page.add_header(f"epoch [{snapshot_epoch}]")
            page.add_images(names, labels, self.opt.display_winsize)
        page.save()

    def close(self):
        self.progress.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
