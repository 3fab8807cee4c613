"""The reference trainer's GAN objectives (its GANLoss: vanilla, lsgan, wgangp) and its WGAN-GP gradient penalty.

Models hold their criteria as attributes (``criterionGAN``, ``criterionL1``...), so the fast engine can
swap in fused losses without touching the training step.
"""

import torch
from torch import nn

GAN_MODES = ("vanilla", "lsgan", "wgangp")
PENALTY_TYPES = ("real", "fake", "mixed")


class GANLoss(nn.Module):
    """Loss of a discriminator's raw output (logits) against "real" or "fake".

    vanilla: BCE with logits; lsgan: mean squared error; wgangp: -mean for real, +mean for fake. The
    labels are buffers, so they follow ``.to(device)`` and the target never needs a host-to-device copy.
    """

    def __init__(self, gan_mode, target_real_label=1.0, target_fake_label=0.0):
        super().__init__()
        if gan_mode not in GAN_MODES:
            raise ValueError(f"unknown gan_mode {gan_mode!r}; choose one of: {', '.join(GAN_MODES)}")
        self.gan_mode = gan_mode
        self.register_buffer("real_label", torch.tensor(target_real_label))
        self.register_buffer("fake_label", torch.tensor(target_fake_label))
        if gan_mode == "lsgan":
            self.loss = nn.MSELoss()
        elif gan_mode == "vanilla":
            self.loss = nn.BCEWithLogitsLoss()
        else:
            self.loss = None

    def get_target_tensor(self, prediction, target_is_real):
        label = self.real_label if target_is_real else self.fake_label
        return label.expand_as(prediction)

    def forward(self, prediction, target_is_real):
        if self.gan_mode == "wgangp":
            return -prediction.mean() if target_is_real else prediction.mean()
        return self.loss(prediction, self.get_target_tensor(prediction, target_is_real))


def cal_gradient_penalty(netD, real_data, fake_data, device, type="mixed", constant=1.0, lambda_gp=10.0):
    """WGAN-GP penalty ``lambda_gp * mean((||grad D(x)||_2 - constant)^2)`` at real, fake or mixed points.

    Returns ``(penalty, gradients)``; ``(0.0, None)`` when lambda_gp is 0. The gradient graph is kept
    (create_graph) so the penalty can be backpropagated into D. Not used by the pix2pix/CycleGAN steps,
    exactly as in the reference.
    """
    if lambda_gp <= 0.0:
        return 0.0, None
    if type == "real":
        points = real_data
    elif type == "fake":
        points = fake_data
    elif type == "mixed":
        batch = real_data.shape[0]
        alpha = torch.rand(batch, 1, device=device)
        alpha = alpha.expand(batch, real_data.nelement() // batch).contiguous().view(*real_data.shape)
        points = alpha * real_data + (1 - alpha) * fake_data
    else:
        raise ValueError(f"unknown gradient penalty type {type!r}; choose one of: {', '.join(PENALTY_TYPES)}")
    points.requires_grad_(True)
    scores = netD(points)
    gradients = torch.autograd.grad(outputs=scores, inputs=points, grad_outputs=torch.ones_like(scores),
                                    create_graph=True, retain_graph=True, only_inputs=True)[0]
    gradients = gradients.view(real_data.size(0), -1)
    penalty = (((gradients + 1e-16).norm(2, dim=1) - constant) ** 2).mean() * lambda_gp
    return penalty, gradients
