"""Checkpoints: a file that rebuilds its model alone, and a clear error for every bad file."""

from __future__ import annotations

import collections
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from vessel_lens.errors import CheckpointError
from vessel_lens.models import (
    create_model,
    list_models,
    load_model,
    read_checkpoint,
    resolve_checkpoint_path,
    save_checkpoint,
)

WIDTH = 4


class Arbitrary:
    """A class the weights-only unpickler must refuse to import."""

    def __init__(self) -> None:
        self.state = {"weight": torch.zeros(2)}


class StateDictSubclass(collections.OrderedDict):
    """An OrderedDict subclass: looks like a state dict, but is an arbitrary global."""


def trained_model(name: str = "resnet_seg", **kwargs) -> torch.nn.Module:
    """A small model whose BatchNorm running statistics have moved off their defaults."""
    torch.manual_seed(0)
    model = create_model(name, width=WIDTH, **kwargs)
    model.train()
    with torch.no_grad():
        model(torch.rand(2, kwargs.get("in_channels", 1), 32, 32) * 3 + 1)
    return model.eval()


def single_line_error(excinfo: pytest.ExceptionInfo, path) -> str:
    message = str(excinfo.value)
    assert str(path) in message
    assert "\n" not in message and "\x1b" not in message, repr(message)
    return message


@pytest.mark.parametrize("name", list_models())
def test_round_trip_gives_identical_outputs(tmp_path, name):
    model = trained_model(name)
    kwargs = {"width": WIDTH}
    path = save_checkpoint(tmp_path / "model.pt", model, name, kwargs, metadata={"epoch": 7})
    loaded, checkpoint = load_model(path)
    assert not loaded.training
    assert type(loaded) is type(model)
    assert checkpoint.model_name == name and checkpoint.model_kwargs == kwargs
    assert checkpoint.metadata == {"epoch": 7} and checkpoint.path == path
    x = torch.rand(2, 1, 37, 50)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_round_trip_keeps_constructor_arguments_and_training_state(tmp_path):
    model = trained_model(in_channels=3, num_classes=4)
    kwargs = {"width": WIDTH, "in_channels": 3, "num_classes": 4}
    training = {"optimizer": {"lr": 0.01, "step": torch.tensor(5)}, "rng": torch.get_rng_state()}
    path = save_checkpoint(tmp_path / "m.pt", model, "resnet_seg", kwargs, training=training)
    loaded, checkpoint = load_model(path)
    assert checkpoint.training["optimizer"]["lr"] == 0.01
    assert torch.equal(checkpoint.training["rng"], training["rng"])
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        assert loaded(x).shape == (1, 4, 20, 20)
        assert torch.equal(loaded(x), model(x))


def test_half_precision_round_trip_is_close(tmp_path):
    model = trained_model()
    path = save_checkpoint(tmp_path / "half.pt", model, "resnet_seg", {"width": WIDTH}, half=True)
    checkpoint = read_checkpoint(path)
    floating = [v for v in checkpoint.state_dict.values() if v.is_floating_point()]
    assert floating and all(v.dtype == torch.float16 for v in floating)
    full = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert path.stat().st_size < 0.75 * full

    loaded, _ = load_model(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2 * scale)


def test_run_folder_resolves_to_best_then_last(tmp_path):
    model = trained_model()
    run = tmp_path / "run"
    last = save_checkpoint(run / "last.pt", model, "resnet_seg", {"width": WIDTH})
    assert resolve_checkpoint_path(run) == last
    best = save_checkpoint(run / "best.pt", model, "resnet_seg", {"width": WIDTH})
    assert resolve_checkpoint_path(run) == best
    assert load_model(run)[1].path == best


def test_empty_run_folder_and_missing_file_are_refused(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match=r"no best\.pt or last\.pt") as info:
        load_model(tmp_path / "run")
    single_line_error(info, tmp_path / "run")
    with pytest.raises(CheckpointError, match="not found") as info:
        load_model(tmp_path / "absent.pt")
    single_line_error(info, tmp_path / "absent.pt")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.01])
