"""``create_app(config)``: the Dash app, its guards and a server that tests can stop.

Nothing happens at import. ``create_app`` loads the checkpoints and the dataset (so a bad
option fails before anything listens), builds the page and registers the callbacks.

Guards on the callback endpoint: request bodies are size-limited (the upload limit plus
1 MiB: larger requests get 413); a body that is not a well-formed callback request for one of
this app's callbacks gets 400 with a one-line reason, and so does any error Dash raises while
unpacking one, because the callbacks themselves never raise.

Guards on every request: a Host header that names neither the bound address, localhost,
127.0.0.1 nor a name given with ``--allow-host`` gets 403 (a page on another site cannot
reach the app through DNS rebinding), and every response says ``X-Content-Type-Options:
nosniff``, ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

from vessel_lens.app.config import AppConfig

log = logging.getLogger(__name__)
ASSETS = Path(__file__).with_name("assets")


def payload_problem(body: object, callback_map: dict) -> str | None:
    """Why ``body`` is not a callback request of this app (None when it is one)."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    output = body.get("output")
    if not isinstance(output, str) or output not in callback_map:
        return "unknown output"
    spec = callback_map[output]
    for name, expected in (("inputs", spec.get("inputs", [])), ("state", spec.get("state", []))):
        items = body.get(name, [])
        if not isinstance(items, list) or len(items) != len(expected):
            return f"'{name}' must list {len(expected)} item(s)"
        for item, wanted in zip(items, expected, strict=True):
            if not isinstance(item, dict) or not isinstance(item.get("property"), str):
                return f"'{name}' items need an id and a property"
            if not isinstance(item.get("id"), (str, dict)):
                return f"'{name}' items need an id and a property"
            if _names(item) != _names(wanted):
                # Dash reads inputs by position: a misnamed item would feed another's value.
                return f"'{name}' must list {', '.join(_names(w) for w in expected)} in order"
    outputs = body.get("outputs")
    listed = outputs if isinstance(outputs, list) else [outputs]
    if not listed or not all(
        isinstance(o, dict)
        and isinstance(o.get("id"), (str, dict))
        and isinstance(o.get("property"), str)
        for o in listed
    ):
        return "'outputs' must name an id and a property"
    wanted_outputs = output.strip(".").split("...") if output.startswith("..") else [output]
    if len(listed) != len(wanted_outputs):
        return f"'outputs' must list {len(wanted_outputs)} item(s)"
    if any(
        isinstance(o["id"], str) and _names(o) != w.split("@")[0]
        for o, w in zip(listed, wanted_outputs, strict=True)
    ):
        return "'outputs' do not match 'output'"
    changed = body.get("changedPropIds", [])
    if not isinstance(changed, list) or not all(isinstance(c, str) for c in changed):
        return "'changedPropIds' must be a list of strings"
    return None


