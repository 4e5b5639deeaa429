"""Models: the reference ResNet encoder-decoder, a U-Net, the registry and checkpoints."""

from vessel_lens.models.checkpoint import (
    Checkpoint,
    load_model,
    read_checkpoint,
    resolve_checkpoint_path,
    save_checkpoint,
)
from vessel_lens.models.registry import MODELS, create_model, list_models
from vessel_lens.models.resnet_seg import ResNetSeg
from vessel_lens.models.unet import UNet

__all__ = [
    "MODELS",
    "Checkpoint",
    "ResNetSeg",
    "UNet",
    "create_model",
    "list_models",
    "load_model",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "save_checkpoint",
]
