"""vessel-lens: see why a vessel-segmentation CNN labels each pixel the way it does.

Importing the package does no work: it loads no model, reads no data and seeds nothing, and
its public names import their modules (and torch) on first use.
"""

from vessel_lens._lazy import lazy_exports

__version__ = "0.1.0"

_all, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "data": ["index_dataset", "load_samples", "synthesize"],
        "data.source": ["LoadedDataset", "open_dataset"],
        "devices": ["resolve_device"],
        "errors": [
            "CheckpointError",
            "ConfigError",
            "DataError",
            "ModelError",
            "OutputError",
            "TrainingError",
            "VesselLensError",
            "WriteError",
        ],
        "models": [
            "Checkpoint",
            "ResNetSeg",
            "UNet",
            "create_model",
            "list_models",
            "load_model",
            "save_checkpoint",
        ],
    },
)
__all__ = [*_all, "__version__"]