def _names(item: dict) -> str:
    """'id.property' of a request item (pattern-matching ids are compared as given)."""
    return f"{item.get('id')}.{str(item.get('property')).split('@')[0]}"


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def host_name(host: str) -> str:
    """The name in a Host header, without its port: 'Example.org:8050' → 'example.org',
    '[::1]:8050' → '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _guard_hosts(server, allowed: set[str]) -> None:
    from flask import Response, request

    def check_host():
        name = host_name(request.host)
        if "*" in allowed or name in allowed:
            return None
        log.warning("refused a request for host %r", name[:80])
        text = (
            f"host {name[:80]!r} is not served by this app; start it with --allow-host "
            "NAME to serve it under another name\n"
        )
        return Response(text, status=403, mimetype="text/plain")

    def add_headers(response):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    server.before_request(check_host)
    server.after_request(add_headers)


def _guard_dispatch(app) -> None:
    from dash.exceptions import PreventUpdate
    from flask import jsonify, request
    from werkzeug.exceptions import HTTPException

    server = app.server
    endpoint = next(
        rule.endpoint
        for rule in server.url_map.iter_rules()
        if rule.rule.endswith("_dash-update-component")
    )
    original = server.view_functions[endpoint]

    def dispatch(*args, **kwargs):
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # json raises it, not ValueError, for deeply nested input
            return jsonify({"error": "bad callback request: body nests too deeply"}), 400
        problem = payload_problem(body, app.callback_map)
        if problem is not None:
            return jsonify({"error": f"bad callback request: {problem}"}), 400
        try:
            return original(*args, **kwargs)
        except (PreventUpdate, HTTPException):
            raise
        except Exception as exc:
            log.warning("refused a callback request: %s: %s", type(exc).__name__, exc)
            return jsonify({"error": "bad callback request"}), 400

    server.view_functions[endpoint] = dispatch


def create_app(config: AppConfig, state=None):
    """The Dash app for ``config`` (``state`` may be given to share caches, e.g. in tests).

    Examples:
        >>> from vessel_lens.app import AppConfig, create_app
        >>> app = create_app(AppConfig(cache_mb=256))  # the shipped checkpoint on synthetic vessels
        >>> app.title, app.server.name  # a Dash app (`vessel-lens app` serves one)
        ('vessel-lens', 'vessel_lens.app')
        >>> app.vessel_lens_state.shutdown(wait=10)
    """
    import dash

    from vessel_lens.app.callbacks import register_callbacks
    from vessel_lens.app.fastpaint import register_route
    from vessel_lens.app.layers import discover_layers, layers
    from vessel_lens.app.layout import build_layout
    from vessel_lens.app.methods import discover_methods, methods
    from vessel_lens.app.state import AppState

    state = state or AppState(config)
    state.warm_up()
    discover_methods()
    discover_layers()
    app = dash.Dash(
        "vessel_lens.app",
        assets_folder=str(ASSETS),
        title="vessel-lens",
        update_title=None,
        serve_locally=True,
        suppress_callback_exceptions=False,
    )
    app.server.config["MAX_CONTENT_LENGTH"] = config.upload_bytes * 4 // 3 + 2**20
    app.layout = build_layout(state, methods(), layers())
    register_callbacks(app, state)
    register_route(app, state)
    app.vessel_lens_state = state
    _guard_dispatch(app)
    _guard_hosts(app.server, config.allowed_hosts)
    app.server.after_request(_MemoryReturner())
    return app


def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def limit_malloc_arenas(count: int = 2) -> bool:
    """Let glibc use at most ``count`` malloc arenas (``M_ARENA_MAX``) in this process.

    The server answers each request on a new thread; by default glibc gives busy threads
    arenas of their own (up to 8 per core), each keeping freed memory. The ``app`` command
    calls this before serving; it returns False where glibc is not available.
    """
    library = _libc()
    mallopt = getattr(library, "mallopt", None)
    return bool(mallopt is not None and mallopt(-8, int(count)))  # -8: M_ARENA_MAX


MMAP_THRESHOLD = 2**20
"""Allocations of at least this many bytes get pages of their own (see below)."""


def map_large_allocations(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve every allocation of ``threshold`` bytes or more with its own pages, returned to
    the system when it is freed (glibc's ``M_MMAP_THRESHOLD``, fixed).

    By default glibc raises that threshold up to 32 MiB as large blocks are freed; the 1-30
    MiB tensors of attribution batches and view preparations then come from the heap and stay
    resident after use, beyond what the memory budget accounts for: 20 clients starting
    integrated gradients at once peaked 1178 MiB above the server's base with ``--cache-mb
    1024`` (1063 MiB even with attribution reservations 1.6 times larger); with the threshold
    fixed at 1 MiB, 954 MiB (``benchmarks/app_budget.py``). The price is a page fault on every
    large buffer: integrated gradients in batches of 3 takes as long as in one batch of 50
    (about 19 s on a 256x256 view here) where glibc's default runs the batches in about 11 s,
    and a hover about 2 ms more (``benchmarks/app_budget.py --scenario batches``,
    ``benchmarks/app_latency.py``). The ``app`` command calls this before serving; False
    where glibc is not available.
    """
    mallopt = getattr(_libc(), "mallopt", None)
    return bool(mallopt is not None and mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD


class _MemoryReturner:
    """After requests, at most every ``interval`` seconds, ask glibc to hand freed heap memory
    back to the operating system (``malloc_trim``). Without it a long session's resident
    memory keeps every peak of figure building even though the caches are bounded."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.last = 0.0
        self.lock = threading.Lock()
        self.trim = getattr(_libc(), "malloc_trim", None)

    def __call__(self, response):
        if self.trim is not None:
            now = time.monotonic()
            with self.lock:
                due = now - self.last >= self.interval
                if due:
                    self.last = now
            if due:
                self.trim(0)
        return response


class Server:
    """A threaded WSGI server for the app on ``host:port`` that can be stopped."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        from werkzeug.serving import get_sockaddr, make_server, select_address_family

        self.app = app
        # Bound here, not by werkzeug: it prints the OSError and calls sys.exit(1) instead
        # of raising, so the caller could not report it as one line.
        family = select_address_family(host, port)
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(get_sockaddr(host, int(port), family))
            listener.listen(128)
            self._server = make_server(host, port, app.server, threaded=True, fd=listener.fileno())
        finally:
            listener.close()  # werkzeug keeps its own duplicate of the descriptor
        self.host = host
        self.port = int(self._server.port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> Server:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        state = getattr(self.app, "vessel_lens_state", None)
        if state is not None:
            state.shutdown(wait=5.0)
        if self._thread is not None:
            self._thread.join(timeout=10)
