"""Callback requests as the browser sends them, for tests and load benchmarks.

The page talks to the server through ``POST /_dash-update-component``: a JSON body naming one
callback's outputs and the current value of each of its inputs and states. These helpers build
such bodies from the app's own ``/_dash-dependencies`` (with the page's initial values from
``/_dash-layout``), so tests and benchmarks can drive the app without a browser, and they list
malformed bodies the server must refuse with 400. :class:`ServerProcess` runs ``vessel-lens
app`` in a child process whose memory can be read. Nothing here imports Dash.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
"""Launch arguments of a headless Chromium driven by Playwright (browser tests, screenshots):
no GPU, no sandbox, no background network traffic."""

UPDATE = "/_dash-update-component"
DEPENDENCIES = "/_dash-dependencies"
LAYOUT = "/_dash-layout"


def callback_spec(dependencies: list[dict], output: str) -> dict:
    """The first callback whose output string contains ``output`` (e.g. 'graph-map.figure')."""
    for spec in dependencies:
        if output in spec["output"]:
            return spec
    raise KeyError(f"no callback outputs {output!r}")


def callback_request(
    dependencies: list[dict],
    output: str,
    values: Mapping[str, object],
    changed: str | None = None,
) -> dict:
    """The request body for the callback that outputs ``output``.

    ``values`` maps 'id.property' to the value the page holds (missing ones are None);
    ``changed`` is the 'id.property' that triggered the call (default: the first input).
    """
    spec = callback_spec(dependencies, output)

    def items(kind: str) -> list[dict]:
        return [
            {**item, "value": values.get(f"{item['id']}.{item['property']}")} for item in spec[kind]
        ]

    outputs = [
        {"id": part.split(".")[0], "property": part.split(".")[1].split("@")[0]}
        for part in spec["output"].strip(".").split("...")
    ]
    first = spec["inputs"][0]
    return {
        "output": spec["output"],
        "outputs": outputs if spec["output"].startswith("..") else outputs[0],
        "inputs": items("inputs"),
        "state": items("state"),
        "changedPropIds": [changed or f"{first['id']}.{first['property']}"],
    }


def layout_values(layout: object) -> dict[str, object]:
    """'id.property' → value for every prop of every component with a string id in a
    ``/_dash-layout`` tree: what the page holds before the user does anything."""
    found: dict[str, object] = {}

    def visit(node: object) -> None:
        if isinstance(node, list):
            for child in node:
                visit(child)
            return
        if not isinstance(node, dict):
            return
        props = node.get("props")
        if not isinstance(props, dict):
            return
        if isinstance(props.get("id"), str):
            for name, value in props.items():
                if name not in ("id", "children"):
                    found[f"{props['id']}.{name}"] = value
        visit(props.get("children"))

    visit(layout)
    return found


def pixel_values(
    view_data: dict, pixel: tuple[int, int], overrides: Mapping[str, object] | None = None
) -> dict[str, object]:
    """Values of the pixel callback (gradient, zoom, numbers) for ``pixel`` = (row, col) of the
    view in ``view_data`` (the page's view store: {"view": ..., "pixel": ...})."""
    row, col = pixel
    values: dict[str, object] = {
        "pixel-store.data": {"row": row, "col": col, "view": view_data.get("view")},
        "threshold-store.data": {"fraction": 0.02},
        "threshold-mode.value": "pixel",
        "method.value": "gradient",
        "target.value": "pixel",
        "overlays.value": ["bbox"],
        "clip.value": ["clip"],
        "view-store.data": view_data,
        "model.value": "m0",
        "compare.value": "none",
    }
    values.update(overrides or {})
    return values


def pixel_request(
    dependencies: list[dict],
    view_data: dict,
    pixel: tuple[int, int],
    overrides: Mapping[str, object] | None = None,
) -> dict:
    """The request the page sends when the mouse reaches ``pixel`` (see :func:`pixel_values`)."""
    values = pixel_values(view_data, pixel, overrides)
    return callback_request(dependencies, "graph-gradient.figure", values, "pixel-store.data")


def _encode(body: object) -> bytes:
    return json.dumps(body).encode()


def malformed_bodies(valid: dict) -> list[tuple[str, str, bytes]]:
    """(category, label, body) of requests that are not callback requests of the app, derived
    from the ``valid`` body of a callback with at least two inputs and one state.

    Categories: ``broken-json`` (unparseable or too deeply nested), ``wrong-ids`` (an output,
    input or state the callback does not have), ``wrong-types`` (structure of the wrong
    type), ``huge-numbers`` (numbers, some beyond float range, where names or lists belong).
    """
    inputs, state = valid["inputs"], valid["state"]
    outputs = valid["outputs"]
    if isinstance(outputs, list):
        other_output = [{**outputs[0], "id": "no-such-component"}, *outputs[1:]]
    else:
        other_output = {**outputs, "id": "no-such-component"}
    text = json.dumps(valid)
    renamed = [{**inputs[0], "id": "no-such-component"}, *inputs[1:]]
    swapped = [inputs[1], inputs[0], *inputs[2:]]
    wrong_property = [{**inputs[0], "property": "no_such_prop"}, *inputs[1:]]
    return [
        ("broken-json", "truncated", text[: len(text) // 2].encode()),
        ("broken-json", "not json", b"not json"),
        ("broken-json", "empty body", b""),
        ("broken-json", "invalid utf-8", b'{"output": "\xff\xfe"}'),
        ("broken-json", "trailing comma", text[:-1].encode() + b", }"),
        ("broken-json", "deeply nested array", b"[" * 100_000),
        ("broken-json", "deeply nested object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        ("wrong-ids", "unknown output", _encode({**valid, "output": "nothing.here"})),
        ("wrong-ids", "renamed input", _encode({**valid, "inputs": renamed})),
        ("wrong-ids", "inputs swapped", _encode({**valid, "inputs": swapped})),
        ("wrong-ids", "unknown property", _encode({**valid, "inputs": wrong_property})),
        (
            "wrong-ids",
            "state renamed",
            _encode({**valid, "state": [{**state[0], "id": "x"}, *state[1:]]}),
        ),
        ("wrong-ids", "output renamed", _encode({**valid, "outputs": other_output})),
        ("wrong-ids", "input missing", _encode({**valid, "inputs": inputs[:-1]})),
        ("wrong-types", "body is a list", _encode([valid])),
        ("wrong-types", "body is a string", _encode("output")),
        ("wrong-types", "body is null", b"null"),
        ("wrong-types", "inputs a dict", _encode({**valid, "inputs": {"a": 1}})),
        ("wrong-types", "inputs strings", _encode({**valid, "inputs": ["x"] * len(inputs)})),
        ("wrong-types", "state null", _encode({**valid, "state": None})),
        ("wrong-types", "outputs a string", _encode({**valid, "outputs": "graph"})),
        ("wrong-types", "changedPropIds a number", _encode({**valid, "changedPropIds": 5})),
        ("wrong-types", "no inputs", _encode({k: v for k, v in valid.items() if k != "inputs"})),
        (
            "huge-numbers",
            "output 1e999",
            text.replace(json.dumps(valid["output"]), "1e999", 1).encode(),
        ),
        (
            "huge-numbers",
            "id 10**400",
            _encode({**valid, "inputs": [{**inputs[0], "id": 10**400}, *inputs[1:]]}),
        ),
        (
            "huge-numbers",
            "property -1e308",
            _encode({**valid, "state": [{**state[0], "property": -1e308}, *state[1:]]}),
        ),
        ("huge-numbers", "changedPropIds [1e308]", _encode({**valid, "changedPropIds": [1e308]})),
        ("huge-numbers", "1000 inputs", _encode({**valid, "inputs": [inputs[0]] * 1000})),
        ("huge-numbers", "outputs NaN", _encode({**valid, "outputs": float("nan")})),
    ]


def bad_pixel_values(view_data: dict) -> list[tuple[str, dict[str, object]]]:
    """(label, overrides of :func:`pixel_values`): well-formed pixel requests carrying values
    no page would send. The app answers 200 with a one-line message in the page (or 204 when
    there is no pixel to update), never an error status."""
    view = dict(view_data.get("view") or {})
    return [
        ("row 10**400", {"pixel-store.data": {"row": 10**400, "col": 3}}),
        ("col -1e308", {"pixel-store.data": {"row": 3, "col": -1e308}}),
        ("row NaN", {"pixel-store.data": {"row": float("nan"), "col": 3}}),
        ("threshold 1e308", {"threshold-store.data": {"fraction": 1e308}}),
        ("threshold -Infinity", {"threshold-store.data": {"fraction": float("-inf")}}),
        ("threshold 10**400", {"threshold-store.data": {"fraction": 10**400}}),
        ("view height 10**30", {"view-store.data": {"view": {**view, "height": 10**30}}}),
        ("view top -1e308", {"view-store.data": {"view": {**view, "top": -1e308}}}),
        ("method a list", {"method.value": ["gradient"]}),
        ("overlays a number", {"overlays.value": 1e308}),
        ("model a dict", {"model.value": {"m0": 1}}),
    ]


class ServerProcess:
    """``python -m vessel_lens app ARGS --host 127.0.0.1 --port 0`` in a child process.

    ``port`` is read from the line the app prints when it listens; ``memory()`` reads the
    child's resident set (or its peak, ``VmHWM``) from ``/proc``. The log goes to
    ``log_path``."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        start_timeout: float = 180.0,
    ):
        command = [sys.executable, "-m", "vessel_lens", "app", *args]
        command += ["--host", "127.0.0.1", "--port", "0", "--no-debug"]
        self.log_path = Path(log_path)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.port = self._wait_for_port(start_timeout)

    def _wait_for_port(self, timeout: float) -> int:
        found: list[int] = []

        def read() -> None:
            for line in self.process.stdout:
                match = re.search(rb"http://127\.0\.0\.1:(\d+)/", line)
                if match:
                    found.append(int(match[1]))
                    break

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            raise RuntimeError(f"the app did not start; its log:\n{self.log()[-3000:]}")
        return found[0]

    def memory(self, field_name: str = "VmRSS") -> float | None:
        """``VmRSS`` (or ``VmHWM``, the peak) of the server in MiB; None off Linux."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
        return int(match[1]) / 1024 if match else None

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


__all__ = [
    "DEPENDENCIES",
    "LAYOUT",
    "UPDATE",
    "ServerProcess",
    "bad_pixel_values",
    "callback_request",
    "callback_spec",
    "layout_values",
    "malformed_bodies",
    "pixel_request",
    "pixel_values",
]
