"""Training and evaluation: configuration, losses, metrics, the training loop, evaluation."""

from vessel_lens._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "config": ["TrainConfig", "read_config"],
        "evaluate": ["Evaluation", "evaluate_model", "write_evaluation"],
        "inference": ["vessel_probability"],
        "metrics": ["cl_dice", "confusion", "overlap_scores", "roc_auc"],
        "trainer": ["TrainSummary", "resume", "train"],
    },
)
