"""Torch's thread count: chosen from the cores and the load, applied by every command that
computes, printed in one line, and restored afterwards."""

from __future__ import annotations

import importlib
import os
import re
from types import SimpleNamespace

import pytest
import torch

from vessel_lens import threads as threads_module
from vessel_lens.cli import main
from vessel_lens.errors import ConfigError, DataError
from vessel_lens.threads import ThreadChoice, choose_threads, torch_threads, work_starts


def fake_machine(monkeypatch, cores: int, load: float | None, machine: int | None = None):
    """Pretend this process may use ``cores`` of a ``machine``-core machine under ``load``."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: machine or cores)

    def getloadavg():
        if load is None:
            raise OSError("load average unobtainable")
        return (load, load, load)

    monkeypatch.setattr(os, "getloadavg", getloadavg)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


@pytest.mark.parametrize(
    ("cores", "load", "machine", "expected"),
    [
        (2, 1.9, None, 1),  # the busy 2-core machine of the issue
        (2, 0.1, None, 2),  # idle: every core
        (2, 0.6, None, 1),  # 1.4 free cores round to 1
        (8, 3.2, None, 5),  # 4.8 free cores
        (2, 9.0, None, 1),  # overloaded: at least one
        (4, 8.0, 16, 2),  # 4 of 16 cores: their share of the load is 2
        (4, 0.0, None, 4),
    ],
)
def test_the_choice_is_the_free_cores(monkeypatch, cores, load, machine, expected):
    fake_machine(monkeypatch, cores, load, machine)
    choice = choose_threads()
    assert (choice.threads, choice.cores, choice.load, choice.given) == (
        expected,
        cores,
        load,
        False,
    )


def test_the_log_line_names_the_cores_and_the_load(monkeypatch):
    fake_machine(monkeypatch, 2, 1.9)
    assert choose_threads().describe() == "threads: 1 (2 cores, load 1.9)"
    assert choose_threads(3).describe() == "threads: 3 (as given; 2 cores, load 1.9)"
    fake_machine(monkeypatch, 2, None)
    choice = choose_threads()
    assert choice.threads == 2 and choice.describe() == "threads: 2 (2 cores, load unknown)"


def test_local_processes_under_torchrun_share_the_cores(monkeypatch):
    fake_machine(monkeypatch, 16, 0.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    choice = choose_threads()
    assert choice.threads == 4 and choice.processes == 4
    assert choice.describe() == "threads: 4 (16 cores shared by 4 local processes, load 0.0)"
    fake_machine(monkeypatch, 16, 8.0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert choose_threads().threads == 2  # (16 - 8) / 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert choose_threads().threads == 1


@pytest.mark.parametrize("bad", [-1, -8])
def test_negative_threads_are_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match=rf"^--threads {bad}: must be 0 .* or a positive"):
        choose_threads(bad)


def test_the_choice_is_said_once_where_work_starts_or_at_a_clean_end(monkeypatch):
    fake_machine(monkeypatch, 2, 1.9)
    said: list[ThreadChoice] = []
    with torch_threads(0, announce=said.append):
        assert said == []
        with torch_threads(0):  # a library call inside: keeps the choice
            work_starts()
            work_starts()
        assert said == [ThreadChoice(1, 2, 1.9)]
    assert len(said) == 1
    with torch_threads(2, announce=said.append):  # nothing to compute: said at the end
        pass
    assert said[1].threads == 2 and said[1].given
    with pytest.raises(ConfigError), torch_threads(0, announce=said.append):
        raise ConfigError("refused input")  # before the work: the error stays alone
    assert len(said) == 2
    work_starts()  # outside any block: nothing to say
    assert len(said) == 2


def test_torch_threads_applies_and_restores_and_nested_zero_keeps_the_choice(monkeypatch):
    fake_machine(monkeypatch, 4, 1.0)
    before = torch.get_num_threads()
    with torch_threads() as outer:
        assert outer == ThreadChoice(3, 4, 1.0)
        assert torch.get_num_threads() == 3
        with torch_threads(0) as inner:
            assert inner is outer and torch.get_num_threads() == 3
        with torch_threads(2) as given:
            assert given.given and torch.get_num_threads() == 2
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(2):
        raise RuntimeError("a failing block")
    assert torch.get_num_threads() == before and not threads_module._active


# ---------------------------------------------------------------- every command


class Stop(DataError):
    """Raised by a stand-in for a command's computation once it has seen the threads."""


