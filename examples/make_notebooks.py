"""Write the example notebooks (outputs cleared) next to this script.

    .venv/bin/python examples/make_notebooks.py

The notebooks are committed; rerun this after editing the cells below (they are written in
``ruff format`` style, so ``ruff check`` and ``ruff format --check`` pass on the notebooks).
Each notebook trains a tiny model on synthetic vessels in a temporary folder, so it needs no
data and runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

COMMON_IMPORTS = (
    "from vessel_lens.data.source import open_dataset",
    "from vessel_lens.data.synthetic import write_synthetic_dataset",
    "from vessel_lens.models import load_model",
)

SETUP = """
# Tiny tensors: one thread is fastest, and much faster on a busy machine.
torch.set_num_threads(1)
work = Path(tempfile.mkdtemp(prefix="vessel-lens-example-"))
print("outputs in", work)"""

DATASET = """write_synthetic_dataset(work / "data", count=16, size=64, seed=0, progress=False)
dataset = open_dataset(work / "data")"""

TRAIN = """config = TrainConfig(
    data=str(work / "data"),
    width=4,
    dropout=0.0,
    epochs=5,
    crop_size=64,
    crops_per_image=4,
    batch_size=8,
    lr=1e-2,
    device="cpu",
    seed=0,
)
summary = train(config, work / "run", progress=False)
model, checkpoint = load_model(work / "run" / "best.pt")"""

TRAIN_TINY = (
    DATASET
    + "\n"
    + TRAIN
    + """
sample = dataset.subset("test")[0]
image, label = sample.image, sample.label
print(f"best validation Dice {summary.best_dice:.3f}; image {sample.stem} {tuple(image.shape)}")"""
)

VESSMAP_NOTE = (
    "To use the real VessMAP data instead, point `open_dataset` (or `TrainConfig.data`) at "
    "`../shared/data/vessmap` relative to the repository root, for example "
    '`Path.cwd().parent.parent / "shared/data/vessmap"` when the notebook runs from '
    "`examples/`."
)


def setup_cell(*first_party: str) -> nbformat.NotebookNode:
    """Imports (standard, third-party, then ours, sorted by module) and the work folder."""
    ours = sorted({*COMMON_IMPORTS, *first_party}, key=lambda line: line.split(" import ")[0])
    return new_code_cell(
        "import tempfile\nfrom pathlib import Path\n\nimport torch\n"
        "from IPython.display import Image, display\n\n" + "\n".join(ours) + "\n" + SETUP
    )


def train_and_evaluate() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell(
                "# Train and evaluate a vessel-segmentation model\n\n"
                "A width-4 reference model (`resnet_seg`) trained for a few epochs on synthetic "
                "vessels, then evaluated on the test split. " + VESSMAP_NOTE
            ),
            setup_cell(
                "from vessel_lens.training import TrainConfig, evaluate_model, train",
                "from vessel_lens.training.evaluate import format_table, write_panel",
                "from vessel_lens.training.inference import vessel_probability",
                "from vessel_lens.viz.preview import preview_figure",
            ),
            new_markdown_cell("## A synthetic dataset and a look at it"),
            new_code_cell(
                DATASET
                + """
print({split: len(stems) for split, stems in dataset.splits.items()})
preview = preview_figure(dataset.subset("train"), work / "preview.png", count=3, crop_size=48)
display(Image(filename=preview))"""
            ),
            new_markdown_cell(
                "## Training\n\nEvery option of `TrainConfig` is also a `vessel-lens train` "
                "option; the run folder holds `config.yaml`, `metrics.csv`, `curves.png`, "
                "`best.pt` and `last.pt`."
            ),
            new_code_cell(
                TRAIN
                + """
print(summary)
print((work / "run" / "metrics.csv").read_text())
display(Image(filename=work / "run" / "curves.png"))"""
            ),
            new_markdown_cell("## Evaluation on the test split"),
            new_code_cell(
                """test = dataset.subset("test")
