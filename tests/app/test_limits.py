"""The app's limits through HTTP (Flask test client) and its state: Host allow-list and
security headers, a bounded queue that answers "busy" or "waited" in the page, slow methods as
cancellable background tasks in bounded batches, and views, uploads and caches within the
memory budget."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("dash")
pytest.importorskip("captum")

from tests.helpers import tiny_app_files
from vessel_lens.app import AppConfig, create_app, handlers, testing
from vessel_lens.app.methods import discover_methods
from vessel_lens.app.pixel import analyse_pixel, parse_threshold
from vessel_lens.app.state import AppState
from vessel_lens.app.testing import UPDATE, callback_request
from vessel_lens.data import write_synthetic_dataset
from vessel_lens.errors import ConfigError, VesselLensError
from vessel_lens.interpret.attribution.methods import attribute
from vessel_lens.interpret.attribution.targets import pixel_target
from vessel_lens.models import create_model, save_checkpoint

SIZE = 32


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-limits")
    checkpoint, _, model = tiny_app_files(root, seed=5, size=SIZE, count=2)
    write_synthetic_dataset(root / "large", count=1, size=512, progress=False)
    return SimpleNamespace(root=root, checkpoint=str(checkpoint), model=model)


@pytest.fixture(scope="module")
def served(files):
    config = AppConfig(
        checkpoints=[files.checkpoint],
        data=str(files.root / "data"),
        workers=1,
        queue=1,
        queue_timeout=2.0,
    )
    app = create_app(config)
    client = app.server.test_client()
    dependencies = client.get(testing.DEPENDENCIES).get_json()
    state = app.vessel_lens_state
    yield SimpleNamespace(app=app, client=client, dependencies=dependencies, state=state)
    state.shutdown(wait=10)


@pytest.fixture(scope="module")
def plain(files):
    """The app with its default options (the Host tests need nothing else)."""
    app = create_app(AppConfig(checkpoints=[files.checkpoint], data=str(files.root / "data")))
    yield SimpleNamespace(app=app, client=app.server.test_client())
    app.vessel_lens_state.jobs.shutdown(wait=10)


class Occupied:
    """Holds every worker of the app's queue (and ``waiters`` places in its queue) until the
    block ends: the server looks busy with long computations."""

    def __init__(self, state, waiters: int = 0):
        self.queue, self.waiters = state.work, waiters
        self.release = threading.Event()
        self.threads: list[threading.Thread] = []

    def _hold(self) -> None:
        with self.queue.slot(0, "a long computation", patient=True):
            self.release.wait(30)

    def __enter__(self) -> Occupied:
        for i in range(self.queue.workers + self.waiters):
            thread = threading.Thread(target=self._hold)
            thread.start()
            self.threads.append(thread)
            if i < self.queue.workers:
                wait_until(lambda count=i + 1: self.queue.running == count)
        wait_until(lambda: self.queue.waiting() == self.waiters)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(30)


def wait_until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def view_data(state) -> dict:
    view, _ = state.view(state.image_options()[0]["value"], "full")
    return {"view": view.as_dict(), "pixel": {"row": 3, "col": 4}}


def pixel_request(served, row: int, col: int, **overrides) -> dict:
    values = testing.pixel_values(view_data(served.state), (row, col), overrides)
    return callback_request(
        served.dependencies, "graph-gradient.figure", values, "pixel-store.data"
    )


def click(served, row: int, col: int, method: str, **overrides) -> dict:
    pixel = {"row": row, "col": col, "view": view_data(served.state)["view"], "clicked": True}
    body = pixel_request(
        served, row, col, **{"method.value": method, "pixel-store.data": pixel, **overrides}
    )
    response = served.client.post(UPDATE, json=body)
    assert response.status_code == 200
    return response.get_json()["response"]


def poll(served, task: dict, cancel: bool = False) -> dict:
    values = {"task-store.data": task, "task-poll.n_intervals": 1, "task-cancel.n_clicks": 1}
    changed = "task-cancel.n_clicks" if cancel else "task-poll.n_intervals"
    body = callback_request(served.dependencies, "task-done.data", values, changed)
    response = served.client.post(UPDATE, json=body)
    assert response.status_code == 200
    return response.get_json()["response"]


# -- Host header and response headers ----------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8050", "127.0.0.2:8050"])
def test_requests_for_another_host_get_403(plain, host):
    for response in (
        plain.client.get("/", headers={"Host": host}),
        plain.client.post(UPDATE, json={}, headers={"Host": host}),
    ):
        assert response.status_code == 403
        assert "--allow-host" in response.get_data(as_text=True)
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("host", ["localhost", "localhost:8050", "127.0.0.1:8050", "[::1]:8050"])
def test_requests_for_this_machine_are_served(plain, host):
    assert plain.client.get("/", headers={"Host": host}).status_code == 200


def test_allowed_host_names_are_served(files):
    config = AppConfig(
        checkpoints=[files.checkpoint], data=str(files.root / "data"), allow_hosts=["Lab.example"]
    )
    client = create_app(config).server.test_client()
    assert client.get("/", headers={"Host": "lab.example:8050"}).status_code == 200
    assert client.get("/", headers={"Host": "other.example"}).status_code == 403
    anyone = AppConfig(checkpoints=[files.checkpoint], data=str(files.root / "data"))
    anyone.allow_hosts = ["*"]
    assert (
        create_app(anyone)
        .server.test_client()
        .get("/", headers={"Host": "other.example"})
        .status_code
        == 200
    )
    with pytest.raises(ConfigError, match="--allow-host"):
        AppConfig(checkpoints=[files.checkpoint], allow_hosts=["http://x/"])


def test_every_response_forbids_sniffing_and_framing(plain):
    dependencies = plain.client.get(testing.DEPENDENCIES).get_json()
    state = plain.app.vessel_lens_state
    values = testing.pixel_values(view_data(state), (5, 6))
    body = callback_request(dependencies, "graph-gradient.figure", values, "pixel-store.data")
    for response in (
        plain.client.get("/"),
        plain.client.get(testing.LAYOUT),
        plain.client.post(UPDATE, json=body),
        plain.client.post(UPDATE, data=b"not json", content_type="application/json"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"


# -- the queue: bounded, timed out, answered in the page -------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("queue", 0, "--queue 0: at least 1"),
        ("queue_timeout", 0, r"--queue-timeout 0: must be in \(0, 3600\]"),
        ("queue_timeout", 1e9, "--queue-timeout"),
    ],
)
def test_queue_options_are_checked(files, option, value, expected):
    with pytest.raises(ConfigError, match=expected):
        AppConfig(checkpoints=[files.checkpoint], **{option: value})


def test_a_full_queue_answers_busy_in_the_page(served):
    with Occupied(served.state, waiters=1):
        started = time.monotonic()
        response = served.client.post(UPDATE, json=pixel_request(served, 7, 7))
        assert time.monotonic() - started < 5
    assert response.status_code == 200
    message = response.get_json()["response"]["message"]["children"]
    assert "the server is busy (1 running, 1 waiting, at most 1 may wait)" in message


def test_a_request_that_waits_too_long_is_answered_with_a_message(served):
    with Occupied(served.state):
        response = served.client.post(UPDATE, json=pixel_request(served, 8, 8))
    message = response.get_json()["response"]["message"]["children"]
    assert "waited 2 s for a free worker" in message


# -- slow methods: background tasks with a running line, a cancel and a result ----------------


def test_a_slow_method_shows_that_it_runs_then_its_result(served):
    from vessel_lens.app.layout import PANELS_CURRENT, PANELS_STALE

    answer = click(served, 9, 10, "integrated_gradients")
    assert "computing integrated gradients" in answer["task-status"]["children"]
    assert answer["task-bar"]["className"] == "task-bar running"
    assert answer["task-cancel"]["style"]["display"] != "none"
    assert answer["pixel-panels"]["className"] == PANELS_STALE  # the old result, greyed
    assert answer["task-poll"]["disabled"] is False and "graph-gradient" not in answer
    task = answer["task-store"]["data"]
    for _ in range(600):
        polled = poll(served, task)
        if "task-done" in polled:
            break
        assert "computing integrated gradients" in polled["task-status"]["children"]
        time.sleep(0.05)
    assert polled["task-done"]["data"] == task and polled["task-poll"]["disabled"] is True
    shown = click(
        served, 9, 10, "integrated_gradients", **{"task-done.data": task, "task-store.data": task}
    )
    assert (
        "integrated_gradients of pixel (9, 10)"
        in shown["graph-gradient"]["figure"]["layout"]["title"]["text"]
    )
    assert shown["pixel-panels"]["className"] == PANELS_CURRENT
    assert shown["message"]["children"] == "" and shown["task-status"]["children"] == ""
    assert shown["task-bar"]["className"] == "task-bar"


def test_a_hover_with_a_slow_method_greys_the_old_result_and_says_to_click(served):
    from vessel_lens.app.layout import PANELS_STALE

    body = pixel_request(served, 4, 4, **{"method.value": "occlusion"})
    answer = served.client.post(UPDATE, json=body).get_json()["response"]
    assert answer["message"]["children"] == "click a pixel to compute occlusion"
    assert answer["pixel-panels"]["className"] == PANELS_STALE


def test_a_waiting_task_can_be_cancelled(served):
    with Occupied(served.state):
        answer = click(served, 11, 12, "occlusion")
        task = answer["task-store"]["data"]
        assert "waiting for a free worker" in answer["task-status"]["children"]
        cancelling = poll(served, task, cancel=True)
        assert cancelling["task-status"]["children"].startswith("cancelling occlusion")
        wait_until(lambda: served.state.tasks.get(task["id"]).state == "cancelled")
    ended = poll(served, task)
    assert ended["task-status"]["children"].startswith("occlusion: cancelled after")
    assert ended["task-bar"]["className"] == "task-bar problem"
    assert ended["task-poll"]["disabled"] is True and "task-done" not in ended


def test_a_task_that_waits_too_long_says_so(served):
    with Occupied(served.state):
        task = click(served, 12, 13, "saliency")["task-store"]["data"]
        wait_until(lambda: served.state.tasks.get(task["id"]).state == "failed")
    text = poll(served, task)["task-status"]["children"]
    assert "waited 2 s for a free worker" in text


def test_a_full_task_board_refuses_with_a_message(served):
    assert served.state.tasks.max_active == 2  # --workers 1 + --queue 1
    with Occupied(served.state):
        first = click(served, 1, 1, "smoothgrad")
        second = click(served, 1, 2, "smoothgrad", **{"task-store.data": None})
        third = click(served, 1, 3, "smoothgrad", **{"task-store.data": None})
        for answer in (first, second):
            served.state.tasks.cancel(answer["task-store"]["data"]["id"])
    assert third["task-store"]["data"] is None and third["task-bar"]["className"].endswith(
        "problem"
    )
    assert (
        "the server is busy: 2 slow computations are waiting or running"
        in third["task-status"]["children"]
    )


def test_clicking_another_pixel_cancels_the_pages_previous_task(served):
    with Occupied(served.state):
        first = click(served, 2, 2, "gradient_shap")["task-store"]["data"]
        click(served, 2, 3, "gradient_shap", **{"task-store.data": first})
        assert served.state.tasks.get(first["id"]).cancel.is_set()


# -- batches ---------------------------------------------------------------------------------


class Recording(torch.nn.Module):
    """The model, noting the batch size of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, images):
        self.batches.append(int(images.shape[0]))
        return self.model(images)


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "smoothgrad"])
def test_slow_methods_run_in_bounded_batches_with_the_librarys_result(files, method):
    from vessel_lens.app import batched
    from vessel_lens.app.work import WorkQueue

    state = AppState(AppConfig(checkpoints=[files.checkpoint], data=str(files.root / "data")))
    image = torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    target = pixel_target(10, 20, (SIZE, SIZE))
    costs = state.costs("m0")
    pixels = SIZE * SIZE
    budget = batched.BATCH_SHARE * costs.samples(pixels, 3)  # room for 3 samples a batch
    plan = batched.plan(method, SIZE, SIZE, 1, costs, budget)
    assert plan.nbytes <= budget // batched.BATCH_SHARE
    recording = Recording(files.model)
    queue = WorkQueue(1, budget)
    fractions: list[float] = []
    with queue.slot(plan.nbytes, method) as slot:
        result = batched.run(plan, recording, image, target, slot, fractions.append)
    assert max(recording.batches) <= 3 and len(recording.batches) >= 2
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)
    expected = attribute(files.model, image, target, method=method)
    torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-7)


