"""Models from outside vessel-lens through the command line (issue 12 item 4): the manual's
MONAI UNet factory file and ``--model monai.networks.nets:UNet --model-args ... --weights``
through evaluate, predict, jacobian, erf, report and the app (Flask test client), TorchScript
and torch.export files through jacobian, evaluate and predict, and bad inputs as one line."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from vessel_lens.cli import main
from vessel_lens.data import write_synthetic_dataset
from vessel_lens.interpret import load_jacobian
from vessel_lens.models import create_model, save_checkpoint

nets = pytest.importorskip("monai.networks.nets")

MODELS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "models.md"
SIZE = 32
CHANNELS = [4, 8, 16]
UNET_ARGS = {
    "spatial_dims": 2,
    "in_channels": 1,
    "out_channels": 2,
    "channels": CHANNELS,
    "strides": [2, 2],
    "num_res_units": 2,
}


def readme_factory() -> str:
    """The factory file of the worked example in docs/models.md (the block ``# my_unet.py``)."""
    section = (
        MODELS_PAGE.read_text().split("## Models and checkpoints\n", 1)[1].split("\n## ", 1)[0]
    )
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S)]
    found = [b for b in blocks if b.startswith("# my_unet.py\n")]
    assert len(found) == 1, "docs/models.md shows my_unet.py once"
    return found[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign-cli")
    write_synthetic_dataset(root / "data", count=2, size=SIZE, progress=False)
    (root / "my_unet.py").write_text(readme_factory())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = nets.UNet(**{**UNET_ARGS, "channels": tuple(CHANNELS), "strides": (2, 2)})
    unet.eval()
    torch.save(unet.state_dict(), root / "unet.pt")
    example = torch.rand(1, 1, SIZE, SIZE)
    torch.jit.trace(unet, example).save(str(root / "traced.pt"))
    torch.export.save(torch.export.export(unet, (example,)), str(root / "unet.pt2"))
    return root, unet


def run(capsys, *args: str) -> tuple[int, str, str]:
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def module_options(root: Path) -> list[str]:
    return [
        "--model",
        "monai.networks.nets:UNet",
        "--model-args",
        json.dumps(UNET_ARGS),
        "--weights",
        str(root / "unet.pt"),
    ]


def file_options(root: Path) -> list[str]:
    return [
        "--model",
        f"{root / 'my_unet.py'}:vessel_unet",
        "--model-args",
        json.dumps({"channels": CHANNELS}),
        "--weights",
        str(root / "unet.pt"),
    ]


def reference_rows(unet, image: torch.Tensor) -> torch.Tensor:
    def probability(x):
        return unet(x[None]).softmax(1)[0, 1].reshape(-1)

    rows = torch.autograd.functional.jacobian(probability, image)
    return rows.reshape(image.shape[-2] * image.shape[-1], *image.shape)


SOURCES = {
    "module": module_options,
    "manual factory file": file_options,
    "TorchScript": lambda root: ["--checkpoint", str(root / "traced.pt")],
    "torch.export": lambda root: ["--checkpoint", str(root / "unet.pt2")],
}


@pytest.mark.parametrize("source", list(SOURCES))
def test_jacobian_stores_are_exact(setup, capsys, source):
    root, unet = setup
    out = root / f"jacobian-{source}"
    options = SOURCES[source](root)
    status, _, err = run(
        capsys, "jacobian", *options, "--data", root / "data", "--split", "all",
        "--images", "synth0000", "--crop", 0, "--out", out, "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert status == 0, err
    rows, metadata = load_jacobian(out / "synth0000.zarr")
    image = torch.as_tensor(metadata["image"]).float()
    assert rows.shape == (SIZE * SIZE, 1, SIZE, SIZE)
    expected = reference_rows(unet, image)
    assert float((rows - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
    settings = json.loads((out / "jacobian-run.json").read_text())
    assert settings["model"] == (options[1] if options[0] == "--model" else None)


@pytest.mark.parametrize("source", list(SOURCES))
def test_evaluate_and_predict(setup, capsys, source):
    root, _ = setup
    options = SOURCES[source](root)
    out = root / f"evaluate-{source}"
    status, stdout, err = run(
        capsys, "evaluate", *options, "--data", root / "data", "--split", "all", "--out", out,
        "--device", "cpu",
    )  # fmt: skip
    assert status == 0, err
    assert "2 images of split 'all'" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mean_over_images"]["dice"] <= 1.0
    if options[0] == "--model":
        assert metrics["model"] == options[1] and metrics["checkpoint"] == options[-1]
    status, stdout, err = run(
        capsys, "predict", *options, "--images", root / "data" / "images",
        "--out", root / f"predict-{source}", "--device", "cpu",
    )  # fmt: skip
    assert status == 0, err
    assert sorted(p.name for p in (root / f"predict-{source}").iterdir())[:2] == [
        "synth0000_mask.png",
        "synth0000_probability.png",
    ]


def test_erf_and_report_with_a_monai_unet(setup, capsys):
    root, _ = setup
    status, stdout, err = run(
        capsys, "erf", *module_options(root), "--data", root / "data", "--split", "all",
        "--images", "synth0001", "--full", "--pixel-stride", 4, "--out", root / "erf",
        "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert status == 0, err
    assert (root / "erf" / "synth0001.erf.npz").exists() and "1 image(s)" in stdout
    status, stdout, err = run(
        capsys, "report", *file_options(root), "--data", root / "data", "--split", "all",
        "--max-images", 1, "--out", root / "report", "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert status == 0, err
    html = (root / "report" / "report.html").read_text()
    assert "vessel_unet(channels=[4, 8, 16])" in html
    assert "methods left out" not in html  # a factory's model has its layers: all methods


def test_report_of_a_torchscript_file_leaves_out_layer_methods(setup, capsys):
    root, _ = setup
    status, _, err = run(
        capsys, "report", "--checkpoint", root / "traced.pt", "--data", root / "data",
        "--split", "all", "--max-images", 1, "--sanity-images", 0, "--out", root / "report-ts",
        "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert status == 0, err
    html = (root / "report-ts" / "report.html").read_text()
    assert "methods left out" in html and "layer_gradcam" in html


def test_app_offers_the_model_and_answers_a_hover(setup, capsys, monkeypatch):
    pytest.importorskip("dash")
    import vessel_lens.app
    from vessel_lens.app import testing
    from vessel_lens.app.testing import UPDATE, callback_request

    checked = []

    class CheckingServer:
        """Stands in for the HTTP server: while it "serves", requests go to the test client
        (the app stops its work queue once serving ends)."""

        def __init__(self, app, host, port):
            self.app = app
            self.url = f"http://{host}:{port}/"

        def serve_forever(self):
            state = self.app.vessel_lens_state
            labels = {key: entry.label for key, entry in state.models.items()}
            assert labels["m1"] == "monai.networks.nets:UNet (unet.pt)"
            assert "random" not in labels
            client = self.app.server.test_client()
            dependencies = client.get("/_dash-dependencies").get_json()
            view, _ = state.view(state.image_options()[0]["value"], "full")
            pixel = {"view": view.as_dict(), "pixel": {"row": 3, "col": 4}}
            values = testing.pixel_values(pixel, (5, 9))
            values["model.value"] = "m1"
            body = callback_request(dependencies, "graph-gradient.figure", values)
            assert client.post(UPDATE, json=body).status_code == 200
            assert float(state.gradient("m1", view, 5, 9)[0].abs().max()) > 0
            assert state.receptive_box("m1", view, 5, 9) is not None
            checked.append(True)

    monkeypatch.setattr(vessel_lens.app, "Server", CheckingServer)
    monkeypatch.setattr("vessel_lens.app.server.limit_malloc_arenas", lambda arenas: None)
    monkeypatch.setattr("vessel_lens.app.server.map_large_allocations", lambda: None)
    root, _ = setup
    threads = torch.get_num_threads()
    try:
        status, _, err = run(
            capsys, "app", "--checkpoint", root / "unet.pt2", *module_options(root),
            "--data", root / "data", "--device", "cpu",
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert status == 0, err
    assert checked == [True]


def test_bad_inputs_are_one_line_and_a_non_zero_exit(setup, capsys, tmp_path):
    root, _ = setup
    factory = tmp_path / "factories.py"
    factory.write_text(
        "import torch\n"
        "def dictionary():\n    return {}\n"
        "def fails():\n    raise RuntimeError('no GPU here')\n"
    )
    flat = torch.jit.script(
        torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Flatten(2))
    )
    flat.save(str(tmp_path / "flat.pt"))
    other = create_model("resnet_seg", width=1, in_channels=1)
    checkpoint = save_checkpoint(tmp_path / "registry.pt", other, "resnet_seg", {"width": 1})
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": {}, "hook": os.system}, unsafe)  # a reference: nothing runs
    data = ["--data", root / "data", "--split", "all", "--device", "cpu"]
    weights = ["--weights", root / "unet.pt"]
    cases = {
        "module missing": (["--model", "not_installed_pkg:UNet"], "no module named 'not_installed_pkg'"),
        "attribute missing": (["--model", "monai.networks.nets:VesselNet"], "has no attribute 'VesselNet'"),
        "file missing": (["--model", tmp_path / "nothing.py:unet"], "not found"),
        "no nn.Module": (["--model", f"{factory}:dictionary"], "returned a dict, not a torch.nn.Module"),
        "factory raises": (["--model", f"{factory}:fails"], "RuntimeError: no GPU here"),
        "weights do not fit": (["--model", "monai.networks.nets:UNet", "--model-args", json.dumps({**UNET_ARGS, "num_res_units": 0}), *weights], "weights do not fit monai.networks.nets:UNet"),
        "unsafe pickle": (["--model", "monai.networks.nets:UNet", "--model-args", json.dumps(UNET_ARGS), "--weights", unsafe], "unsafe: the file asks to import posix.system"),
        "weights without model": (weights, "--weights"),
        "model and checkpoint": (["--checkpoint", checkpoint, *module_options(root)], "exclude each other"),
        "bad JSON": (["--model", "monai.networks.nets:UNet", "--model-args", "{spatial_dims: 2}"], "not valid JSON"),
        "wrong output": (["--checkpoint", tmp_path / "flat.pt"], "flat.pt: returned a (1, 2, 1024) tensor"),
        "exported size": (["--checkpoint", root / "unet.pt2", "--crop", 16], "exported for inputs of shape (1, 1, 32, 32), given (1, 1, 16, 16)"),
    }  # fmt: skip
    for name, (options, expected) in cases.items():
        command = ["jacobian", *options, *data, "--out", tmp_path / name.replace(" ", "-")]
        if "--crop" not in command:
            command += ["--crop", 0]
        status, _, err = run(capsys, *command)
        lines = err.strip().splitlines()
        assert status == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert expected in lines[0], (name, lines[0])
        assert "internal error" not in lines[0], (name, lines[0])
    for command in ("evaluate", "predict", "report", "erf", "app"):
        extra = {"predict": ["--images", root / "data" / "images", "--out", tmp_path / "p"],
                 "report": ["--out", tmp_path / "r"], "erf": ["--out", tmp_path / "e"]}  # fmt: skip
        status, _, err = run(capsys, command, *weights, *extra.get(command, []))
        assert status == 2 and err.startswith("error: --weights") and err.count("\n") == 1, (
            command,
            err,
        )
