"""History of generated images for CycleGAN's discriminators (the reference's ImagePool), resumable.

The discriminators see, half of the time, an older fake instead of the newest one. The draws use
python's ``random`` exactly as the reference does, so a seeded run reproduces the reference's choices;
``state_dict``/``load_state_dict`` carry the stored images so a resumed run continues the same history.
"""

import random

import torch


class ImagePool:
    def __init__(self, pool_size):
        self.pool_size = pool_size
        self.num_imgs = 0
        self.images = []

    def query(self, images):
        """Per image of the batch: fill the pool first; once full, swap with a random stored one (p=0.5)."""
        if self.pool_size == 0:
            return images
        returned = []
        for image in images:
            image = image.detach().unsqueeze(0)
            # stored as a copy: the batch it comes from may be a buffer that the next step overwrites
            # (a CUDA-graph output); the reference keeps a view, which holds the same values
            if self.num_imgs < self.pool_size:
                self.num_imgs += 1
                self.images.append(image.clone())
                returned.append(image)
            elif random.uniform(0, 1) > 0.5:
                slot = random.randint(0, self.pool_size - 1)
                returned.append(self.images[slot])
                self.images[slot] = image.clone()
            else:
                returned.append(image)
        return torch.cat(returned, 0)

    def state_dict(self):
        return {"pool_size": self.pool_size, "num_imgs": self.num_imgs, "images": list(self.images)}

    def load_state_dict(self, state, device=None):
        if state["pool_size"] != self.pool_size:
            raise ValueError(f"image pool of size {state['pool_size']} cannot resume a run with --pool_size "
                             f"{self.pool_size}")
        self.num_imgs = state["num_imgs"]
        self.images = [image.to(device) if device is not None else image for image in state["images"]]
