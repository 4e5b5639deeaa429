"""Fold eval-mode BatchNorm into the convolution before it, in a copy of the model.

``fold_batch_norm(model, example)`` returns a deep copy in which every BatchNorm that directly
follows a ``Conv2d``/``ConvTranspose2d`` (and is that convolution's only consumer) is merged
into the convolution's weight and bias and replaced by ``nn.Identity``. The caller's model is
not touched. Which modules feed which is read from one recorded forward pass on ``example``,
so the folding is right for models that use their modules in any order or functional style;
a BatchNorm whose input is also used elsewhere (a skip connection) is left alone.

The copy computes the same function up to float rounding (one multiply moved into the
weights); it is meant for computations only, never for saving.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vessel_lens.interpret._graph.tape import Recorder, Tape

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def foldable_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """(convolution name, BatchNorm name) pairs that can be merged, for a (1, C, H, W) input."""
    names = {module: name for name, module in model.named_modules()}
    tape = Tape()
    recorder = Recorder(tape, None)
    conv_node: dict[str, int] = {}
    norm_input: dict[str, int] = {}
    calls: dict[str, int] = {}

    def hook(module, inputs, output):
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(module, _CONVS) and isinstance(output, torch.Tensor):
            ref = recorder.producer.get(id(output))
            if ref is not None:
                conv_node[name] = ref.node
        elif isinstance(module, _NORMS) and inputs and isinstance(inputs[0], torch.Tensor):
            ref = recorder.producer.get(id(inputs[0]))
            if ref is not None:
                norm_input[name] = ref.node

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _CONVS + _NORMS)
    ]
    was_training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), recorder:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in was_training.items():
            module.train(training)
    users = tape.users()
    node_conv = {node: name for name, node in conv_node.items()}
    pairs = []
    for norm, node in norm_input.items():
        conv = node_conv.get(node)
        if conv is None or calls.get(conv) != 1 or calls.get(norm) != 1 or len(users[node]) != 1:
            continue
        module = model.get_submodule(norm)
        if module.track_running_stats and module.running_var is not None:
            pairs.append((conv, norm))
    return pairs


def _merge(conv: nn.Module, norm: nn.Module) -> bool:
    transposed = isinstance(conv, nn.ConvTranspose2d)
    if transposed and conv.groups != 1:
        return False
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -norm.running_mean.double() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.double()
        shape = (1, -1, 1, 1) if transposed else (-1, 1, 1, 1)
        weight = conv.weight.double() * scale.reshape(shape)
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        conv.weight.copy_(weight.to(conv.weight.dtype))
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
        else:
            conv.bias.copy_(bias.to(conv.bias.dtype))
    return True


def fold_batch_norm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with conv → BatchNorm pairs merged.

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> _ = torch.manual_seed(0)
        >>> model = create_model("resnet_seg", width=2).eval()  # or any (B, C, H, W) -> (B, K, H, W) net
        >>> image = torch.rand(1, 32, 32)  # (C, H, W)
        >>> from vessel_lens.interpret import fold_batch_norm
        >>> folded = fold_batch_norm(model, image[None])
        >>> with torch.no_grad():
        ...     bool(torch.allclose(folded(image[None]), model(image[None]), atol=1e-5))
        True
    """
    folded = copy.deepcopy(model).eval()
    for conv_name, norm_name in foldable_pairs(folded, example):
        if _merge(folded.get_submodule(conv_name), folded.get_submodule(norm_name)):
            parent_name, _, attr = norm_name.rpartition(".")
            parent = folded.get_submodule(parent_name) if parent_name else folded
            setattr(parent, attr, nn.Identity())
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    return folded
