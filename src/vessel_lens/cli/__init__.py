"""The ``vessel-lens`` command line: a thin layer over the Python API.

Each sub-module registers one group of commands. :func:`main` turns every user-input error
into one ``error:`` line and a non-zero exit status, and Ctrl-C into exit status 130.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from vessel_lens.errors import VesselLensError


def build_app() -> typer.Typer:
    from vessel_lens.cli import app as app_command
    from vessel_lens.cli import data, demo, erf, evaluate, jacobian, models, report, train

    app = typer.Typer(
        name="vessel-lens",
        help="See why a vessel-segmentation CNN labels each pixel the way it does.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    data.register(app)
    models.register(app)
    train.register(app)
    evaluate.register(app)
    jacobian.register(app)
    erf.register(app)
    report.register(app)
    app_command.register(app)
    demo.register(app)
    return app


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status instead of raising."""
    warnings.formatwarning = _one_line_warning
    command = typer.main.get_command(build_app())
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        result = command.main(
            args=expand_multiple(command, args), prog_name="vessel-lens", standalone_mode=False
        )
    except VesselLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        status = _click_exit_status(exc)
        if status is not None:
            return status
        if os.environ.get("VESSEL_LENS_DEBUG"):
            raise
        print(
            f"error: internal error ({type(exc).__name__}: {str(exc)[:200]}); "
            "rerun with VESSEL_LENS_DEBUG=1 for the traceback",
            file=sys.stderr,
        )
        return 1
    if result == 130:  # typer turns Ctrl-C inside a command into exit status 130
        print("interrupted", file=sys.stderr)
    return result if isinstance(result, int) else 0


def expand_multiple(command, args: list[str]) -> list[str]:
    """Let a multi-value option take several values after one flag: ``--images a b`` becomes
    ``--images a --images b`` (what click understands), for commands without positional
    arguments (where a bare word could only be such a value)."""
    at = 0
    while at < len(args) and args[at] in getattr(command, "commands", {}):
        command = command.commands[args[at]]
        at += 1
    params = getattr(command, "params", [])
    if any(p.param_type_name == "argument" for p in params):
        return args
    multiple = {o for p in params if getattr(p, "multiple", False) for o in p.opts}
    expanded, option, taken = args[:at], None, 0
    for index, token in enumerate(args[at:], start=at):
        if token == "--":
            return expanded + args[index:]
        if token.startswith("-"):
            option, taken = (token if token in multiple else None), 0
        elif option is not None:
            if taken:
                expanded.append(option)
            taken += 1
        expanded.append(token)
    return expanded


def _click_exit_status(exc: Exception) -> int | None:
    """Exit status for click's own exceptions (typer may vendor click, so match by shape)."""
    name = type(exc).__name__
    if name == "Abort":
        print("interrupted", file=sys.stderr)
        return 130
    if name == "Exit":
        return int(getattr(exc, "exit_code", 0))
    if name == "NoArgsIsHelpError":
        print(exc.format_message(), file=sys.stderr)
        return int(exc.exit_code)
    if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return int(exc.exit_code)
    return None
