"""The app under load, short CI variant: ``benchmarks/app_load.py`` with 3 users for 10 s
against a server process serving a width-1 model on two synthetic 512x512 images.

The full run (10 users, 60 s, VessMAP) is recorded in benchmarks/RESULTS.md. Bounds here are
generous on purpose (the machine is shared and may be busy) but can still fail:

- memory: the warm-up opens both images and hovers 30 pixels in each, which fills the
  budget (``--cache-mb 96``: both 29 MiB engines and 24 of the 1 MiB gradient maps, the most
  their cache keeps; the receptive field of a 512x512 view would need about 149 MiB with this
  model, more than the budget, so the page shows none and says so). From then on the caches
  cannot grow, and the server's resident set may grow by at most 64 MiB, for the hovers'
  reserved working memory (10 MiB each, within the budget) and the answers being built;
  measured here 17-31 MiB. (When the receptive field was reserved as much as a view's
  preparation, a quarter of what it takes, the budget evicted it under load and hovers
  rebuilt it, 3 s and 119 MiB each: 94-117 MiB, and hovers took 6-9 s at p95.)
  Every hover makes a new 1 MiB map, so unbounded caches would break the bound after about
  64 hovers: the run goes on past its 10 s until 160 hovers were answered (a busy machine
  answers fewer in 10 s) and the test checks that more than 80 were made (measured 250-280; with
  ``--cache-mb 4096`` the same run grew by 252 MiB). The server runs with
  ``MALLOC_ARENA_MAX=2`` so that glibc's per-thread arenas (the server starts a thread per
  connection) do not add their own retained memory (70-170 MiB without it) to the figure.
- latency: p95 under 5 s, five times the issue's 1 s target for the full run (measured about
  0.1 s here); it catches requests queued behind a lock or rebuilding an engine per hover.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dash")

from tests.helpers import tiny_app_files
from vessel_lens.app import testing

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "app_load.py"
MARGIN_MIB = 64
MIN_HOVERS = 80
P95_LIMIT_MS = 5000


@pytest.fixture(scope="module")
def load_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-load")
    checkpoint, _, _ = tiny_app_files(root, seed=1, size=512, count=2, width=1)
    command = [
        *(sys.executable, str(SCRIPT), "--checkpoint", str(checkpoint)),
        *("--data", str(root / "data"), "--users", "3", "--duration", "10", "--images", "2"),
        *("--min-hovers", str(2 * MIN_HOVERS)),
        *("--cache-mb", "96", "--warm-up-hovers", "30", "--malloc-arenas", "2"),
        *("--device", "cpu", "--json", str(root / "result.json")),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert (root / "result.json").exists(), completed.stderr[-3000:]
    return completed, json.loads((root / "result.json").read_text())


def rows(result: dict) -> dict[str, dict]:
    return {row["kind"]: row for row in result["rows"]}


def test_every_request_succeeds(load_run):
    completed, result = load_run
    assert result["errors"] == [] and result["warm_up_errors"] == []
    assert completed.returncode == 0, completed.stdout[-3000:]
    for kind in ("hover", "view", "input", "map", "threshold", "threshold-pixel"):
        assert rows(result)[kind]["requests"] > 0, kind
    assert result["server_tracebacks"] == 0, result["server_log_tail"]
    assert result["still_serving"]


def test_every_malformed_body_gets_400(load_run):
    _, result = load_run
    statuses = {(m["category"], m["status"]) for m in result["malformed"]}
    assert {status for _, status in statuses} == {400}
    assert {c for c, _ in statuses} == {"broken-json", "wrong-ids", "wrong-types", "huge-numbers"}
    sample = testing.malformed_bodies(
        {"output": "o", "outputs": {"id": "o"}, "inputs": [{}, {}], "state": [{}]}
    )
    assert sum(m["count"] for m in result["malformed"]) >= len(sample)


def test_absurd_values_get_answers_not_errors(load_run):
    _, result = load_run
    assert set(result["bad_values"]) <= {"200", "204"}
    assert sum(result["bad_values"].values()) >= len(testing.bad_pixel_values({}))


def test_memory_stays_bounded_after_warm_up(load_run):
    _, result = load_run
    memory = result["memory_mib"]
    if memory["warm"] is None:
        pytest.skip("no /proc/<pid>/status on this system: memory not measured")
    assert rows(result)["hover"]["requests"] > MIN_HOVERS
    assert memory["max_during_load"] - memory["warm"] < MARGIN_MIB, memory


def test_latency_stays_far_from_a_stall(load_run):
    _, result = load_run
    assert rows(result)["all"]["p95_ms"] < P95_LIMIT_MS