def test_a_cancelled_run_stops_at_its_next_batch(files):
    from vessel_lens.app import batched
    from vessel_lens.app.work import Slot, WorkQueue

    state = AppState(AppConfig(checkpoints=[files.checkpoint], data=str(files.root / "data")))
    plan = batched.plan("occlusion", SIZE, SIZE, 1, state.costs("m0"), 1 << 30)
    recording = Recording(files.model)
    cancel = threading.Event()
    queue = WorkQueue(1, 1 << 30)

    def progress(fraction: float) -> None:
        if fraction > 0:
            cancel.set()

    image = torch.rand(1, SIZE, SIZE)
    with (
        pytest.raises(VesselLensError, match="cancelled"),
        queue.slot(plan.nbytes, "occlusion", cancel) as slot,
    ):
        assert isinstance(slot, Slot)
        batched.run(plan, recording, image, (5, 5), slot, progress)
    assert len(recording.batches) == 1 < plan.passes


# -- memory: views, uploads and caches within the budget --------------------------------------


@pytest.fixture(scope="module")
def small_budget(files):
    """--cache-mb 64: a width-4 engine takes about 0.4 KiB a pixel, so a 512x512 view does
    not fit the 32 MiB one view may take."""
    config = AppConfig(
        checkpoints=[files.checkpoint], data=str(files.root / "large"), cache_mb=64, max_side=512
    )
    state = AppState(config)
    yield state
    state.shutdown(wait=10)


