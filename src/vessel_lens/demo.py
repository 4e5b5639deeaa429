"""The end-to-end demo on the embedded synthetic data (``vessel-lens demo``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vessel_lens.data.source import synthetic_dataset
from vessel_lens.models import create_model
from vessel_lens.viz.figures import hide_axes, new_figure, save_figure, to_numpy_image
from vessel_lens.viz.preview import preview_figure


@dataclass
class DemoOutputs:
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)


def run_demo(out: Path, device: str = "cpu", seed: int = 0) -> DemoOutputs:
    """Generate data, preview it and run the reference model on one image."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    outputs = DemoOutputs(out)
    dataset = synthetic_dataset(seed=seed)
    outputs.files["preview"] = preview_figure(dataset.subset("train"), out / "data_preview.png")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model("resnet_seg", width=8).to(device).eval()
    sample = dataset.subset("test")[0]
    with torch.no_grad():
        probability = model(sample.image[None].to(device)).softmax(1)[0, 1].cpu()
    figure = new_figure(7, 3.6)
    axes = figure.subplots(1, 2)
    axes[0].imshow(to_numpy_image(sample.image), cmap="gray")
    axes[0].set_title(f"input {sample.stem}")
    axes[1].imshow(probability.numpy(), cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("vessel probability (untrained)")
    hide_axes(axes)
    outputs.files["forward"] = save_figure(figure, out / "forward_pass.png")
    return outputs
