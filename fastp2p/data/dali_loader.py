"""GPU-decode loader: an NVIDIA DALI pipeline (torchvision_decode.py stands in where DALI is absent).

It decodes every batch from the encoded files (no limit on the set's size, unlike the GPU cache)
and runs the reference's preprocessing on the device: split A|B, resize (every --preprocess mode:
resize_and_crop, crop, scale_width, scale_width_and_crop, none), crop, flip, normalise to [-1, 1].
Batches are NCHW float tensors stored channels-last, on the GPU (with ``device_id=None``: CPU).

Sampling is the torch path's, not a DALI reader's. The order, the rank's shard and every crop/flip
draw come from ``plan.plan_epoch`` (seeded per (seed, epoch) and per (seed, epoch, index), with
DistributedSampler's split), and the files of each batch are fed through ``fn.external_source``.
``fn.readers.file`` with ``shard_id``/``num_shards`` cannot reproduce the reference epoch: its shards
differ in size by one (DistributedSampler pads them equal, which DDP needs for equal step counts),
its batch size is fixed (no partial last batch without losing samples of the next epoch), it cannot
draw B with replacement as the reference does, and it cannot start at (epoch, batch k) on resume.
Fed from the plan, the DALI pipeline sees exactly the files and draws of the torch path, so the two
differ only in interpolation, which is what the tests measure.

Aligned pairs: one decode per file, the halves sliced from it, and ONE crop anchor and flip node
feeding both halves' crop and mirror. Unaligned: two decodes, independent draws (from the plan).

Interpolation: the reference resizes with PIL bicubic (with PIL's antialiasing when shrinking).
DALI's cubic resize with ``antialias=True`` is close but not bitwise equal (286^2 from 256^2 facades
halves: mean |diff| about 0.2 grey levels, max 2-3). The crop and flip are exact.

Errors: an unreadable file is reported by its header check (PIL) before it reaches DALI, as a
DatasetError naming it; a file whose header reads but whose data is corrupt fails inside the DALI
decoder, reported as a DatasetError naming the batch's files. DALI decodes JPEG, PNG, BMP, TIFF and
PPM to the pixels of the torch path's ``image_folder.to_rgb`` (16-bit grayscale scaled to 8 bits, not
clipped; grayscale and palette converted to RGB), except for the kinds of file it fails on or decodes
wrongly without an error (``_SAME_AS_PIL``): those are refused, naming the file, before the first batch.
"""

import importlib.util

import numpy as np
import torch

from fastp2p.data.image_folder import mixed_sizes_error
from fastp2p.data.planned_loader import FedLoader, ImageSizes
from fastp2p.errors import DatasetError, first_line


def dali_available():
    """Whether the optional DALI extra is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


# (box, resized, crop, flip) of side_geometry -> the DALI argument; 2-D ones are (y, x) / (h, w), as HWC.
_FIELD = {
    "box_anchor": lambda g: np.array([0, g[0][0]], dtype=np.float32),
    "box_shape": lambda g: np.array([g[0][2], g[0][1]], dtype=np.float32),
    "size": lambda g: np.array([g[1][1], g[1][0]], dtype=np.float32),
    "crop_anchor": lambda g: np.array([g[2][1], g[2][0]], dtype=np.float32),
    "crop_shape": lambda g: np.array([g[2][3], g[2][2]], dtype=np.float32),
    "flip": lambda g: np.array(g[3], dtype=np.int32),
}


# PIL format -> the PIL modes DALI decodes to to_rgb's pixels (None: all), within one grey level (16-bit RGB and
# TIFF palettes round differently), as measured with DALI 2.4's CPU decoder (tests/test_dali_loader.py pins the
# 16-bit ones). Left out: TIFFs of 1 bit or 32-bit integers (DALI fails), TIFFs of floats or of gray or palette
# with alpha (DALI's pixels differ, without an error), PPMs of floats.
_SAME_AS_PIL = {"JPEG": None, "MPO": None, "PNG": None, "BMP": None,
                "TIFF": {"L", "P", "RGB", "RGBA", "CMYK", "I;16", "I;16B"}, "PPM": {"1", "L", "RGB", "I"}}


def _ppm_rescaled(image):
    """Whether PIL scales a PPM's samples to 8 or 16 bits (maxval not 255 or 65535), which DALI does not do: PIL's
    decoder arguments are then (rawmode, maxval), a bare rawmode when it reads the samples as they are."""
    args = image.tile[0].args
    return isinstance(args, tuple) and args[1] not in (255, 65535)


class _CheckedSizes(ImageSizes):
    """Header sizes that refuse a file DALI would not decode to the torch path's pixels, naming it and the fix."""

    def header(self, path, image):
        modes = _SAME_AS_PIL.get(image.format, ())
        if modes is not None and image.mode not in modes:
            kind = f"{image.format} mode {image.mode}"
        elif image.format == "PPM" and _ppm_rescaled(image):
            kind = f"PPM of maxval {image.tile[0].args[1]}"
        else:
            return image.size
        raise DatasetError(f"DALI cannot decode {path} ({kind}) as PIL does; convert it to PNG, "
                           "or use --data_loader torch")


