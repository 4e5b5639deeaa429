"""Device portability: every command runs on CUDA unchanged and agrees with the CPU.

Marked ``gpu``; without a CUDA device every test here is skipped with that reason. Agreement is
checked with TF32 off (``ieee`` float32 for convolutions and matrix products), the precision in
which the Jacobian engine is exact; with TF32 on, CUDA convolutions round to about 1e-3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vessel_lens.cli import main
from vessel_lens.data import write_synthetic_dataset
from vessel_lens.interpret import jacobian, load_receptive_field_maps
from vessel_lens.models import create_model, read_checkpoint, save_checkpoint

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device; none on this machine"
    ),
]

CUDA = "cuda"


@pytest.fixture(autouse=True)
def ieee_float32():
    """Full float32 precision on CUDA for the duration of a test (restored afterwards)."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "ieee"
    yield
    conv.fp32_precision, matmul.fp32_precision = saved


def reference_model(width: int = 4) -> torch.nn.Module:
    """A width-``width`` resnet_seg whose BatchNorm statistics are not the initial ones."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet_seg", width=width, in_channels=1)
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.rand(4, 1, 32, 32))
    return model.eval()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gpu")
    save_checkpoint(root / "tiny.pt", reference_model(), "resnet_seg", {"width": 4})
    write_synthetic_dataset(root / "data", count=4, size=64, progress=False)
    (root / "images").mkdir()
    for path in sorted((root / "data" / "images").iterdir())[:2]:
        (root / "images" / path.name).write_bytes(path.read_bytes())
    return root


DEVICES = (("cpu", "cpu"), ("cuda", CUDA))
"""(name of the outputs, device): the CPU reference first."""


def run_cli(*args: str) -> None:
    assert main(list(args)) == 0


def close_rows(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("strategy", ["linear", "vmap"])
def test_jacobian_rows_on_cuda_equal_cpu(strategy):
    model = reference_model()
    image = torch.rand(1, 48, 48, generator=torch.Generator().manual_seed(2))
    pixels = torch.tensor([0, 100, 1000, 1175, 2303])
    on_cpu = jacobian(model, image, pixels=pixels, strategy=strategy, device="cpu")
    on_cuda = jacobian(model, image, pixels=pixels, strategy=strategy, device=CUDA)
    assert on_cuda.device.type == CUDA
    close_rows(on_cuda, on_cpu)
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays put


def test_one_training_epoch_on_cuda_writes_checkpoints_that_load_on_cpu(workspace, tmp_path):
    run = tmp_path / "run"
    run_cli(
        *("train", "--out", str(run), "--data", str(workspace / "data"), "--epochs", "1"),
        *(
            "--width",
            "4",
            "--crop-size",
            "32",
            "--batch-size",
            "4",
            "--device",
            CUDA,
            "--no-progress",
        ),
    )
    assert {"best.pt", "last.pt", "metrics.csv", "config.yaml"} <= {p.name for p in run.iterdir()}
    assert f"device: {CUDA}" in (run / "config.yaml").read_text()
    for name in ("best.pt", "last.pt"):
        model = read_checkpoint(run / name).build("cpu")
        assert all(p.device.type == "cpu" for p in model.parameters())


def test_evaluate_on_cuda_matches_cpu(workspace, tmp_path):
    metrics = {}
    for name, device in DEVICES:
        out = tmp_path / name
        run_cli(
            *("evaluate", "--checkpoint", str(workspace / "tiny.pt")),
            *("--data", str(workspace / "data"), "--split", "all", "--out", str(out)),
            *("--no-panels", "--device", device),
        )
        metrics[name] = json.loads((out / "metrics.json").read_text())["mean_over_images"]
    assert metrics["cpu"]
    for metric, value in metrics["cpu"].items():
        assert metrics["cuda"][metric] == pytest.approx(value, abs=1e-4), metric


def test_predict_on_cuda_matches_cpu(workspace, tmp_path):
    for name, device in DEVICES:
        run_cli(
            *("predict", "--checkpoint", str(workspace / "tiny.pt")),
            *("--images", str(workspace / "images"), "--out", str(tmp_path / name)),
            *("--device", device),
        )
    files = sorted(p.name for p in (tmp_path / "cpu").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "cuda").iterdir()) and files
    for file in files:
        if file.endswith("_probability.png"):
            cpu = np.asarray(Image.open(tmp_path / "cpu" / file), dtype=int)
            gpu = np.asarray(Image.open(tmp_path / "cuda" / file), dtype=int)
            assert np.abs(cpu - gpu).max() <= 1, file


def test_jacobian_command_on_cuda_matches_cpu(workspace, tmp_path):
    from vessel_lens.interpret import load_jacobian

    stores = {}
    for name, device in DEVICES:
        run_cli(
            *("jacobian", "--checkpoint", str(workspace / "tiny.pt")),
            *("--data", str(workspace / "data"), "--split", "all", "--crop", "16"),
            *("--out", str(tmp_path / name), "--device", device, "--no-progress"),
        )
        stores[name] = sorted((tmp_path / name).glob("*.zarr"))
    assert [p.name for p in stores["cpu"]] == [p.name for p in stores["cuda"]] != []
    for cpu_store, cuda_store in zip(stores["cpu"], stores["cuda"], strict=True):
        close_rows(load_jacobian(cuda_store)[0], load_jacobian(cpu_store)[0])


def test_report_on_cuda(workspace, tmp_path):
    run_cli(
        *("report", "--checkpoint", str(workspace / "tiny.pt"), "--data", str(workspace / "data")),
        *("--split", "all", "--max-images", "1", "--crop", "32", "--sanity-images", "0"),
        *("--methods", "saliency,integrated_gradients,occlusion"),
        *("--out", str(tmp_path / "report"), "--device", CUDA, "--no-progress"),
    )
    html = (tmp_path / "report" / "report.html").read_text()
    assert CUDA in html


def test_erf_on_cuda_matches_cpu(workspace, tmp_path):
    stem = sorted((workspace / "data" / "images").iterdir())[0].stem
    maps = {}
    for name, device in DEVICES:
        run_cli(
            *("erf", "--checkpoint", str(workspace / "tiny.pt"), "--data", str(workspace / "data")),
            *("--split", "all", "--crop", "16", "--out", str(tmp_path / name), "--images", stem),
            *("--mode", "pixel", "--device", device, "--no-progress", "--no-figures"),
        )
        maps[name] = load_receptive_field_maps(tmp_path / name / f"{stem}.erf.npz")
    cpu, cuda = maps["cpu"], maps["cuda"]
    assert torch.allclose(cuda.probability, cpu.probability, atol=1e-5)
    torch.testing.assert_close(cuda.peak, cpu.peak, rtol=1e-4, atol=0)
    # a count can differ only where an entry sits within rounding of the threshold
    assert float((cuda.count != cpu.count).float().mean()) < 0.01
    same_radius = torch.isclose(cuda.mass_radius, cpu.mass_radius, equal_nan=True)
    assert float(same_radius.float().mean()) > 0.99


def test_app_gradient_on_cuda_matches_cpu(workspace):
    pytest.importorskip("dash")
    from vessel_lens.app import AppConfig, create_app, testing
    from vessel_lens.app.state import AppState

    states = {
        name: AppState(
            AppConfig(
                checkpoints=[str(workspace / "tiny.pt")],
                data=str(workspace / "data"),
                device=device,
            )
        )
        for name, device in DEVICES
    }
    key = states["cpu"].image_options()[0]["value"]
    for row, col in [(0, 0), (31, 17), (63, 63)]:
        maps = {}
        for name, state in states.items():
            view, _ = state.view(key, "full")
            maps[name], source = state.gradient("m0", view, row, col)
            assert source == "computed" and maps[name].device.type == "cpu"
        close_rows(maps["cuda"], maps["cpu"])
    assert states["cuda"].engine("m0", view).device.type == CUDA

    app = create_app(states["cuda"].config, states["cuda"])
    client = app.server.test_client()
    dependencies = client.get(testing.DEPENDENCIES).get_json()
    values = testing.layout_values(client.get(testing.LAYOUT).get_json())
    view_body = testing.callback_request(dependencies, "view-store.data", values)
    view = client.post(testing.UPDATE, json=view_body).get_json()["response"]["view-store"]["data"]
    response = client.post(testing.UPDATE, json=testing.pixel_request(dependencies, view, (5, 9)))
    assert response.status_code == 200
    assert response.get_json()["response"]["message"]["children"] == ""
    app.vessel_lens_state.jobs.shutdown(wait=10)


def test_sliding_windows_on_cuda_match_cpu_and_return_to_the_cpu():
    from vessel_lens.models.inference import vessel_probability

    model = reference_model()
    image = torch.rand(1, 300, 250)
    cpu = vessel_probability(model, image, "cpu", tile=96)
    cuda = vessel_probability(model.to(CUDA), image, CUDA, tile=96)
    assert cuda.device.type == "cpu"  # blended on the CPU; only windows went to the GPU
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_demo_on_cuda(tmp_path):
    run_cli("demo", "--out", str(tmp_path / "demo"), "--device", CUDA, "--no-progress")
    assert (tmp_path / "demo" / "report" / "report.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over nccl needs at least 2 GPUs")
def test_torchrun_ddp_over_nccl(workspace, tmp_path):
    run = tmp_path / "ddp"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
            *("--nproc-per-node", "2", "-m", "vessel_lens", "train", "--out", str(run)),
            *("--data", str(workspace / "data"), "--epochs", "1", "--width", "4"),
            *("--crop-size", "32", "--batch-size", "4", "--device", CUDA, "--no-progress"),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = (run / "config.yaml").read_text()
    assert "world_size: 2" in config and CUDA in config
    assert (run / "last.pt").exists() and (run / "best.pt").exists()
