"""Checkpoints: a file that rebuilds its model alone, and a clear error for every bad file."""

from __future__ import annotations

import collections
import pickle

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
