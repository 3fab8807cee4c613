"""Training entry point: ``python -m fastp2p.train`` or ``torchrun -m fastp2p.train`` with the reference's flags.

The loop keeps the reference trainer's semantics (counters in images, when checkpoints are written,
when the learning rate steps, the loss log line). Beyond the reference it writes a full training-state
file beside each checkpoint (optimizers, schedulers, image pools, counters, RNG states), so that
``--continue_train`` resumes exactly, also in the middle of an epoch, and it saves and stops cleanly
on SIGINT/SIGTERM (in a single process; under DDP a signal ends the run).
"""

import itertools
import math
import os
import signal
import sys
import time

import torch

from fastp2p import distributed
from fastp2p.checkpoint import load_prefix, network_filename, training_state_filename
from fastp2p.checkpoint_sets import CheckpointSet, recover_folder
from fastp2p.data.builtin import builtin_dataroot
from fastp2p.data.select import create_fast_loader
from fastp2p.engine import model_limits, prepare_model, resolve_engine, runtime_for
from fastp2p.errors import (CheckpointError, DatasetError, MetricError, NonFiniteError, OptionError,
                            StoppedOnMainRank, UserError, first_line)
from fastp2p.metrics import FeatureDistances, GeneratorScorer
from fastp2p.models import create_model
from fastp2p.options import parse_options, save_options
from fastp2p.resume import job_resume_point, restore_rng, resumed_options, rng_state, seed_everything
from fastp2p.run_lock import FolderLock
from fastp2p.selfcheck import checked_config
from fastp2p.visualizer import Visualizer, require_wandb


