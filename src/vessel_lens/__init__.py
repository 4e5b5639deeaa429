"""vessel-lens: see why a vessel-segmentation CNN labels each pixel the way it does.

Importing the package does no work: it loads no model, reads no data and seeds nothing.
"""

from vessel_lens.data import index_dataset, load_samples, synthesize
from vessel_lens.data.source import LoadedDataset, open_dataset
from vessel_lens.devices import resolve_device
from vessel_lens.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    OutputError,
    TrainingError,
    VesselLensError,
    WriteError,
)
from vessel_lens.models import (
    Checkpoint,
    ResNetSeg,
    UNet,
    create_model,
    list_models,
    load_model,
    save_checkpoint,
)

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "LoadedDataset",
    "OutputError",
    "ResNetSeg",
    "TrainingError",
    "UNet",
    "VesselLensError",
    "WriteError",
    "__version__",
    "create_model",
    "index_dataset",
    "list_models",
    "load_model",
    "load_samples",
    "open_dataset",
    "resolve_device",
    "save_checkpoint",
    "synthesize",
]