@pytest.fixture
def tiny(tmp_path, make_dataset, tiny_checkpoint):
    checkpoint = tiny_checkpoint
    data = make_dataset(count=3, size=(32, 32), splits={"train": ["s00"], "val": ["s01"],
                                                        "test": ["s02"]})  # fmt: skip
    return checkpoint, data, tmp_path


def _seen(record):
    def stand_in(*args, **kwargs):
        record.append(torch.get_num_threads())
        raise Stop("stopped where the command computes")

    return stand_in


def _commands(checkpoint, data, root):
    """(command line, the first step of its computation, replaced by the stand-in) for every
    command that computes."""
    ckpt, data = str(checkpoint), str(data)
    return {
        "train": (
            ["train", "--data", data, "--out", str(root / "run"), "--width", "4", "--crop-size", "16", "--device",
             "cpu", "--no-progress"],
            "vessel_lens.training.trainer.Trainer._run",
        ),
        "evaluate": (
            ["evaluate", "--checkpoint", ckpt, "--data", data, "--out", str(root / "ev"),
             "--device", "cpu"],
            "vessel_lens.training.evaluate.vessel_probability",
        ),
        "predict": (
            ["predict", "--checkpoint", ckpt, "--images", str(root / "dataset" / "images"),
             "--out", str(root / "pred"), "--device", "cpu"],
            "vessel_lens.training.predict.vessel_probability",
        ),
        "jacobian": (
            ["jacobian", "--checkpoint", ckpt, "--data", data, "--crop", "16", "--out",
             str(root / "grads"), "--device", "cpu", "--no-progress"],
            # vessel_lens.interpret.jacobian is also the function: the module is named whole
            (importlib.import_module("vessel_lens.interpret.jacobian.run"), "fill"),
        ),
        "erf": (
            ["erf", "--checkpoint", ckpt, "--data", data, "--crop", "16", "--out",
             str(root / "erf"), "--device", "cpu", "--no-progress"],
            "vessel_lens.interpret.fields.run._compute",
        ),
        "report": (
            ["report", "--checkpoint", ckpt, "--data", data, "--out", str(root / "report"),
             "--device", "cpu", "--no-progress"],
            "vessel_lens.viz.report._image_part",
        ),
        "demo": (
            ["demo", "--out", str(root / "demo"), "--device", "cpu", "--no-progress"],
            "vessel_lens.demo.write_synthetic_dataset",
        ),
    }  # fmt: skip


COMMANDS = ["train", "evaluate", "predict", "jacobian", "erf", "report", "demo"]


def test_every_computing_command_takes_threads():
    """Every command takes --threads but those that read files or count parameters only."""
    import typer

    from vessel_lens.cli import build_app

    commands = typer.main.get_command(build_app()).commands
    with_threads = {
        name for name, command in commands.items()
        if "--threads" in {o for p in command.params for o in p.opts}
    }  # fmt: skip
    assert with_threads == {*COMMANDS, "app"}
    assert set(commands) - with_threads == {"data", "models", "erf-stats"}


def _target(target):
    """``(dotted path,)`` or ``(module, name)`` for ``monkeypatch.setattr``."""
    return target if isinstance(target, tuple) else (target,)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("given", [None, 2])
def test_each_command_applies_threads_prints_the_line_and_restores(
    command, given, tiny, monkeypatch, capsys
):
    fake_machine(monkeypatch, 4, 1.0)  # the choice is 3 threads; the tests run on 1
    argv, target = _commands(*tiny)[command]
    record: list[int] = []
    monkeypatch.setattr(*_target(target), _seen(record))
    before = torch.get_num_threads()
    extra = [] if given is None else ["--threads", str(given)]
    assert main([*argv, *extra]) == 2
    err = capsys.readouterr().err
    assert record == [3 if given is None else given]
    line = "threads: 3 (4 cores, load 1.0)" if given is None else "threads: 2 (as given;"
    assert next(x for x in err.splitlines() if x.startswith("threads:")).startswith(line)
    assert "error: stopped where the command computes" in err
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_refuses_negative_threads(command, tiny, monkeypatch, capsys):
    argv, target = _commands(*tiny)[command]
    record: list[int] = []
    monkeypatch.setattr(*_target(target), _seen(record))
    assert main([*argv, "--threads", "-1"]) == 2
    err = capsys.readouterr().err
    assert record == []
    assert re.findall(r"^error: .*$", err, flags=re.MULTILINE)[0].startswith(
        ("error: --threads -1: must be 0", "error: threads -1: must be 0")
    )


