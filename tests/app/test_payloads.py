"""Bad input to the app. Callback requests (Flask test client): 400 for a body that is not a
callback request of the app, and for a well-formed one whatever values it carries, an answer
for the page (200 with a message, or 204) — never a 500, an "internal error" or a traceback in
the server log. The command: an address it cannot listen on is one ``error:`` line."""

from __future__ import annotations

import json
import logging
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("dash")

from tests.helpers import tiny_app_files
from vessel_lens.app import AppConfig, create_app, testing
from vessel_lens.cli import main

PIXEL = "graph-gradient.figure"


class Records(logging.Handler):
    """Log records of the app at WARNING and above, kept for the assertions."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-payloads")
    checkpoint, _, _ = tiny_app_files(root, seed=5, size=32, count=2, width=2)
    return checkpoint, root / "data"


@pytest.fixture(scope="module")
def page(files):
    checkpoint, data = files
    app = create_app(AppConfig(checkpoints=[str(checkpoint)], data=str(data), upload_mb=1))
    client = app.server.test_client()
    dependencies = client.get(testing.DEPENDENCIES).get_json()
    values = testing.layout_values(client.get(testing.LAYOUT).get_json())
    body = testing.callback_request(dependencies, "view-store.data", values)
    view = client.post(testing.UPDATE, json=body).get_json()["response"]["view-store"]["data"]
    values.update({"view-store.data": view, "pixel-store.data": view["pixel"]})
    values["layer.value"] = "probability"
    records = Records()
    logger = logging.getLogger("vessel_lens")
    logger.addHandler(records)
    yield client, dependencies, values, view, records
    logger.removeHandler(records)
    app.vessel_lens_state.jobs.shutdown(wait=10)


def post(client, body: bytes):
    return client.post(testing.UPDATE, data=body, content_type="application/json")


@pytest.mark.parametrize(
    "output", [PIXEL, "view-store.data", "graph-map.figure", "graph-input.figure"]
)
def test_malformed_bodies_get_400_with_a_reason(page, output):
    client, dependencies, values, _, records = page
    valid = testing.callback_request(dependencies, output, values)
    assert post(client, json.dumps(valid).encode()).status_code == 200
    cases = testing.malformed_bodies(valid)
    assert {c for c, _, _ in cases} == {"broken-json", "wrong-ids", "wrong-types", "huge-numbers"}
    for category, label, body in cases:
        response = post(client, body)
        assert response.status_code == 400, (category, label, response.get_data()[:200])
        reason = response.get_json()["error"]
        assert reason.startswith("bad callback request") and "\n" not in reason
    assert records.errors() == []


def test_a_deeply_nested_body_is_refused_not_a_crash(page):
    client, *_ = page
    response = post(client, b"[" * 100_000)
    assert response.status_code == 400
    assert "nests too deeply" in response.get_json()["error"]


def test_inputs_must_be_the_callbacks_own(page):
    client, dependencies, values, _, _ = page
    body = testing.callback_request(dependencies, PIXEL, values)
    body["inputs"][0], body["inputs"][1] = body["inputs"][1], body["inputs"][0]
    response = client.post(testing.UPDATE, json=body)
    assert response.status_code == 400
    assert "pixel-store.data, threshold-store.data" in response.get_json()["error"]


def test_absurd_pixel_values_become_messages(page):
    client, dependencies, _, view, records = page
    for label, overrides in testing.bad_pixel_values(view):
        body = testing.pixel_request(dependencies, view, (3, 4), overrides)
        response = client.post(testing.UPDATE, json=body)
        assert response.status_code in (200, 204), label
        if response.status_code == 200:
            message = response.get_json()["response"]["message"]["children"]
            assert "internal error" not in message, (label, message)
    assert records.errors() == []


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("pixel-store.data", {"row": 10**400, "col": 3}, "lies outside"),
        ("threshold-store.data", {"fraction": 10**400}, "too large"),
        ("overlays.value", [["bbox"], {"a": 1}], ""),
    ],
    ids=["huge-row", "huge-threshold", "unhashable-overlays"],
)
def test_values_that_used_to_raise_inside_a_callback(page, field, value, expected):
    client, dependencies, _, view, records = page
    body = testing.pixel_request(dependencies, view, (3, 4), {field: value})
    response = client.post(testing.UPDATE, json=body)
    assert response.status_code == 200
    message = response.get_json()["response"]["message"]["children"]
    assert expected in message and "internal error" not in message
    assert records.errors() == []


@pytest.mark.parametrize(
    ("output", "field", "value"),
    [
        ("threshold-store.data", "threshold-slider.value", 10**400),
        ("threshold-store.data", "threshold-input.value", 10**400),
        ("global-store.data", "model.value", ["m0"]),
        ("graph-input.figure", "overlays.value", [[["x"]]]),
    ],
    ids=["huge-slider", "huge-input", "unhashable-model", "unhashable-overlays"],
)
def test_huge_or_unhashable_values_in_other_callbacks(page, output, field, value):
    client, dependencies, values, _, records = page
    body = testing.callback_request(dependencies, output, {**values, field: value}, field)
    response = client.post(testing.UPDATE, json=body)
    assert response.status_code == 200
    assert "internal error" not in response.get_data(as_text=True)
    assert records.errors() == []


def server_callbacks(dependencies: list[dict]) -> list[tuple[str, list[str], list[str]]]:
    """(output, input names, input and state names) of every callback run by the server."""
    found = []
    for spec in dependencies:
        if spec.get("clientside_function") or spec["output"] == "pixel-store.data":
            continue
        inputs = [f"{i['id']}.{i['property']}" for i in spec["inputs"]]
        found.append(
            (spec["output"], inputs, inputs + [f"{s['id']}.{s['property']}" for s in spec["state"]])
        )
    return found


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(19, 400).map(lambda exponent: (-1) ** exponent * 10**exponent)
    | st.floats()
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["row", "col", "view", "key", "fraction", "a"]), children)
    ),
    max_leaves=12,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), value=JSON_VALUES)
def test_any_value_anywhere_never_breaks_a_callback(page, data, value):
    client, dependencies, values, _, records = page
    output, inputs, names = data.draw(st.sampled_from(server_callbacks(dependencies)))
    field = data.draw(st.sampled_from(names))
    changed = data.draw(st.sampled_from(inputs))
    output = output.strip(".").split("...")[0].split("@")[0]
    body = testing.callback_request(dependencies, output, {**values, field: value}, changed)
    before = len(records.errors())
    response = client.post(testing.UPDATE, json=body)
    # 400: Dash itself refused the values (e.g. options that are not a list of options)
    assert response.status_code in (200, 204, 400), response.get_data()[:300]
    assert "internal error" not in response.get_data(as_text=True)
    assert records.errors()[before:] == []


def test_a_port_in_use_is_one_error_line(files, capsys):
    checkpoint, data = files
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(
            ["app", "--checkpoint", str(checkpoint), "--data", str(data), "--port", str(port)]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith(
        f"error: --host 127.0.0.1 --port {port}: cannot listen"
    )
