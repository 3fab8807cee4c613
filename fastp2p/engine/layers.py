"""What the layer converters share: replacing a layer by one of another class that shares its Parameter objects (the
same state_dict keys and values; the optimizers, built later, see the same parameters), and telling activations."""

from torch import nn

ACTIVATIONS = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu"}


def activation_of(module):
    """(name, negative_slope) of a ReLU/LeakyReLU module, else None."""
    name = ACTIVATIONS.get(type(module))
    if name is None:
        return None
    return name, getattr(module, "negative_slope", 0.0)


def leading_activation(module):
    """The LeakyReLU/ReLU that opens a U-Net inner block (``module.model[0]``), with its container."""
    inner = getattr(module, "model", None)
    if isinstance(inner, nn.Sequential) and len(inner) and activation_of(inner[0]) is not None:
        return inner
    return None



def rebuilt_as(conv, cls):
    """``conv`` as a new ``cls`` module (a subclass of its conv class) holding the same Parameters. Built on the meta
    device, so no weights are drawn and the seeded random stream is untouched."""
    options = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                   bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")
    if isinstance(conv, nn.ConvTranspose2d):
        options["output_padding"] = conv.output_padding
    rebuilt = cls(conv.in_channels, conv.out_channels, conv.kernel_size, **options)
    rebuilt.weight, rebuilt.bias = conv.weight, conv.bias
    rebuilt.train(conv.training)
    return rebuilt
