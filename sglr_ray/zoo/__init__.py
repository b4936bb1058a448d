"""The built-in models, each declared as a user's model is: `NAME(input_shape, num_classes)`
returning an nn.Sequential whose top-level children are the places it can be cut, with the
paper's cut as the callable's `default_cut`. `--model alexnet` is `sglr_ray.zoo.alexnet:alexnet`."""

from torch import nn


class Block(nn.Sequential):
    """Layers that are one place to cut a model, but run as their own layers once it is cut: a
    part holds the block's layers, not the block (so the built-in models' parts have the layers,
    and state-dict names, they always had). A user's model may use it too."""


BUILTIN_MODELS = {
    "alexnet": "sglr_ray.zoo.alexnet:alexnet",
    "alexnet-paper": "sglr_ray.zoo.alexnet_paper:alexnet_paper",
    "resnet16": "sglr_ray.zoo.resnet16:resnet16",
}
