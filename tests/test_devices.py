"""Device selection: ``auto`` falls back to the CPU; unusable devices are configuration errors."""

from __future__ import annotations

import pytest
import torch

from vessel_lens.devices import resolve_device
from vessel_lens.errors import ConfigError


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def one_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize("spec", ["auto", None, ""])
def test_auto_is_cpu_without_cuda(no_cuda, spec):
    assert resolve_device(spec) == torch.device("cpu")


def test_auto_is_cuda_when_available(one_cuda):
    assert resolve_device("auto") == torch.device("cuda")


def test_auto_on_this_machine_is_a_usable_device():
    device = resolve_device("auto")
    torch.zeros(1, device=device)
    if not torch.cuda.is_available():
        assert device.type == "cpu"


@pytest.mark.parametrize("spec", ["cpu", torch.device("cpu")])
def test_cpu(spec):
    assert resolve_device(spec) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_config_error(no_cuda, spec):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device(spec)


def test_cuda_index_beyond_the_devices_is_a_config_error(one_cuda):
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="only 1 CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("spec", ["tpu", "gpu", "banana", "cuda:x"])
def test_unknown_devices_are_config_errors_naming_the_choices(spec):
    with pytest.raises(ConfigError, match="cpu") as info:
        resolve_device(spec)
    assert repr(spec) in str(info.value)


@pytest.mark.parametrize("spec", ["meta", "mps"])
def test_devices_other_than_cpu_and_cuda_are_refused(spec):
    with pytest.raises(ConfigError, match="only cpu and cuda are supported"):
        resolve_device(spec)