def test_truncated_checkpoint_is_refused(tmp_path, keep):
    good = save_checkpoint(tmp_path / "good.pt", trained_model(), "resnet_seg", {"width": WIDTH})
    data = good.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    single_line_error(info, path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_refused(tmp_path, seed):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    single_line_error(info, path)


@pytest.mark.parametrize("text", ["hi\n", "epochs: 3\nlr: 0.1\n", "{}", "(", "N."])
def test_text_files_are_refused(tmp_path, text):
    path = tmp_path / "notes.pt"
    path.write_text(text)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    single_line_error(info, path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    single_line_error(info, path)


@pytest.mark.parametrize(
    "payload",
    [Arbitrary(), StateDictSubclass(weight=torch.zeros(3))],
    ids=["custom-class", "ordereddict-subclass"],
)
def test_arbitrary_objects_are_refused_by_weights_only_loading(tmp_path, payload):
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="refused") as info:
        load_model(path)
    single_line_error(info, path)


def test_plain_pickle_of_an_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Arbitrary(), protocol=2))
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    single_line_error(info, path)


def test_bare_state_dict_is_refused_with_advice(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(trained_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="bare state dict") as info:
        load_model(path)
    assert "save_checkpoint" in single_line_error(info, path)


@pytest.mark.parametrize("payload", [[1, 2, 3], {"format": "other"}, {}])
def test_other_plain_payloads_are_refused(tmp_path, payload):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="not a vessel-lens checkpoint") as info:
        load_model(path)
    single_line_error(info, path)


@pytest.mark.parametrize(
    ("saved", "claimed_name", "claimed_kwargs"),
    [
        (("resnet_seg", WIDTH), "resnet_seg", {"width": 8}),
        (("unet", WIDTH), "resnet_seg", {"width": WIDTH}),
        (("resnet_seg", WIDTH), "resnet_seg_nonorm", {"width": WIDTH}),
    ],
    ids=["other-width", "other-architecture", "without-norm"],
)
def test_weights_of_another_model_do_not_fit(tmp_path, saved, claimed_name, claimed_kwargs):
    name, width = saved
    model = create_model(name, width=width)
    path = save_checkpoint(tmp_path / "mixed.pt", model, claimed_name, claimed_kwargs)
    with pytest.raises(CheckpointError, match="do not fit") as info:
        load_model(path)
    message = single_line_error(info, path)
    assert claimed_name in message


def test_unknown_model_name_in_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", trained_model(), "resnet_seg", {"width": WIDTH})
    payload = torch.load(path, weights_only=True)
    payload["model_name"] = "mystery_net"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="mystery_net") as info:
        load_model(path)
    single_line_error(info, path)


def test_newer_format_version_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", trained_model(), "resnet_seg", {"width": WIDTH})
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="version 99"):
        load_model(path)


def test_failed_save_leaves_the_previous_checkpoint_in_place(tmp_path):
    model = trained_model()
    path = save_checkpoint(tmp_path / "m.pt", model, "resnet_seg", {"width": WIDTH})
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, AttributeError)):
        save_checkpoint(path, model, "resnet_seg", {"width": WIDTH}, metadata={"f": lambda: 0})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def write_payload(path, model_name="resnet_seg", model_kwargs=None, state_dict=None):
    """A checkpoint written by hand, as a hostile or broken file would be."""
    torch.save(
        {
            "format": "vessel-lens-checkpoint",
            "version": 1,
            "model_name": model_name,
            "model_kwargs": {"width": WIDTH} if model_kwargs is None else model_kwargs,
            "state_dict": {} if state_dict is None else state_dict,
            "metadata": {},
        },
        path,
    )
    return path


