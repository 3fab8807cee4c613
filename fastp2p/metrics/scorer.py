"""--eval_freq's scoring: the generator scored on the val/test split between epochs, the training run untouched."""

import os

import torch

from fastp2p.checkpoint import unwrap
from fastp2p.data.datasets import IMAGE_MODES
from fastp2p.data.modes import find_dataset
from fastp2p.errors import MetricError
from fastp2p.metrics.pairs import to_uint8
from fastp2p.metrics.scores import Scores


def eval_phase(opt):
    """The split --eval_freq scores: 'val' when the dataroot has it, else 'test'; None when it has neither."""
    for phase in ("val", "test"):
        folders = [phase] if opt.dataset_mode == "aligned" else [phase + "A", phase + "B"]
        if all(os.path.isdir(os.path.join(opt.dataroot, folder)) for folder in folders):
            return phase
    return None


class GeneratorScorer:
    """The generator (G, or CycleGAN's G_A) scored on the val/test split between epochs.

    The images are prepared as fastp2p.test prepares them (resized to --crop_size, no flip) and the generator
    runs as fastp2p.test runs it by default, without --eval: in training mode (dropout on, BatchNorm on the
    batch's statistics), under no_grad. Batches of --batch_size, except with BatchNorm, whose batch statistics
    make an image's output depend on its batch-mates: there one image a pass, as fastp2p.test does.

    Nothing of the training run changes: the plain module is called (no DDP hooks or collectives), the torch RNG
    is forked and seeded from --seed (the dropout draws are the same at each evaluation, also after a resume),
    and the generator's buffers (BatchNorm statistics) are put back afterwards. Every rank runs the generator,
    as --norm syncbatch synchronizes its forward; rank 0 alone keeps the scores (``keep``)."""

    def __init__(self, opt, model, amp_dtype, distances=None, keep=True):
        if opt.dataset_mode not in IMAGE_MODES:
            raise MetricError(f"--eval_freq scores RGB outputs of the image modes ({', '.join(IMAGE_MODES)}); "
                              f"--dataset_mode {opt.dataset_mode} is not one of them")
        self.phase = eval_phase(opt)
        if self.phase is None:
            raise MetricError(f"--eval_freq scores the val or test split, and {opt.dataroot} has neither")
        self.paired = opt.dataset_mode == "aligned"
        if keep and not self.paired and distances is None:
            raise MetricError("--eval_freq on unpaired data scores FID and KID alone, which need torchmetrics and "
                              "the Inception weights: pip install 'fastp2p[metrics]'")
        test_time = {"phase": self.phase, "load_size": opt.crop_size, "no_flip": True, "serial_batches": True}
        self.dataset = find_dataset(opt.dataset_mode)(opt.replace(**test_time))
        self.generator = unwrap(model.generator())
        self.sides = ("A", "B") if opt.direction == "AtoB" else ("B", "A")
        self.batch_size = 1 if opt.norm in ("batch", "syncbatch") else opt.batch_size
        self.device, self.memory_format, self.amp_dtype = model.device, model.runtime.memory_format, amp_dtype
        self.seed = opt.seed
        self.distances = distances
        self.keep = keep

    def batches(self):
        for start in range(0, len(self.dataset), self.batch_size):
            items = [self.dataset[i] for i in range(start, min(start + self.batch_size, len(self.dataset)))]
            yield {key: [item[key] for item in items] for key in items[0]}

    def score(self):
        """name -> value (``keep``), or None."""
        scores = Scores(self.distances)
        if self.distances is not None:
            self.distances.reset_fake()
        add_real = self.distances is not None and not self.distances.has_real()
        seen = {False: set(), True: set()}  # unpaired sets repeat the smaller folder's images: each counts once
        buffers = [buffer.clone() for buffer in self.generator.buffers()]
        source, target = self.sides
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.seed)
            for batch in self.batches():
                inputs = torch.stack(batch[source]).to(self.device, memory_format=self.memory_format)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    fake = to_uint8(self.generator(inputs))  # the feature network runs outside autocast
                if not self.keep:
                    continue
                real = to_uint8(torch.stack(batch[target]).to(self.device))
                if self.paired:
                    scores.add_pairs(fake, real)
                for images, paths, is_real in ((fake, batch[source + "_paths"], False),
                                               (real, batch[target + "_paths"], True)):
                    new = [i for i, path in enumerate(paths) if path not in seen[is_real]]
                    seen[is_real].update(paths)
                    if new and (add_real or not is_real):
                        scores.add_set(images[new], is_real)
            values = scores.result() if self.keep else None
        for buffer, saved in zip(self.generator.buffers(), buffers):
            buffer.copy_(saved)
        return values