result = evaluate_model(model, test, progress=False)
print("\\n".join(format_table(result)))
assert 0 <= result.mean["dice"] <= 1
probability = vessel_probability(model, test[0].image)
panel = write_panel(test[0], probability, result.per_image[0], work / "panel.png")
display(Image(filename=panel))"""
            ),
        ]
    )


def validate_gradients() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell(
                "# Validate the gradients of one output pixel\n\n"
                "The original notebook's view: the input, the softmax output, the thresholded "
                "gradients and the gradient at a chosen pixel side by side, and a check that "
                "the Jacobian engine's row equals plain `torch.autograd.grad`."
            ),
            setup_cell(
                "from vessel_lens.interpret.jacobian import jacobian",
                "from vessel_lens.interpret.thresholds import gradient_magnitude, "
                "pixel_stats, threshold_value",
                "from vessel_lens.training import TrainConfig, train, vessel_probability",
                "from vessel_lens.viz.attribution_plots import pixel_panels",
                "from vessel_lens.viz.report import choose_pixels",
            ),
            new_code_cell(TRAIN_TINY),
            new_markdown_cell(
                "## Softmax output and the chosen pixels\n\nThe report's default pixels: a "
                "confident vessel pixel, a background pixel and a false positive (if any)."
            ),
            new_code_cell(
                """probability = vessel_probability(model, image)
pixels = choose_pixels(probability, label)
print(pixels)
row, col, _ = pixels[0]"""
            ),
            new_markdown_cell(
                "## The Jacobian row against autograd\n\nRow n of `jacobian(...)` is "
                "d probability[pixel n] / d image."
            ),
            new_code_cell(
                """row_engine = jacobian(model, image, pixels=[[row, col]])[0]
x = image[None].clone().requires_grad_(True)
(reference,) = torch.autograd.grad(model(x).softmax(1)[0, 1, row, col], x)
difference = (row_engine - reference[0]).abs().max().item()
print(f"max |engine - autograd| = {difference:.2e} (largest {reference.abs().max().item():.2e})")
torch.testing.assert_close(row_engine, reference[0], atol=1e-6, rtol=1e-4)"""
            ),
            new_markdown_cell(
                "## Thresholded gradients\n\nAs in the original work, a pixel belongs to the "
                "thresholded map when |gradient| exceeds 1 % of the maximum over the whole "
                "image's Jacobian (mode `global`); mode `pixel` uses each pixel's own maximum."
            ),
            new_code_cell(
                """full = jacobian(model, image)  # every output pixel: (H*W, C, H, W)
global_max = gradient_magnitude(full).max().item()
coords = torch.tensor([[r, c] for r, c, _ in pixels])
gradients = full[coords[:, 0] * image.shape[-1] + coords[:, 1]]
stats = []
for (r, c, why), magnitude in zip(pixels, gradient_magnitude(gradients), strict=True):
    threshold = threshold_value(magnitude, 0.01, "global", global_max)
    stats.append(pixel_stats(magnitude, threshold))
    print((r, c), why, stats[-1].as_dict())"""
            ),
            new_code_cell(
                """panels = pixel_panels(image, probability, label, pixels, gradients, stats, work / "p.png")
display(Image(filename=panels))"""
            ),
        ]
    )


def compare_attributions() -> nbformat.NotebookNode:
    return new_notebook(
        cells=[
            new_markdown_cell(
                "# Compare attribution methods on segmentation targets\n\n"
                "Each method explains one number: the vessel probability summed over a target "
                "(a pixel, a vessel segment, the false-positive or false-negative region). "
                "Then two trust checks: model-parameter randomisation and deletion curves."
            ),
            setup_cell(
                "from vessel_lens.errors import ConfigError",
                "from vessel_lens.interpret.attribution import METHODS, attribute",
                "from vessel_lens.interpret.attribution.sanity import deletion_curves, randomisation_test",
                "from vessel_lens.interpret.attribution.targets import (\n    error_target,\n"
                "    pixel_target,\n    predicted_vessels,\n    segment_target,\n)",
                "from vessel_lens.training import TrainConfig, train, vessel_probability",
                "from vessel_lens.viz.attribution_plots import attribution_grid, "
                "deletion_plot, randomisation_plot",
                "from vessel_lens.viz.report import choose_pixels",
            ),
            new_code_cell(TRAIN_TINY),
            new_markdown_cell("## Targets"),
            new_code_cell(
                """prediction = predicted_vessels(model, image)