def test_a_view_too_large_for_the_budget_opens_as_the_largest_crop_that_fits(small_budget):
    state = small_budget
    key = state.image_options()[0]["value"]
    view, note = state.view(key, "full")
    assert view.height < 512 and "--cache-mb 64" in note
    side = state.largest_side(["m0"])
    assert side >= 64 and (view.height, view.width) == (side, side)
    assert f"showing a centred {side}x{side} crop" in note
    crop, note = state.view(key, "crop", 500, 0, 0)
    assert crop.height == side and "--cache-mb 64" in note
    state.engine("m0", view)
    assert state.work.peak_accounted <= state.work.budget
    too_large = type(view)(key, 0, 0, 512, 512)
    with pytest.raises(ConfigError, match=r"512x512 view needs about .*--cache-mb 64 allows"):
        state.engine("m0", too_large)


def test_prepared_views_stay_within_the_budget(small_budget):
    state = small_budget
    key = state.image_options()[0]["value"]
    side = state.largest_side(["m0"])  # each engine takes most of what a view may take
    for top in range(0, 5 * 16, 16):
        view, _ = state.view(key, "crop", side, top, 0)
        state.gradient("m0", view, 1, 1)
        assert state.work.held() <= state.work.budget
    assert len(state.engines) < 5  # the least recently used were dropped
    assert state.work.peak_accounted <= state.work.budget


