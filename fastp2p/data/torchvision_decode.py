"""GPU-decode loader for machines without DALI: torchvision's nvJPEG decode, then torch ops on the device.

Like the DALI loader it decodes every batch from the encoded files and follows the epoch plan
(``plan.plan_epoch``): the same files, order and crop/flip draws as the torch path. After the decode,
each side is split from its A|B file, made grayscale where asked (PIL's 'L' weights), resized, and then
cropped, flipped and normalised by one gather (``plan.crop_flip_normalize``). Batches are NCHW float
tensors stored channels-last, on the loader's device.

Interpolation: the reference resizes with PIL bicubic (with PIL's antialiasing when shrinking); torch's
``interpolate(mode="bicubic", antialias=True)`` is close but not bitwise equal (286^2 from 256^2 facades halves:
mean |diff| about 0.2 grey levels, max 2-3). The crop and flip are exact.
"""

import torch

from fastp2p.data.image_folder import sixteen_to_eight_bits
from fastp2p.data.plan import crop_flip_normalize
from fastp2p.data.planned_loader import FedLoader


def torchvision_available():
    """torchvision is optional and must match torch's build; an import that fails counts as absent."""
    try:
        import torchvision.io  # noqa: F401
    except Exception:  # a torchvision built for another torch raises more than ImportError
        return False
    return True


def decode_on_gpu(encoded, device):
    """torchvision's batched nvJPEG decode for JPEGs; other formats decode on the CPU and move over."""
    import torchvision.io as tvio

    jpeg = [bool(len(e) > 2 and e[0] == 0xFF and e[1] == 0xD8) for e in encoded]
    out = [None] * len(encoded)
    jpegs = [e for e, j in zip(encoded, jpeg) if j]
    if jpegs:
        decoded = iter(tvio.decode_jpeg(jpegs, mode=tvio.ImageReadMode.RGB, device=device))
        out = [next(decoded) if j else None for j in jpeg]
    return [o if o is not None else eight_bits(tvio.decode_image(e, mode=tvio.ImageReadMode.RGB), e).to(device)
            for o, e in zip(out, encoded)]


def eight_bits(image, encoded):
    """torchvision's decode of a 16-bit PNG (uint16) -> the uint8 values the torch path reads from the file: a
    grayscale PNG scaled as image_folder.to_rgb scales it, one with colour or alpha by its high byte, as PIL reads
    those. Other images pass through."""
    if image.dtype == torch.uint8:
        return image
    wide = image.to(torch.int32)
    grayscale = encoded[25] == 0  # the PNG header's colour type
    return (sixteen_to_eight_bits(wide) if grayscale else wide >> 8).to(torch.uint8)


class TorchvisionDecodeLoader(FedLoader):
    """Decode each batch with torchvision on the GPU, then split/resize/crop/flip there with torch ops.

    ``decode(list of uint8 byte tensors, device) -> list of CHW uint8 RGB tensors`` is torchvision's
    nvJPEG by default; the tests pass a PIL decoder to check the rest on CPU.
    """

    def __init__(self, opt, device, decode=decode_on_gpu):
        super().__init__(opt)
        self.device = torch.device(device)
        self.decode = decode
        self.set_epoch(0)  # the torch loader too starts at epoch 0 until told

    def _side_batch(self, images, geometry, gray):
        """Resize each sample (batched when the sizes agree), then one gather for all crops and flips."""
        resized = []
        for image, ((x0, w, h), (rw, rh), _, _) in zip(images, geometry):
            image = image[:, :, x0:x0 + w]
            if gray:  # PIL's 'L': ITU-R 601-2 luma
                weights = torch.tensor([0.299, 0.587, 0.114], device=image.device)[:, None, None]
                image = (image.float() * weights).sum(0, keepdim=True).round().to(torch.uint8)
            resized.append(image if (rw, rh) == (w, h) else _resize(image, rh, rw))
        store = torch.stack(resized).permute(0, 2, 3, 1)
        crops = torch.tensor([g[2][:2] for g in geometry], device=self.device)
        flips = torch.tensor([g[3] for g in geometry], device=self.device)
        _, _, cw, ch = geometry[0][2]
        index = torch.arange(len(images), device=self.device)
        return crop_flip_normalize(store, index, crops[:, 0], crops[:, 1], flips, ch, cw)

    def __iter__(self):
        for start, stop in self.plan.batches(self.opt.batch_size, self.skip_batches):
            specs = self.batch_specs(start, stop)
            streams = specs[:1] if self.opt.dataset_mode == "aligned" else specs
            decoded = [self.decode([torch.from_numpy(self.encoded(p)) for p in paths], self.device)
                       for paths, _ in streams]
            batch = {}
            for s, (key, side, (paths, geometry)) in enumerate(zip("AB", self.sides, specs)):
                images = decoded[0 if len(streams) == 1 else s]
                batch[key] = self._side_batch(images, geometry, side.gray)
                batch[key + "_paths"] = paths
            yield batch
        self.skip_batches = 0


def _resize(image, h, w):
    """Bicubic with antialiasing, rounded back to uint8: torch's closest match to PIL's BICUBIC."""
    out = torch.nn.functional.interpolate(image[None].float(), size=(h, w), mode="bicubic", antialias=True,
                                          align_corners=False)
    return out[0].round_().clamp_(0, 255).to(torch.uint8)
