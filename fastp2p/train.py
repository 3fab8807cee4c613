"""Training entry point: ``python -m fastp2p.train`` or ``torchrun -m fastp2p.train`` with the reference's flags.

The loop keeps the reference trainer's semantics (counters in images, when checkpoints are written,
when the learning rate steps, the loss log line). Beyond the reference it writes a full training-state
file beside each checkpoint (optimizers, schedulers, image pools, counters, RNG states), so that
``--continue_train`` resumes exactly, also in the middle of an epoch, and it saves and stops cleanly
on SIGINT/SIGTERM (in a single process; under DDP a signal ends the run).
"""

import math
import os
import random
import secrets
import signal
import sys
import time

import torch

from fastp2p import distributed
from fastp2p.checkpoint import CheckpointError, atomic_save, load_prefix, read_checkpoint
from fastp2p.data import DatasetError
from fastp2p.data.builtin import builtin_dataroot
from fastp2p.data.select import create_fast_loader
from fastp2p.engine import prepare_model, resolve_engine
from fastp2p.models import create_model
from fastp2p.options import OptionError, parse_options, save_options, use_cuda
from fastp2p.visualizer import Visualizer


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; no checkpoint is written from that state."""


def training_state_path(opt, prefix):
    return os.path.join(opt.checkpoints_dir, opt.name, f"{prefix}_train_state.pth")


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state():
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def shared_seed(seed):
    """The run's seed: the given one, or one drawn on rank 0 and sent to every rank."""
    if seed is None:
        seed = secrets.randbelow(2**31)
    if distributed.is_distributed():
        box = [seed]
        torch.distributed.broadcast_object_list(box, src=0)
        seed = box[0]
    return seed