(row, col, _), *_ = choose_pixels(vessel_probability(model, image), label)
targets = [
    pixel_target(row, col, prediction.shape),
    segment_target(prediction, row, col, radius=8, source="prediction"),
]
for kind in ("false_positive", "false_negative"):
    try:
        targets.append(error_target(prediction, label, kind))
    except ConfigError as error:  # an empty region is refused
        print("skipped:", error)
print([t.name for t in targets])"""
            ),
            new_markdown_cell(
                "## Every method for every target\n\nRed raises the target's value, blue "
                "lowers it; Grad-CAM is non-negative."
            ),
            new_code_cell(
                """quick = {
    "integrated_gradients": {"n_steps": 16},
    "smoothgrad": {"nt_samples": 8, "seed": 0},
    "gradient_shap": {"n_samples": 8, "seed": 0},
    "occlusion": {"window": 8, "stride": 4},
}
rows = []
for target in targets:
    maps = {m: attribute(model, image, target, m, **quick.get(m, {})) for m in METHODS}
    rows.append((target.name, target.mask.numpy(), maps))
grid = attribution_grid(image, rows, work / "attributions.png")
display(Image(filename=grid))"""
            ),
            new_markdown_cell(
                "## Model-parameter randomisation (Adebayo et al. 2018)\n\nStages are "
                "re-initialised on copies from the head towards the stem; a method that "
                "depends on what the model learned loses similarity as more stages are random."
            ),
            new_code_cell(
                """methods = ["saliency", "guided_backprop"]
result = randomisation_test(model, image, targets[:1], methods, "cascading")
for method in methods:
    print(method, [round(v, 3) for v in result.series(method, "spearman")])
plot = randomisation_plot([result], work / "randomisation.png")
display(Image(filename=plot))"""
            ),
            new_markdown_cell(
                "## Deletion and insertion\n\nPixels replaced by the image mean in order of "
                "|attribution|; the dashed line is a random order."
            ),
            new_code_cell(
                """maps = {m: rows[0][2][m] for m in ("saliency", "integrated_gradients", "occlusion")}
curves = []
for mode in ("deletion", "insertion"):
    curves += deletion_curves(model, image, targets[0], maps, mode=mode, steps=16)
for curve in curves:
    print(f"{curve.mode:<9} {curve.label:<21} AUC {curve.auc:.3f} (random {curve.random_auc:.3f})")
display(Image(filename=deletion_plot(curves, work / "deletion.png")))"""
            ),
        ]
    )


NOTEBOOKS = {
    "01_train_and_evaluate.ipynb": train_and_evaluate,
    "02_validate_gradients.ipynb": validate_gradients,
    "03_compare_attributions.ipynb": compare_attributions,
}


def main() -> None:
    folder = Path(__file__).resolve().parent
    for name, build in NOTEBOOKS.items():
        notebook = build()
        notebook.metadata["kernelspec"] = {
            "display_name": "Python 3",
            "language": "python",
            "name": "python3",
        }
        notebook.metadata["language_info"] = {"name": "python"}
        for index, cell in enumerate(notebook.cells):
            cell["id"] = f"cell-{index:02d}"  # stable ids: regenerating changes nothing
        nbformat.validate(notebook)
        nbformat.write(notebook, folder / name)
        print("wrote", folder / name)


if __name__ == "__main__":
    main()
