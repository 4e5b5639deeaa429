"""The end-to-end demo on the embedded synthetic data (``vessel-lens demo``).

Steps: generate and preview data; train a small reference model for about a minute;
evaluate it on the synthetic test split. Later steps (interpretation, report) add to
:func:`run_demo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vessel_lens.data.source import synthetic_dataset
from vessel_lens.errors import ConfigError
from vessel_lens.models import load_model
from vessel_lens.training.config import TrainConfig
from vessel_lens.training.evaluate import evaluate_model, format_table, write_evaluation
from vessel_lens.training.trainer import train
from vessel_lens.viz.preview import preview_figure

DEMO_TRAINING = TrainConfig(
    width=8,
    epochs=30,
    crop_size=64,
    crops_per_image=4,
    batch_size=8,
    loss="ce+dice",
    schedule="cosine",
    warmup_epochs=1,
    lr=2e-3,
    val_every=3,
    max_minutes=1.5,
)
"""A small run that fits the demo's time budget on a 2-core CPU."""


@dataclass
class DemoOutputs:
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def run_demo(out: Path, device: str = "cpu", seed: int = 0, progress: bool = True) -> DemoOutputs:
    """Run every demo step into ``out`` (refused if ``out`` already holds a demo run)."""
    out = Path(out)
    if (out / "run" / "config.yaml").exists():
        raise ConfigError(f"{out}: already holds a demo run; choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    outputs = DemoOutputs(out)
    dataset = synthetic_dataset(seed=seed)
    outputs.files["data-preview"] = preview_figure(
        dataset.subset("train"), out / "data_preview.png"
    )

    config = TrainConfig(**{**DEMO_TRAINING.to_dict(), "seed": seed, "device": device})
    summary = train(config, out / "run", progress=progress)
    outputs.files["checkpoint"] = out / "run" / "best.pt"
    outputs.files["curves"] = out / "run" / "curves.png"
    outputs.lines.append(
        f"trained {summary.epochs_done} epochs in {summary.seconds:.0f} s; best validation "
        f"Dice {summary.best_dice:.3f}"
    )

    model, _ = load_model(out / "run" / "best.pt", device)
    evaluation = evaluate_model(
        model, dataset.subset("test"), device, out / "evaluation" / "panels", progress=progress
    )
    files = write_evaluation(evaluation, out / "evaluation", {"data": "synthetic", "split": "test"})
    outputs.files["test-metrics"] = files["metrics"]
    outputs.files["test-panels"] = out / "evaluation" / "panels"
    outputs.lines.extend(format_table(evaluation))
    return outputs