class Trainer:
    """One training run: data, model, the epoch loop, checkpoints and logs."""

    def __init__(self, opt):
        self.opt = opt
        self.stop_requested = False
        opt.device = distributed.init_distributed(use_cuda(opt))
        self.engine = resolve_engine(opt, opt.device)
        if opt.device.type == "cuda":
            torch.backends.cudnn.benchmark = opt.preprocess != "scale_width"  # as the reference
        if opt.dataroot is None:
            opt.dataroot = builtin_dataroot()
            distributed.print_main(f"no --dataroot given: using the built-in synthetic dataset at {opt.dataroot}")
        self.resume_state = self.find_resume_state()
        opt.seed = self.resume_state["seed"] if self.resume_state else shared_seed(opt.seed)
        seed_everything(opt.seed + distributed.rank())
        if distributed.is_main_process():
            save_options(opt)
        self.dataset = create_fast_loader(opt, opt.data_loader)
        if len(self.dataset) == 0:
            raise DatasetError(f"no training images found under {opt.dataroot}")
        distributed.print_main(f"The number of training images = {len(self.dataset)}")
        self.model = create_model(opt)
        self.model.setup(opt)
        prepare_model(self.model, self.engine)
        distributed.print_main(self.engine.describe())
        self.visualizer = Visualizer(opt, enabled=distributed.is_main_process())
        self.epoch = opt.epoch_count
        self.epoch_iter = 0
        self.total_iters = 0
        if self.resume_state:
            self.restore(self.resume_state)

    # -- checkpoints ---------------------------------------------------------------------------------

    def find_resume_state(self):
        """With --continue_train, the training state saved beside the checkpoint to resume from, if any."""
        if not self.opt.continue_train:
            return None
        path = training_state_path(self.opt, load_prefix(self.opt))
        if not os.path.isfile(path):
            distributed.print_main(f"no training state at {path}: loading network weights only and starting at "
                                   f"--epoch_count {self.opt.epoch_count}, as the reference trainer does")
            return None
        state = read_checkpoint(path)
        distributed.print_main(f"resuming exactly from {path}: epoch {state['epoch']}, "
                               f"{state['epoch_iter']} images into it")
        return state

    def restore(self, state):
        self.model.load_training_state(state["model"])
        saved = state["rng"]
        if len(saved) != distributed.world_size():
            distributed.print_main(f"the training state holds RNG states of {len(saved)} processes, this run has "
                                   f"{distributed.world_size()}: random draws will not continue exactly")
        set_rng_state(saved[distributed.rank() % len(saved)])
        self.epoch, self.epoch_iter, self.total_iters = state["epoch"], state["epoch_iter"], state["total_iters"]

    def save(self, prefix, epoch_finished):
        """Network files as the reference writes them, then the training state that resumes from them."""
        losses = self.model.get_current_losses()
        bad = {name: value for name, value in losses.items() if not math.isfinite(value)}
        if bad:
            raise NonFiniteLossError(f"not saving '{prefix}': non-finite losses {bad} at epoch {self.epoch}, "
                                     f"iteration {self.total_iters}; earlier checkpoints are kept")
        rng = [rng_state()]
        if distributed.is_distributed():
            rng = [None] * distributed.world_size()
            torch.distributed.all_gather_object(rng, rng_state())
        if not distributed.is_main_process():
            return
        self.model.save_networks(prefix)
        state = {
            "seed": self.opt.seed,
            "epoch": self.epoch + 1 if epoch_finished else self.epoch,
            "epoch_iter": 0 if epoch_finished else self.epoch_iter,
            "total_iters": self.total_iters,
            "model": self.model.training_state(),
            "rng": rng,
        }
        atomic_save(state, training_state_path(self.opt, prefix))

    # -- the loop ------------------------------------------------------------------------------------

    def request_stop(self, signum=None, frame=None):
        """First signal: finish the iteration, save, exit. A second one interrupts at once."""
        if self.stop_requested:
            raise KeyboardInterrupt
        print("\nstop requested: saving 'latest' after this iteration (send again to abort without saving)")
        self.stop_requested = True

    def last_epoch(self):
        return self.opt.n_epochs + self.opt.n_epochs_decay

    def train_epoch(self):
        opt, model, visualizer = self.opt, self.model, self.visualizer
        epoch_start = time.perf_counter()
        images_this_run = 0
        data_wait = 0.0
        self.dataset.set_epoch(self.epoch, skip_batches=self.epoch_iter // opt.batch_size)
        batches = iter(self.dataset)
        iter_data_time = time.perf_counter()
        while True:
            try:
                data = next(batches)
            except StopIteration:
                break
            iter_start = time.perf_counter()
            t_data = iter_start - iter_data_time
            data_wait += t_data
            self.total_iters += opt.batch_size
            self.epoch_iter += opt.batch_size
            images_this_run += opt.batch_size
            model.set_input(data)
            model.optimize_parameters()

            if self.total_iters % opt.display_freq == 0:
                model.compute_visuals()
                visualizer.display_current_results(model.get_current_visuals(), self.epoch, self.total_iters,
                                                   self.total_iters % opt.update_html_freq == 0)
            elapsed = time.perf_counter() - epoch_start
            if self.total_iters % opt.print_freq == 0:
                losses = model.get_current_losses()  # the host sync of the loop, on print steps only
                t_comp = (time.perf_counter() - iter_start) / opt.batch_size
                visualizer.print_current_losses(self.epoch, self.epoch_iter, losses, t_comp, t_data)
                visualizer.plot_current_losses(self.total_iters, losses, images_this_run / elapsed)
                bad = [name for name, value in losses.items() if not math.isfinite(value)]
                if bad:
                    raise NonFiniteLossError(f"losses {bad} are not finite at epoch {self.epoch}, iteration "
                                             f"{self.total_iters}; try a lower --lr. Checkpoints already "
                                             f"written are kept.")
            visualizer.progress.update(self.epoch, self.epoch_iter, len(self.dataset),
                                       images_this_run / max(elapsed, 1e-9), data_wait / max(elapsed, 1e-9))
            if self.total_iters % opt.save_latest_freq == 0:
                prefix = f"iter_{self.total_iters}" if opt.save_by_iter else "latest"
                print(f"saving the latest model (epoch {self.epoch}, total_iters {self.total_iters})")
                self.save(prefix, epoch_finished=False)
            if self.stop_requested:
                return False
            iter_data_time = time.perf_counter()

        if opt.device.type == "cuda":
            torch.cuda.synchronize(opt.device)
        elapsed = time.perf_counter() - epoch_start
        visualizer.progress.close()
        model.update_learning_rate()
        visualizer.log_line(f"End of epoch {self.epoch} / {self.last_epoch()} \t Time Taken: {int(elapsed)} sec "
                            f"\t {images_this_run / max(elapsed, 1e-9):.1f} img/s, "
                            f"data wait {100 * data_wait / max(elapsed, 1e-9):.1f}%")
        return True

    def run(self):
        # Under DDP each rank would see the signal after a different iteration and stop out of step
        # with the others' collectives; there a signal ends the run and the last checkpoint resumes it.
        signals = () if distributed.is_distributed() else (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.request_stop) for sig in signals}
        try:
            while self.epoch <= self.last_epoch():
                if not self.train_epoch():
                    self.save("latest", epoch_finished=False)
                    print(f"stopped; resume with --continue_train (epoch {self.epoch}, "
                          f"{self.epoch_iter} images into it)")
                    return 130
                if self.epoch % self.opt.save_epoch_freq == 0:
                    print(f"saving the model at the end of epoch {self.epoch}, iters {self.total_iters}")
                    self.save("latest", epoch_finished=True)
                    self.save(self.epoch, epoch_finished=True)
                elif self.epoch == self.last_epoch():
                    # The reference keeps nothing of a run whose last epoch is not a multiple of
                    # --save_epoch_freq; fastp2p always leaves 'latest' behind.
                    self.save("latest", epoch_finished=True)
                self.epoch += 1
                self.epoch_iter = 0
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.dataset.close()
            self.visualizer.close()


def main(argv=None):
    opt = parse_options(argv, is_train=True)
    try:
        code = Trainer(opt).run()
        # ranks leave together: rank 0 may still be writing checkpoints, and gloo aborts a process that
        # tears its group down while a peer is still connected
        distributed.barrier()
        return code
    except (DatasetError, CheckpointError, OptionError, NonFiniteLossError) as e:
        print(f"fastp2p.train: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
