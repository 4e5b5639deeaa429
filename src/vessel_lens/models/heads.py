"""How a segmentation head's logits (B, K, H, W) become per-class scores.

Two head conventions are in use, and every command treats them alike:

``K >= 2``  one logit per class; probabilities are the softmax over the classes. Class 1 is
            the vessel (class 0 the background in the two-class case).
``K = 1``   one channel holding the vessel logit z (the head of most binary segmentation
            code, trained with a sigmoid / binary cross-entropy). The vessel probability is
            sigmoid(z). Only the vessel class exists: ``target_class`` must be 1 (the default
            everywhere), which names that one channel; any other value is refused, since
            "class 0" of a one-channel model could mean the channel or the background.

The three differentiable outputs of class c (``OUTPUTS``):

``probability``  softmax(z)_c, or sigmoid(z) when K = 1;
``logit``        z_c, or z when K = 1;
``margin``       z_c minus the log-sum-exp of the other logits: the log-odds of c against the
                 rest. When K = 2 this is z_1 - z_0; when K = 1 the logit already is the
                 log-odds of vessel against background, so the margin equals the logit.

A one-channel model is the two-class model with logits (0, z): softmax((0, z))_1 = sigmoid(z)
and its margin is z, so both conventions give the same numbers for the same classifier.
"""

from __future__ import annotations

import torch

from vessel_lens.errors import ConfigError

VESSEL_CLASS = 1
"""The class index of the vessel, for both head conventions."""
OUTPUTS = ("probability", "logit", "margin")


def class_channel(classes: int, target_class: int) -> int:
    """The logit channel that holds ``target_class`` in a K = ``classes`` head."""
    if isinstance(target_class, bool) or not isinstance(target_class, int):
        raise ConfigError(f"target_class {target_class!r}: must be an integer class index")
    if classes == 1:
        if target_class != VESSEL_CLASS:
            raise ConfigError(
                f"target_class {target_class}: the model has one output channel, the vessel "
                f"logit (sigmoid head), so only the vessel class {VESSEL_CLASS} exists; use "
                f"target_class {VESSEL_CLASS}"
            )
        return 0
    if not 0 <= target_class < classes:
        raise ConfigError(
            f"target_class {target_class}: the model has {classes} output classes "
            f"(0..{classes - 1})"
        )
    return target_class


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ConfigError(f"output {output!r}: choose one of {', '.join(OUTPUTS)}")


def _check_logits(logits: torch.Tensor) -> int:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"model output must be (B, K, H, W) logits, not {shape}")
    return int(logits.shape[1])


def class_scores(
    logits: torch.Tensor, target_class: int = VESSEL_CLASS, output: str = "probability"
) -> torch.Tensor:
    """``output`` of ``target_class`` at every pixel: (B, K, H, W) logits -> (B, H, W).

    Differentiable; computed in the logits' dtype.
    """
    _check_output(output)
    classes = _check_logits(logits)
    channel = class_channel(classes, target_class)
    if classes == 1:
        z = logits[:, 0]
        return torch.sigmoid(z) if output == "probability" else z
    if output == "logit":
        return logits[:, channel]
    if output == "probability":
        return logits.softmax(1)[:, channel]
    others = torch.cat([logits[:, :channel], logits[:, channel + 1 :]], 1)
    return logits[:, channel] - others.logsumexp(1)


def class_probability(logits: torch.Tensor, target_class: int = VESSEL_CLASS) -> torch.Tensor:
    """Probability of ``target_class`` (the vessel by default) per pixel: (B, H, W)."""
    return class_scores(logits, target_class, "probability")


def predicted_vessel(logits: torch.Tensor) -> torch.Tensor:
    """Bool (B, H, W): pixels labelled vessel, the argmax of the classes (K >= 2) or a
    positive vessel logit (K = 1); both are a vessel probability above 0.5."""
    classes = _check_logits(logits)
    class_channel(classes, VESSEL_CLASS)
    if classes == 1:
        return logits[:, 0] > 0
    return logits.argmax(1) == VESSEL_CLASS


def score_seeds(z: torch.Tensor, target_class: int, output: str) -> torch.Tensor:
    """d output / d logits per pixel: (N, K) from the logits of N pixels (N, K).

    The seeds a backward pass from the logits starts from; computed in ``z``'s dtype.
    """
    _check_output(output)
    classes = int(z.shape[1])
    channel = class_channel(classes, target_class)
    if classes == 1:
        if output == "probability":
            p = torch.sigmoid(z)
            return p * (1 - p)
        return torch.ones_like(z)
    onehot = torch.zeros_like(z)
    onehot[:, channel] = 1
    if output == "logit":
        return onehot
    if output == "probability":
        p = z.softmax(1)
        return p[:, channel : channel + 1] * (onehot - p)
    others = z.masked_fill(onehot.bool(), float("-inf")).softmax(1)
    return onehot - others


__all__ = [
    "OUTPUTS",
    "VESSEL_CLASS",
    "class_channel",
    "class_probability",
    "class_scores",
    "predicted_vessel",
    "score_seeds",
]
