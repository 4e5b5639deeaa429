"""Importing any module does no work: no RNG seeding, no files written, nothing started."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

import vessel_lens

IMPORT_EVERYTHING = """
import importlib, json, os, pkgutil, random, sys
import numpy, torch

skip = set(sys.argv[1:])
before_files = sorted(os.listdir("."))
before_torch = torch.random.get_rng_state()
before_numpy = numpy.random.get_state()[1].copy()
before_random = random.getstate()

import pytest

import vessel_lens

failed, imported = [], []
def on_error(name):
    failed.append(name)

for info in pkgutil.walk_packages(vessel_lens.__path__, "vessel_lens.", onerror=on_error):
    if any(info.name == s or info.name.startswith(s + ".") for s in skip):
        continue
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except Exception as exc:
        failed.append(f"{info.name}: {type(exc).__name__}: {exc}")

print(json.dumps({
    "imported": imported,
    "failed": failed,
    "torch_rng_unchanged": bool(torch.equal(torch.random.get_rng_state(), before_torch)),
    "numpy_rng_unchanged": bool((numpy.random.get_state()[1] == before_numpy).all()),
    "random_unchanged": random.getstate() == before_random,
    "new_files": sorted(set(os.listdir(".")) - set(before_files)),
}))
"""


def optional_subpackages() -> list[str]:
    """Subpackages that need an optional extra that is not installed."""
    return [] if importlib.util.find_spec("dash") else ["vessel_lens.app"]


def test_importing_every_module_has_no_side_effects(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, *optional_subpackages()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == []
    assert {"vessel_lens.data.io", "vessel_lens.models.resnet_seg", "vessel_lens.cli"} <= set(
        report["imported"]
    )
    assert report["torch_rng_unchanged"], "some module seeds or draws from torch's global RNG"
    assert report["numpy_rng_unchanged"], "some module seeds or draws from numpy's global RNG"
    assert report["random_unchanged"], "some module seeds or draws from Python's random"
    assert report["new_files"] == []
    assert list(tmp_path.iterdir()) == []


def test_public_api_names_exist():
    for name in vessel_lens.__all__:
        assert hasattr(vessel_lens, name), name


HEAVY = ("torch", "numpy", "matplotlib", "zarr", "monai", "captum", "skimage", "scipy", "dash")
COMMAND_LINE_IMPORTS = """
import json, sys
from vessel_lens.cli import main
status = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(HEAVY)))
print(json.dumps({"status": status, "heavy": heavy}))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["jacobian", "--help"],
        ["erf", "--crop", "x"],
        ["app", "--help"],
    ],
)
def test_help_and_argument_errors_import_no_heavy_library(argv):
    """``--help`` and argument errors answer without importing torch (seconds on a busy CPU)."""
    code = COMMAND_LINE_IMPORTS.replace("HEAVY", repr(json.dumps(HEAVY)))
    result = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == (0 if "--help" in argv else 2), result.stderr
    assert report["heavy"] == [], f"{argv} imported {report['heavy']}"


def test_lazy_names_are_the_modules_objects_and_unknown_names_fail():
    from vessel_lens.models import source

    assert vessel_lens.load_model is source.load_model
    assert set(vessel_lens.__all__) <= set(dir(vessel_lens))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        vessel_lens.not_a_name  # noqa: B018