def test_an_upload_too_large_to_decode_within_the_budget_is_refused(small_budget):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((2400, 2400), dtype=np.uint8)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    with pytest.raises(VesselLensError, match=r"decoding black\.png needs about .*--cache-mb 64"):
        handlers.handle_upload(small_budget, url, "black.png")


def test_a_receptive_field_larger_than_the_budget_is_refused_with_a_note(files):
    """A width-1 model's receptive field takes about four times its prepared view: at
    384x384 the view fits --cache-mb 64 (21 MiB) but the field (about 84 MiB) does not; it
    used to be computed anyway, reserving only what the view's preparation takes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = create_model("resnet_seg", width=1, in_channels=1)
    checkpoint = save_checkpoint(files.root / "w1.pt", model, "resnet_seg", {"width": 1})
    write_synthetic_dataset(files.root / "w1-data", count=1, size=384, progress=False)
    config = AppConfig(checkpoints=[str(checkpoint)], data=str(files.root / "w1-data"), cache_mb=64)
    state = AppState(config)
    try:
        key = state.image_options()[0]["value"]
        result = handlers.handle_view(state, key, "full", None, None, None, "m0", "none", None)
        assert (result["view"]["height"], result["view"]["width"]) == (384, 384)
        assert re.search(r"receptive field not shown: .* needs about \d+ MiB", result["note"])
        assert "--cache-mb 64" in result["note"]
        view = handlers.view_from_data(state, result["view"])
        assert state.receptive_box("m0", view, 10, 10) is None
        threshold = parse_threshold(0.01, "pixel")
        discover_methods()
        analysis = analyse_pixel(state, "m0", view, 10, 10, threshold)
        assert analysis.field_box is None and analysis.stats is not None
        assert state.work.peak_accounted <= state.work.budget
    finally:
        state.shutdown(wait=10)