def test_train_resume_takes_threads(tiny, monkeypatch, capsys):
    """A run resumed with --threads uses them (the recorded value otherwise)."""
    from vessel_lens.training.config import read_config

    _checkpoint, data, root = tiny
    run = root / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--width", "4", "--epochs",
                 "1", "--crops-per-image", "2", "--batch-size", "2", "--crop-size", "32",
                 "--threads", "1", "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    assert read_config(run / "config.yaml")["threads"] == 1
    record: list[int] = []
    monkeypatch.setattr("vessel_lens.training.trainer.Trainer._run", _seen(record))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 2
    assert record == [1]
    assert "threads: 1 (as given;" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2", "--threads", "2"]) == 2
    assert record == [1, 2]


def test_library_calls_choose_and_restore(tiny, monkeypatch):
    """The configs' ``threads`` apply inside the library call, torch's setting is restored."""
    from vessel_lens.interpret.fields.run import ErfConfig, run_erf
    from vessel_lens.interpret.jacobian.run import ExtractConfig, extract_jacobians

    fake_machine(monkeypatch, 4, 1.0)
    checkpoint, data, root = tiny
    record: list[int] = []
    monkeypatch.setattr(
        importlib.import_module("vessel_lens.interpret.jacobian.run"), "_extract", _seen(record)
    )
    monkeypatch.setattr("vessel_lens.interpret.fields.run._run", _seen(record))
    for threads in (0, 2):
        with pytest.raises(Stop):
            extract_jacobians(ExtractConfig(str(checkpoint), root / "g", str(data),
                                            device="cpu", threads=threads))  # fmt: skip
        with pytest.raises(Stop):
            run_erf(ErfConfig(root / "e", str(checkpoint), data=str(data), device="cpu",
                              threads=threads))  # fmt: skip
    assert record == [3, 3, 2, 2]
    assert torch.get_num_threads() == 1
    with pytest.raises(ConfigError, match=r"^--threads -2"):
        ExtractConfig(str(checkpoint), root / "g", threads=-2)


def test_the_app_prints_its_per_request_threads(tiny, monkeypatch, capsys):
    """The app sets its threads for the server's life and says so once it listens."""
    pytest.importorskip("dash")
    fake_machine(monkeypatch, 2, 1.9)
    checkpoint, _data, _root = tiny
    record: list[int] = []
    state = SimpleNamespace(shutdown=lambda wait: None)
    monkeypatch.setattr(
        "vessel_lens.app.create_app", lambda config: SimpleNamespace(vessel_lens_state=state)
    )
    monkeypatch.setattr("vessel_lens.app.server.limit_malloc_arenas", lambda arenas: None)
    monkeypatch.setattr("vessel_lens.app.server.map_large_allocations", lambda: None)

    class Listening:
        url = "http://127.0.0.1:1"

        def __init__(self, app, host, port):
            pass

        def serve_forever(self):
            record.append(torch.get_num_threads())

    monkeypatch.setattr("vessel_lens.app.Server", Listening)
    before = torch.get_num_threads()
    try:
        assert main(["app", "--checkpoint", str(checkpoint), "--threads", "2"]) == 0
    finally:
        torch.set_num_threads(before)  # the app sets them for the server's life
    assert record == [2]
    err = capsys.readouterr().err.splitlines()
    assert err == ["threads: 2 per request (as given; 2 cores, load 1.9)"]


def test_a_refused_input_stays_the_only_line_and_a_run_with_nothing_to_do_says_it(
    tiny, monkeypatch, capsys
):
    fake_machine(monkeypatch, 2, 1.9)
    checkpoint, data, root = tiny
    jacobian = ["jacobian", "--checkpoint", str(checkpoint), "--data", str(data), "--out",
                str(root / "boxes"), "--device", "cpu", "--no-progress", "--images", "s02"]  # fmt: skip
    assert main([*jacobian, "--crop-box", "20,0,16,16"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --crop-box 20,0,16,16: reaches rows 20-35, outside image s02 (32x32)"
    ]
    argv, _ = _commands(*tiny)["report"]
    assert main([*argv, "--images", "s02", "--pixels", "40:0"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --pixels 40,0: outside image s02 (32x32)"
    ]
    assert not (tiny[2] / "report" / "figures").exists()  # refused before computing
    assert main([*jacobian, "--crop", "16"]) == 0
    assert capsys.readouterr().err.splitlines() == ["threads: 1 (2 cores, load 1.9)"]
    assert main([*jacobian, "--crop", "16"]) == 0  # finished: nothing computed, still said
    captured = capsys.readouterr()
    assert "computed 0 block(s)" in captured.out
    assert captured.err.splitlines() == ["threads: 1 (2 cores, load 1.9)"]
