"""The built-in models, each declared as a user's model is: `NAME(input_shape, num_classes)`
returning an nn.Sequential whose top-level children are the places it can be cut, with the
paper's cut as the callable's `default_cut`. `--model alexnet` is `sglr_ray.zoo.alexnet:alexnet`."""

BUILTIN_MODELS = {
    "alexnet": "sglr_ray.zoo.alexnet:alexnet",
    "resnet16": "sglr_ray.zoo.resnet16:resnet16",
}
