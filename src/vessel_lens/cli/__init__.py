"""The ``vessel-lens`` command line: a thin layer over the Python API.

Each sub-module registers one group of commands. :func:`main` turns every user-input error
into one ``error:`` line and a non-zero exit status, Ctrl-C into exit status 130 and SIGTERM
into 143, after the command has stopped as on Ctrl-C.
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
    from vessel_lens.outputs import OutputNote

    return f"{'note' if issubclass(category, OutputNote) else 'warning'}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status instead of raising."""
    from vessel_lens.interrupts import sigterm_as_interrupt

    warnings.formatwarning = _one_line_warning
    command = typer.main.get_command(build_app())
    with sigterm_as_interrupt() as terminated:
        status = _run(command, argv, terminated)
    if status == 130 and terminated:
        return 143  # 128 + SIGTERM, as if the signal's default action had ended the process
    return status


def _stopped(terminated: list[int]) -> None:
    print("terminated" if terminated else "interrupted", file=sys.stderr)


def _run(command, argv: list[str] | None, terminated: list[int]) -> int:
    from vessel_lens.write_errors import WRITE_REASONS

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        result = command.main(
            args=expand_multiple(command, args), prog_name="vessel-lens", standalone_mode=False
        )
    except VesselLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        _stopped(terminated)
        return 130
    except OSError as exc:
        if exc.errno not in WRITE_REASONS or os.environ.get("VESSEL_LENS_DEBUG"):
            return _internal_error(exc)
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename else ""
        print(f"error: {where}{WRITE_REASONS[exc.errno]}", file=sys.stderr)
        return 1
    except Exception as exc:
        status = _click_exit_status(exc, terminated)
        if status is not None:
            return status
        return _internal_error(exc)
    if result == 130:  # typer turns Ctrl-C inside a command into exit status 130
        _stopped(terminated)
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


def _internal_error(exc: Exception) -> int:
    if os.environ.get("VESSEL_LENS_DEBUG"):
        raise exc
    print(
        f"error: internal error ({type(exc).__name__}: {str(exc)[:200]}); "
        "rerun with VESSEL_LENS_DEBUG=1 for the traceback",
        file=sys.stderr,
    )
    return 1


def _click_exit_status(exc: Exception, terminated: list[int]) -> int | None:
    """Exit status for click's own exceptions (typer may vendor click, so match by shape)."""
    name = type(exc).__name__
    if name == "Abort":
        _stopped(terminated)
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
