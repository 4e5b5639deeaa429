"""The app's HTTP surface (Flask test client) and its command line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import typer

pytest.importorskip("dash")

from tests.helpers import tiny_app_files
from vessel_lens.app import AppConfig, create_app, testing
from vessel_lens.app.figures import decode_typed_array
from vessel_lens.app.testing import UPDATE, callback_request
from vessel_lens.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-server")
    checkpoint, _, _ = tiny_app_files(root, seed=3, size=32, count=2)
    config = AppConfig(checkpoints=[str(checkpoint)], data=str(root / "data"), upload_mb=1)
    app = create_app(config)
    client = app.server.test_client()
    dependencies = client.get("/_dash-dependencies").get_json()
    yield SimpleNamespace(
        app=app, client=client, dependencies=dependencies, checkpoint=checkpoint, root=root
    )
    app.vessel_lens_state.jobs.shutdown(wait=10)


def request_for(served, output_fragment: str, values: dict[str, object]) -> dict:
    """A callback request body as the browser would send it (values by 'id.property')."""
    return callback_request(served.dependencies, output_fragment, values)


def test_page_is_served_without_external_resources(served):
    response = served.client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<title>vessel-lens</title>" in html
    assert "https://" not in html and "http://" not in html.replace("http://www.w3.org", "")
    layout = json.dumps(served.client.get("/_dash-layout").get_json())
    for component in ("graph-input", "graph-gradient", "graph-zoom", "threshold-slider", "upload"):
        assert f'"{component}"' in layout


def view_store(served) -> dict:
    state = served.app.vessel_lens_state
    key = state.image_options()[0]["value"]
    view, _ = state.view(key, "full")
    return {"view": view.as_dict(), "pixel": {"row": 3, "col": 4}}


def pixel_values(served, **override) -> dict[str, object]:
    return testing.pixel_values(view_store(served), (5, 9), override)


def test_a_hover_request_returns_the_gradient_figure_and_numbers(served):
    body = request_for(served, "graph-gradient.figure", pixel_values(served))
    response = served.client.post(UPDATE, json=body)
    assert response.status_code == 200
    result = response.get_json()["response"]
    z = decode_typed_array(result["graph-gradient"]["figure"]["data"][0]["z"])
    state = served.app.vessel_lens_state
    view, _ = state.view(state.image_options()[0]["value"], "full")
    expected = state.gradient("m0", view, 5, 9)[0].sum(0).numpy()
    assert z.shape == (32, 32) and (z == expected).all()
    assert "pixel count" in json.dumps(result["stats"]["children"])
    assert result["message"]["children"] == ""


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"threshold-store.data": {"fraction": "lots"}}, "not a number"),
        ({"threshold-mode.value": "percent"}, "threshold mode"),
        ({"model.value": "../../etc/passwd"}, "unknown model"),
        ({"view-store.data": {"view": {"key": "/etc/passwd"}}}, "unknown image"),
        ({"pixel-store.data": {"row": 999, "col": 0}}, "outside"),
        ({"method.value": 12}, "unknown method"),
    ],
)
def test_malformed_values_become_a_message_not_an_error(served, override, expected):
    body = request_for(served, "graph-gradient.figure", pixel_values(served, **override))
    response = served.client.post(UPDATE, json=body)
    assert response.status_code == 200
    assert expected in response.get_json()["response"]["message"]["children"]


def test_a_request_without_a_pixel_changes_nothing(served):
    body = request_for(
        served, "graph-gradient.figure", pixel_values(served, **{"pixel-store.data": "garbage"})
    )
    assert served.client.post(UPDATE, json=body).status_code == 204


@pytest.mark.parametrize(
    "mutate",
    [
        lambda body: "not json",
        lambda body: [],
        lambda body: {**body, "output": "nothing.here"},
        lambda body: {**body, "inputs": body["inputs"][:2]},
        lambda body: {**body, "inputs": ["x"] * len(body["inputs"])},
        lambda body: {**body, "state": None},
        lambda body: {**body, "outputs": {"id": "x"}},
        lambda body: {**body, "outputs": body["outputs"][:1]},
        lambda body: {**body, "changedPropIds": 5},
        lambda body: {k: v for k, v in body.items() if k != "inputs"},
    ],
)
def test_malformed_callback_requests_get_400(served, mutate):
    body = mutate(request_for(served, "graph-gradient.figure", pixel_values(served)))
    if isinstance(body, str):
        response = served.client.post(UPDATE, data=body, content_type="application/json")
    else:
        response = served.client.post(UPDATE, json=body)
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("bad callback request")


def test_oversized_requests_are_refused(served):
    response = served.client.post(UPDATE, data=b"x" * (3 * 2**20), content_type="application/json")
    assert response.status_code == 413


def test_a_bad_upload_is_reported_in_the_page(served):
    values = {
        "upload.contents": "data:image/png;base64,bm90IGFuIGltYWdl",
        "upload.filename": "a.png",
    }
    body = request_for(served, "upload-message.children", values)
    response = served.client.post(UPDATE, json=body)
    assert response.status_code == 200
    shown = response.get_json()["response"]["upload-message"]["children"]
    assert shown["props"]["className"] == "error"
    message = shown["props"]["children"]
    assert message.startswith("a.png: cannot read image") and "Traceback" not in message


def test_threshold_slider_and_number_stay_in_step(served):
    body = request_for(
        served,
        "threshold-store.data",
        {
            "threshold-slider.value": -1.0,
            "threshold-input.value": 0.01,
            "threshold-mode.value": "global",
        },
    )
    result = served.client.post(UPDATE, json=body).get_json()["response"]
    assert result["threshold-input"]["value"] == pytest.approx(0.1)
    assert result["threshold-store"]["data"] == {"fraction": pytest.approx(0.1)}
    assert "whole Jacobian" in result["threshold-help"]["children"]


# -- command line ----------------------------------------------------------------------------


def run_command(args: list[str]) -> object:
    from vessel_lens.cli.app import register

    typer_app = typer.Typer()
    register(typer_app)

    @typer_app.callback()
    def _root() -> None:
        """Root (so 'app' is a subcommand)."""

    command = typer.main.get_command(typer_app)
    return command.main(args=args, prog_name="vessel-lens", standalone_mode=False)


def test_cli_help_lists_the_options(capsys):
    run_command(["app", "--help"])
    out = capsys.readouterr().out
    for option in ("--checkpoint", "--compare", "--data", "--erf", "--host", "--port", "--debug"):
        assert option in out
    for option in ("--queue", "--queue-timeout", "--allow-host", "--cache-mb"):
        assert option in out
    assert "127.0.0.1" in out


def test_cli_refuses_a_missing_checkpoint_before_listening(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        run_command(["app", "--checkpoint", str(tmp_path / "missing.pt"), "--port", "0"])
    with pytest.raises(ConfigError, match="--erf"):
        run_command(["app", "--erf", str(tmp_path / "nothing"), "--port", "0"])


def test_cli_main_runs_the_app_command_when_wired(capsys, tmp_path):
    from vessel_lens.cli import build_app, main

    names = [c.name for c in build_app().registered_commands]
    if "app" not in names:
        pytest.skip("vessel_lens.cli.build_app does not register the app command yet")
    assert main(["app", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]


def test_importing_the_command_does_not_import_dash():
    code = (
        "import sys, vessel_lens.cli, vessel_lens.cli.app; "
        "print('dash' in sys.modules, 'vessel_lens.app' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_compute_global_max_also_computes_the_comparison_models(served):
    """In global mode model B's thresholds need B's own maximum: the button computes both."""
    state = served.app.vessel_lens_state
    body = request_for(
        served,
        "global-status.children",
        {"view-store.data": view_store(served), "model.value": "m0", "compare.value": "random"},
    )
    body["changedPropIds"] = ["global-compute.n_clicks"]
    response = served.client.post(UPDATE, json=body)
    assert response.status_code == 200
    view = state.view(state.image_options()[0]["value"], "full")[0]
    for _ in range(200):
        if all(state.global_max(m, view)[0] is not None for m in ("m0", "random")):
            break
        time.sleep(0.05)
    assert state.global_max("random", view)[0] is not None
    text = served.client.post(UPDATE, json=body).get_json()["response"]["global-status"]
    assert "A: global max" in text["children"] and "B: global max" in text["children"]


def gradient_query(served, **override) -> dict[str, object]:
    view = view_store(served)["view"]
    query = {"model": "m0", "row": 5, "col": 9, "clip": "1", **view, **override}
    return {k: v for k, v in query.items() if v is not None}


def test_the_gradient_route_sends_the_panels_map_as_float32(served):
    from urllib.parse import unquote

    import numpy as np

    from vessel_lens.app.figures import symmetric_limit
    from vessel_lens.app.handlers import view_from_data
    from vessel_lens.app.pixel import CLIP

    state = served.app.vessel_lens_state
    query = gradient_query(served)
    response = served.client.get("/_vessel_lens/gradient", query_string=query)
    assert response.status_code == 200, response.get_data(as_text=True)
    view = view_from_data(state, view_store(served)["view"])
    expected = state.gradient("m0", view, 5, 9)[0].float().sum(0).numpy()
    values = np.frombuffer(response.get_data(), dtype="<f4").reshape(view.height, view.width)
    np.testing.assert_array_equal(values, expected)
    assert float(response.headers["X-Limit"]) == symmetric_limit(expected, CLIP)
    assert (int(response.headers["X-Height"]), int(response.headers["X-Width"])) == (
        view.height,
        view.width,
    )
    assert unquote(response.headers["X-Title"]).startswith("d p(5, 9) / d input")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    unclipped = served.client.get(
        "/_vessel_lens/gradient", query_string=gradient_query(served, clip="0")
    )
    assert float(unclipped.headers["X-Limit"]) == symmetric_limit(expected)
    assert "clipped" not in unquote(unclipped.headers["X-Title"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"model": "m9"}, "unknown model"),
        ({"model": None}, "unknown model"),
        ({"row": "x"}, "row: expected a whole number"),
        ({"col": 10_000}, "outside the"),
        ({"row": -1}, "outside the"),
        ({"key": "nope"}, ""),
        ({"height": 10**6}, "out of range"),
        ({"compare": "m7"}, "unknown model"),
    ],
)
def test_the_gradient_route_refuses_bad_parameters_with_400(served, override, expected):
    response = served.client.get(
        "/_vessel_lens/gradient", query_string=gradient_query(served, **override)
    )
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert text.count("\n") == 1 and expected in text


def test_the_gradient_route_keeps_the_host_guard(served):
    response = served.client.get(
        "/_vessel_lens/gradient",
        query_string=gradient_query(served),
        headers={"Host": "evil.example"},
    )
    assert response.status_code == 403
