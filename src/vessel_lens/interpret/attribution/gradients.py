"""The gradient methods of :mod:`.methods`: saliency, input x gradient, integrated gradients,
SmoothGrad, GradientSHAP and guided backpropagation, each through Captum."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution._common import constant, seeded
from vessel_lens.interpret.attribution._guided import guided_relus
from vessel_lens.interpret.attribution.targets import TargetValue


def saliency(forward: TargetValue, x: torch.Tensor, o: dict[str, Any]) -> torch.Tensor:
    """The gradient d value / d input, signed unless ``abs``."""
    import captum.attr as ca

    return ca.Saliency(forward).attribute(x, abs=bool(o["abs"]))


def input_x_gradient(forward: TargetValue, x: torch.Tensor, o: dict[str, Any]) -> torch.Tensor:
    """Input times gradient."""
    import captum.attr as ca

    return ca.InputXGradient(forward).attribute(x)


def integrated_gradients(forward: TargetValue, x: torch.Tensor, o: dict[str, Any]) -> torch.Tensor:
    """Input minus baseline, times the gradient averaged along the straight path."""
    import captum.attr as ca

    return ca.IntegratedGradients(forward).attribute(
        x,
        baselines=constant(o["baseline"], x, "integrated_gradients baseline"),
        n_steps=int(o["n_steps"]),
        method=o["integration"],
        internal_batch_size=o["internal_batch_size"],
    )


def smoothgrad(forward: TargetValue, x: torch.Tensor, o: dict[str, Any]) -> torch.Tensor:
    """The mean signed gradient over noisy copies of the input."""
    import captum.attr as ca

    tunnel = ca.NoiseTunnel(ca.Saliency(forward))
    with seeded(o["seed"], x.device):
        return tunnel.attribute(
            x,
            nt_type=o["nt_type"],
            nt_samples=int(o["nt_samples"]),
            nt_samples_batch_size=o["batch_size"],
            stdevs=float(o["stdev"]),
            abs=False,
        )


def gradient_shap(forward: TargetValue, x: torch.Tensor, o: dict[str, Any]) -> torch.Tensor:
    """Expected gradients x (input - baseline) over drawn baselines and path points."""
    import captum.attr as ca

    baselines = o["baselines"]
    if baselines is None:
        baselines = torch.cat([torch.zeros_like(x), torch.full_like(x, float(x.detach().mean()))])
    baselines = torch.as_tensor(baselines, dtype=x.dtype).to(x.device)
    if baselines.dim() == 3:
        baselines = baselines[None]
    if baselines.shape[1:] != x.shape[1:]:
        raise ConfigError(
            f"gradient_shap baselines must be (N, C, H, W) with (C, H, W) = "
            f"{tuple(x.shape[1:])}, not {tuple(baselines.shape)}"
        )
    with seeded(o["seed"], x.device):
        return ca.GradientShap(forward).attribute(
            x, baselines=baselines, n_samples=int(o["n_samples"]), stdevs=float(o["stdev"])
        )


def guided_backprop(forward: TargetValue, x: torch.Tensor, o: dict[str, Any]) -> torch.Tensor:
    """The gradient with every ReLU passing back only positive gradients."""
    import captum.attr as ca

    with warnings.catch_warnings(), guided_relus():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return ca.GuidedBackprop(forward).attribute(x)
