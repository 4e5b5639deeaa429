"""Training and evaluation: configuration, losses, metrics, the training loop, evaluation."""

from vessel_lens.training.config import TrainConfig, read_config
from vessel_lens.training.evaluate import Evaluation, evaluate_model, write_evaluation
from vessel_lens.training.inference import vessel_probability
from vessel_lens.training.metrics import cl_dice, confusion, overlap_scores, roc_auc
from vessel_lens.training.trainer import TrainSummary, resume, train

__all__ = [
    "Evaluation",
    "TrainConfig",
    "TrainSummary",
    "cl_dice",
    "confusion",
    "evaluate_model",
    "overlap_scores",
    "read_config",
    "resume",
    "roc_auc",
    "train",
    "vessel_probability",
    "write_evaluation",
]