class Trainer:
    """One training run: data, model, the epoch loop, checkpoints and logs."""

    def __init__(self, opt):
        self.opt = opt
        self.stop_requested = False
        self.folder = os.path.join(opt.checkpoints_dir, opt.name)
        self.lock = None
        try:
            self.start(opt)
        except BaseException:
            self.release()
            raise

    def start(self, opt):
        require_wandb(opt)
        self.device = distributed.init_device(opt.gpu_ids)
        self.engine = checked_config(opt, self.device, resolve_engine(opt, self.device))  # before anything is written
        # the other ranks read the checkpoints once rank 0 holds the folder and has recovered them
        distributed.decided_on_main(self.take_folder)
        if opt.dataroot is None:
            opt = opt.replace(dataroot=builtin_dataroot())
            distributed.print_main(f"no --dataroot given: using the built-in synthetic dataset at {opt.dataroot}")
        resume = job_resume_point(opt, self.folder)
        self.opt = opt = resumed_options(opt, resume)
        seed_everything(opt.seed + distributed.rank())
        if distributed.is_main_process():
            save_options(opt)
        self.dataset = create_fast_loader(opt, opt.data_loader, self.device)
        if len(self.dataset) == 0:
            raise DatasetError(f"no training images found under {opt.dataroot}")
        distributed.print_main(f"The number of training images = {len(self.dataset)}")
        self.model = create_model(opt, runtime_for(self.engine, self.device))
        self.model.setup(opt)
        self.train_step = prepare_model(self.model, self.engine)
        distributed.print_main(self.engine.describe())
        limits = model_limits(opt)  # the paths a model that steps its own optimizers does not get
        if limits:
            distributed.print_main(limits)
        self.optimizer_names = self.model.optimizer_names()
        self.visualizer = Visualizer(opt, enabled=distributed.is_main_process(),
                                     batches_per_epoch=math.ceil(self.dataset.batches_per_epoch / opt.accum_steps))
        self.scorer = self.build_scorer() if opt.eval_freq else None
        self.epoch = opt.epoch_count
        self.last_saved = "none (nothing saved yet)"
        self.epoch_iter = 0
        self.total_iters = 0
        if resume:
            self.restore(resume.state)
        if distributed.restart_count():
            self.visualizer.write(f"restart {distributed.restart_count()} of the job (torchrun --max-restarts): "
                                  f"{'resumed from ' + repr(resume.prefix) if resume else 'started over'}")

    def take_folder(self):
        """The run lock of the checkpoint folder, and the recovery of a save a killed run left half done (rank 0's,
        for the job)."""
        self.lock = FolderLock(self.folder).acquire()
        recovered = recover_folder(self.folder)
        if recovered:
            print(f"{self.folder}: {recovered}")

    def build_scorer(self):
        """--eval_freq's scorer, built before training so that a split or package it lacks stops the run now. FID
        and KID (rank 0) need torchmetrics and the Inception weights; without them paired data is scored on
        L1/PSNR/SSIM alone, and a line says why."""
        distances = None
        if distributed.is_main_process():
            try:
                distances = FeatureDistances(self.device)
            except MetricError as error:
                print(f"--eval_freq: no FID/KID ({error})")
        return GeneratorScorer(self.opt, self.model, self.engine.amp, distances,
                               keep=distributed.is_main_process())

    def evaluate(self):
        """Score the generator between epochs (see GeneratorScorer: the training run is left as it was)."""
        values = self.scorer.score()
        self.visualizer.log_metrics(self.epoch, self.total_iters, self.scorer.phase, values)
        distributed.barrier()

    def learning_rates(self):
        """Each optimizer's learning rate, by the name of what it trains (G, D)."""
        return {name: float(optimizer.param_groups[0]["lr"])
                for name, optimizer in zip(self.optimizer_names, self.model.optimizers)}

    # -- checkpoints ---------------------------------------------------------------------------------

    def release(self):
        """Close the loader's workers and give up the folder's run lock."""
        if getattr(self, "dataset", None) is not None:
            self.dataset.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def restore(self, state):
        """Continue where the saved run stood (its options, from resumed_options, already begin where it began)."""
        try:
            self.model.load_training_state(state["model"])
            restore_rng(state["rng"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:  # a state from elsewhere
            raise CheckpointError(f"cannot resume from the training state of '{load_prefix(self.opt)}' in "
                                  f"{self.folder}: its optimizer, pool or RNG states do not fit this run "
                                  f"({type(error).__name__}: {first_line(error)}); resume without it (remove it) or "
                                  f"pick another --name") from None
        self.epoch, self.epoch_iter, self.total_iters = state["epoch"], state["epoch_iter"], state["total_iters"]
        if self.epoch > self.last_epoch():
            raise OptionError(f"nothing to train: the training state is at epoch {self.epoch}, past --n_epochs + "
                              f"--n_epochs_decay = {self.last_epoch()}; raise either to extend the run")
        self.last_saved = f"'{load_prefix(self.opt)}' (iteration {self.total_iters}), the one resumed from"

    def save(self, prefix, epoch_finished, snapshot=None):
        """One checkpoint set: the network files as the reference writes them, the training state that resumes
        from them, and with ``snapshot`` (an epoch number) that epoch's network files, linked to the same bytes
        (its training state too with --save_epoch_state). Weights that are not finite are never written."""
        diverged = self.model.nonfinite_networks()
        if diverged:
            raise NonFiniteError(f"not saving '{prefix}' at epoch {self.epoch}, iteration {self.total_iters}: the "
                                 f"weights of {', '.join(diverged)} are not finite (the run has diverged; try a lower "
                                 f"--lr); the last good checkpoint is {self.last_saved}")
        rng = [rng_state()]
        if distributed.is_distributed():
            rng = [None] * distributed.world_size()
            torch.distributed.all_gather_object(rng, rng_state())
        if not distributed.is_main_process():
            return
        state = {
            "seed": self.opt.seed,
            "epoch": self.epoch + 1 if epoch_finished else self.epoch,
            "epoch_iter": 0 if epoch_finished else self.epoch_iter,
            "total_iters": self.total_iters,
            "model": self.model.training_state(),
            "rng": rng,
        }
        names = [name for name, _ in self.model.networks()]
        with CheckpointSet(self.folder, f"checkpoint '{prefix}'") as files:
            state["networks"] = {name: files.save(filename, net_state)
                                 for name, (filename, net_state) in zip(names, self.model.network_files(prefix))}
            files.save(training_state_filename(prefix), state)
            if snapshot is not None:
                for name in names:
                    files.link(network_filename(snapshot, name), network_filename(prefix, name))
                if self.opt.save_epoch_state:
                    files.link(training_state_filename(snapshot), training_state_filename(prefix))
        if snapshot is not None and not self.opt.save_epoch_state:
            stale_state = os.path.join(self.folder, training_state_filename(snapshot))
            if os.path.isfile(stale_state):
                os.remove(stale_state)  # an earlier save's, for networks that are no longer beside it
        self.last_saved = f"'{prefix}' (iteration {self.total_iters})"

    # -- the loop ------------------------------------------------------------------------------------

    def request_stop(self, signum=None, frame=None):
        """First signal: finish the iteration, save, exit. A second one interrupts at once."""
        if self.stop_requested:
            raise KeyboardInterrupt
        print("\nstop requested: saving 'latest' after this iteration (send again to abort without saving)")
        self.stop_requested = True

    def last_epoch(self):
        return self.opt.n_epochs + self.opt.n_epochs_decay

    def step_input(self, batches):
        """The next optimizer step's input: one loader batch, or with --accum_steps N a list of up to N (fewer at the
        epoch's end); None once the epoch is over."""
        group = list(itertools.islice(batches, self.opt.accum_steps))
        if not group:
            return None
        return group if self.opt.accum_steps > 1 else group[0]

    def train_epoch(self):
        """One epoch from ``epoch_iter`` on. The counters are in images, advanced per optimizer step by batch_size x
        accum_steps (the reference's rule for one batch of that size), and every --*_freq is checked after a step."""
        opt, model, visualizer = self.opt, self.model, self.visualizer
        progress = visualizer.progress
        visualizer.reset()
        step_images = opt.batch_size * opt.accum_steps
        skip_batches = self.epoch_iter // opt.batch_size
        progress.start_epoch(self.epoch, skip_batches // opt.accum_steps)
        self.dataset.set_epoch(self.epoch, skip_batches=skip_batches)
        batches = iter(self.dataset)
        iter_data_time = time.perf_counter()
        while True:
            data = self.step_input(batches)
            if data is None:
                break
            iter_start = time.perf_counter()
            t_data = iter_start - iter_data_time
            self.total_iters += step_images
            self.epoch_iter += step_images
            self.train_step(data)
            progress.update(t_data)

            if self.total_iters % opt.display_freq == 0:
                model.compute_visuals()
                visualizer.display_current_results(model.get_current_visuals(), self.epoch, self.total_iters,
                                                   self.total_iters % opt.update_html_freq == 0)
            if self.total_iters % opt.print_freq == 0:
                losses = model.get_current_losses()  # the host sync of the loop, on print steps only
                t_comp = (time.perf_counter() - iter_start) / step_images
                visualizer.print_current_losses(self.epoch, self.epoch_iter, losses, t_comp, t_data)
                progress.report()
                visualizer.plot_current_losses(self.total_iters, losses, self.learning_rates(), progress.figures())
                bad = [name for name, value in losses.items() if not math.isfinite(value)]
                if bad:
                    raise NonFiniteError(f"losses {bad} are not finite at epoch {self.epoch}, iteration "
                                         f"{self.total_iters}; try a lower --lr. The last good checkpoint is "
                                         f"{self.last_saved}.")
            if self.total_iters % opt.save_latest_freq == 0:
                prefix = f"iter_{self.total_iters}" if opt.save_by_iter else "latest"
                progress.write(f"saving the latest model (epoch {self.epoch}, total_iters {self.total_iters})")
                self.save(prefix, epoch_finished=False)
            if self.stop_requested:
                return False
            iter_data_time = time.perf_counter()

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        figures = progress.end_epoch()
        learning_rates = self.learning_rates()  # the epoch's, before the schedule steps
        model.update_learning_rate()
        visualizer.log_epoch_end(self.epoch, self.last_epoch(), figures, learning_rates)
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
                    distributed.print_main(f"saving the model at the end of epoch {self.epoch}, "
                                           f"iters {self.total_iters}")
                    self.save("latest", epoch_finished=True, snapshot=self.epoch)
                elif self.epoch == self.last_epoch():
                    # The reference keeps nothing of a run whose last epoch is not a multiple of
                    # --save_epoch_freq; fastp2p always leaves 'latest' behind.
                    self.save("latest", epoch_finished=True)
                if self.scorer is not None and self.epoch % self.opt.eval_freq == 0:
                    self.evaluate()
                self.epoch += 1
                self.epoch_iter = 0
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.release()
            self.visualizer.close()


def main(argv=None):
    opt = parse_options(argv, is_train=True)
    try:
        code = Trainer(opt).run()
        # ranks leave together: rank 0 may still be writing checkpoints, and gloo aborts a process that
        # tears its group down while a peer is still connected
        distributed.barrier()
        return code
    except StoppedOnMainRank:  # rank 0 has said why
        return 2
    except UserError as e:
        print(f"fastp2p.train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C or SIGTERM: a save under way was dropped or completed whole
        print(f"fastp2p.train: interrupted; every checkpoint set in {os.path.join(opt.checkpoints_dir, opt.name)} "
              f"is complete (a save under way is finished or dropped at the next start)", file=sys.stderr)
        return 130
    finally:
        distributed.cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