PEAK_RSS = """
import resource, sys
import torch
from vessel_lens.errors import CheckpointError
from vessel_lens.models import load_model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_model(sys.argv[1])
except CheckpointError as exc:
    print(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)  # ru_maxrss is in KiB on Linux
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_a_tiny_file_asking_for_a_huge_model_is_refused_before_allocating(tmp_path):
    # width 256 would allocate about 2 GB of parameters before the weights were looked at.
    path = write_payload(tmp_path / "bomb.pt", model_kwargs={"width": 256})
    assert path.stat().st_size < 4096
    script = tmp_path / "peak.py"
    script.write_text(PEAK_RSS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(path)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    message, grown = done.stdout.strip().splitlines()
    assert str(path) in message and "do not fit resnet_seg(width=256)" in message
    assert "missing (first 'stem.0.weight')" in message
    assert int(grown) < 200 * 2**20, f"loading grew the peak RSS by {int(grown) / 2**20:.0f} MiB"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [({"width": 2**40}, "impossible sizes"), ({"width": 2**22}, "do not fit")],
    ids=["beyond-int64", "petabytes"],
)
def test_absurd_widths_are_one_line(tmp_path, kwargs, expected):
    path = write_payload(tmp_path / "bomb.pt", model_kwargs=kwargs)
    with pytest.raises(CheckpointError, match=expected) as info:
        load_model(path)
    single_line_error(info, path)


def test_a_model_far_larger_than_its_weights_is_refused(tmp_path, monkeypatch):
    # Names and shapes match, but the model keeps a huge buffer outside its state dict.
    class Hoarder(torch.nn.Module):
        def __init__(self, width: int = 2):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, width, 1)
            self.register_buffer("cache", torch.zeros(2**30), persistent=False)

    from vessel_lens.models import registry

    monkeypatch.setitem(registry.MODELS, "hoarder", Hoarder)
    state = {f"conv.{k}": v for k, v in torch.nn.Conv2d(1, 2, 1).state_dict().items()}
    path = write_payload(tmp_path / "m.pt", "hoarder", {}, state)
    with pytest.raises(CheckpointError, match="would hold 1,073,741,828 values") as info:
        load_model(path)
    single_line_error(info, path)


def test_a_tensor_of_another_shape_is_named(tmp_path):
    state = trained_model().state_dict()
    state["head.weight"] = state["head.weight"][:, :2]
    path = write_payload(tmp_path / "m.pt", state_dict=state)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = single_line_error(info, path)
    assert "'head.weight' is (2, 2, 3, 3) in the file but (2, 4, 3, 3) in the model" in message


class RunsAShellCommand:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_a_pickle_that_runs_a_command_is_named_unsafe(tmp_path, capfd):
    path = tmp_path / "evil.pt"
    torch.save({"format": "vessel-lens-checkpoint", "state_dict": RunsAShellCommand()}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = single_line_error(info, path)
    assert re.search(r"unsafe: the file asks to import (posix|nt)\.system \(", message), message
    assert "this must never run" not in capfd.readouterr().out


@pytest.mark.parametrize(
    "value", [3, [1.0, 2.0], "weights", None], ids=["int", "list", "str", "none"]
)
def test_state_dict_values_that_are_not_tensors_are_one_line(tmp_path, value):
    state = trained_model().state_dict()
    state["head.bias"] = value
    path = write_payload(tmp_path / "m.pt", state_dict=state)
    with pytest.raises(CheckpointError, match=r"entry 'head\.bias' holds .*, not a tensor") as info:
        load_model(path)
    single_line_error(info, path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("half", [False, True], ids=["float32", "float16"])
def test_weights_holding_nan_or_inf_are_refused(tmp_path, bad, half):
    model = trained_model()
    with torch.no_grad():
        model.encoder[1].conv2.weight[0, :3] = bad
        model.head.weight[1, 0, 0, 0] = bad
    path = save_checkpoint(tmp_path / "m.pt", model, "resnet_seg", {"width": WIDTH}, half=half)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = single_line_error(info, path)
    assert "2 weight tensor(s) hold NaN or inf" in message
    assert "first 'encoder.1.conv2.weight': 27 of 2,304 values" in message


def test_evaluate_refuses_nan_weights_with_one_line(tmp_path, make_dataset, capsys):
    from vessel_lens.cli import main

    model = trained_model()
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    path = save_checkpoint(tmp_path / "m.pt", model, "resnet_seg", {"width": WIDTH})
    data = make_dataset(count=2, size=(20, 20))
    out = tmp_path / "evaluation"
    arguments = [
        "--checkpoint",
        str(path),
        "--data",
        str(data),
        "--split",
        "all",
        "--out",
        str(out),
    ]
    status = main(["evaluate", *arguments])
    err = capsys.readouterr().err
    assert status == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'head.bias'" in lines[0]
    assert not out.exists()
