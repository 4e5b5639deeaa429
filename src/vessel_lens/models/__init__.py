"""Models: the reference ResNet encoder-decoder, a U-Net, the registry and checkpoints."""

from vessel_lens._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "checkpoint": [
            "Checkpoint",
            "read_checkpoint",
            "resolve_checkpoint_path",
            "save_checkpoint",
        ],
        "source": ["load_model"],
        "registry": ["MODELS", "create_model", "list_models"],
        "resnet_seg": ["ResNetSeg"],
        "unet": ["UNet"],
    },
)