class DALILoader(FedLoader):
    """DALI pipeline fed from the epoch plan: decode (``mixed`` on a GPU, ``cpu`` with device_id=None),
    split, resize, crop, flip and normalise, HWC float in [-1, 1]."""

    Sizes = _CheckedSizes

    def __init__(self, opt, device_id=None, num_threads=None, prefetch=2):
        super().__init__(opt)
        for path in dict.fromkeys(p for side in self.sides for p in side.paths):
            self.sizes.full(path)  # every header now, not when a B file is first drawn: refusals come before training
        self.device = torch.device("cpu") if device_id is None else torch.device("cuda", device_id)
        self.aligned = opt.dataset_mode == "aligned"
        self._feed = iter(())
        self._paths = None
        self.pipe = self._build(device_id, num_threads or max(1, int(opt.num_threads)), prefetch)
        self.set_epoch(0)  # the torch loader too starts at epoch 0 until told

    def close(self):
        """Shut DALI's threads down now. Left to the garbage collector (the pipeline's feed callback keeps the
        loader in a reference cycle), the pipeline can be finalized in a forked child process that holds the
        object but not the threads its destructor waits for, and that child hangs."""
        self.pipe = None  # the only reference: DALI's destructor runs here

    def _fields(self):
        """The per-sample arguments the graph uses, as (side, name); an aligned pair's crop anchor and flip
        are side 0's, used by both halves: the shared draw."""
        opt, fields = self.opt, []
        for s in range(len(self.sides)):
            own = s == 0 or not self.aligned
            fields += [(s, "box_anchor"), (s, "box_shape")] if self.aligned else []
            fields += [(s, "size")] if opt.preprocess != "crop" else []
            fields += [(s, "crop_anchor")] if "crop" in opt.preprocess and own else []
            fields += [(s, "crop_shape")] if "crop" in opt.preprocess else []
            fields += [(s, "flip")] if own else []
        return fields

    def _build(self, device_id, num_threads, prefetch):
        from nvidia.dali import fn, pipeline_def, types

        opt = self.opt
        decode_on = "cpu" if device_id is None else "mixed"
        n_streams = 1 if self.aligned else len(self.sides)
        self.fields = self._fields()
        slice_args = dict(axes=[0, 1], normalized_anchor=False, normalized_shape=False)

        @pipeline_def(batch_size=opt.batch_size, num_threads=num_threads, device_id=device_id,
                      prefetch_queue_depth=prefetch, exec_dynamic=True)
        def pipeline():
            feeds = fn.external_source(source=self._next_feed, num_outputs=n_streams + len(self.fields), batch=True)
            arg = dict(zip(self.fields, feeds[n_streams:]))
            decoded = [fn.decoders.image(e, device=decode_on, output_type=types.RGB) for e in feeds[:n_streams]]
            outputs = []
            for s, side in enumerate(self.sides):
                shared = 0 if self.aligned else s
                image = decoded[shared]
                if self.aligned:
                    image = fn.slice(image, arg[s, "box_anchor"], arg[s, "box_shape"], **slice_args)
                if side.gray:
                    image = fn.color_space_conversion(image, image_type=types.RGB, output_type=types.GRAY)
                if opt.preprocess != "crop":
                    image = fn.resize(image, size=arg[s, "size"], interp_type=types.INTERP_CUBIC, antialias=True)
                if "crop" in opt.preprocess:
                    image = fn.slice(image, arg[shared, "crop_anchor"], arg[s, "crop_shape"], **slice_args)
                outputs.append(fn.crop_mirror_normalize(image, mirror=arg[shared, "flip"], mean=127.5, std=127.5,
                                                        output_layout="HWC", dtype=types.FLOAT))
            return tuple(outputs)

        pipe = pipeline()
        pipe.build()
        return pipe

    def _next_feed(self):
        """external_source's callback: the next batch's bytes and arguments (StopIteration ends the epoch)."""
        start, stop = next(self._feed)
        specs = self.batch_specs(start, stop)
        self._paths.append([paths for paths, _ in specs])
        feeds = [[self.encoded(p) for p in paths] for paths, _ in (specs[:1] if self.aligned else specs)]
        for s, name in self.fields:
            feeds.append([_FIELD[name](g) for g in specs[s][1]])
        return tuple(feeds)

    def _outputs(self):
        try:
            return self.pipe.run()
        except StopIteration:
            raise
        except RuntimeError as error:
            paths = sorted({p for side in self._paths[0] for p in side})
            raise DatasetError(f"DALI failed on a batch of {', '.join(paths)}: {first_line(error)}; "
                               f"--data_loader torch reads with PIL") from error

    def _to_torch(self, tensor_list):
        from nvidia.dali.plugin.pytorch import feed_ndarray

        try:
            dense = tensor_list.as_tensor()
        except RuntimeError as error:
            raise mixed_sizes_error(first_line(error)) from error
        out = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(dense, out, cuda_stream=stream)
        return out.permute(0, 3, 1, 2)

    def __iter__(self):
        self._feed = iter(self.plan.batches(self.opt.batch_size, self.skip_batches))
        self._paths = []
        self.skip_batches = 0
        finished = False
        try:
            while True:
                try:
                    outputs = self._outputs()
                except StopIteration:
                    finished = True
                    return
                paths = self._paths.pop(0)
                batch = {}
                for key, output, side_paths in zip("AB", outputs, paths):
                    batch[key] = self._to_torch(output)
                    batch[key + "_paths"] = side_paths
                yield batch
        finally:
            if self.pipe is None:  # closed while this pass was suspended
                return
            if not finished:  # left mid-epoch: drain what DALI prefetched so the next pass starts clean
                self._feed = iter(())
                try:
                    while True:
                        self.pipe.run()
                except StopIteration:
                    pass
            self.pipe.reset()
