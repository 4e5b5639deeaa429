"""What a Jacobian engine costs before its first row, and what it reuses: the recording (no
torch._dynamo), constants derived from the weights (cached per model, recomputed when a
weight changes), the dry pass that traces windows, rounded seed windows, batches kept below
the allocator's mmap threshold, and the receptive-field maps' clean-up."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref
from dataclasses import replace

import pytest
import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret import JacobianEngine, receptive_field, receptive_field_maps
from vessel_lens.interpret.fields import thresholded as erf_module
from vessel_lens.interpret.fields.structural import tape_field
from vessel_lens.interpret.jacobian._linear.allocator import keep_freed_memory
from vessel_lens.interpret.jacobian._linear.strategy import (
    BUFFER_BYTES,
    _rounded,
    backward,
    seed_window,
)
from vessel_lens.interpret.jacobian._linear.tiles import bounded_batches
from vessel_lens.interpret.proof.grammar import RandomChooser, random_model, randomise, runs
from vessel_lens.models import ResNetSeg


def reference(width: int = 4) -> ResNetSeg:
    torch.manual_seed(0)
    model = ResNetSeg(width=width)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(2, 1, 32, 32))
    return model.eval()


def pooled() -> nn.Module:
    return randomise(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(4, 2, 3, padding=1),
        ),
        seed=0,
    )  # fmt: skip


def autograd_rows(model: nn.Module, image: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    def probability(x):
        return model(x[None]).softmax(1)[0, 1].reshape(-1)[flat]

    return torch.autograd.functional.jacobian(probability, image)


def test_recording_does_not_import_torch_dynamo():
    """PyTorch wraps a dispatch mode in torch._dynamo.disable unless told not to: importing
    torch._dynamo made the first engine of every process take 3-8 s on the CPU."""
    script = textwrap.dedent(
        """
        import sys, torch
        from torch import nn
        from vessel_lens.interpret import JacobianEngine
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
        JacobianEngine(model, torch.rand(1, 8, 8)).rows(torch.tensor([0, 5]))
        print("torch._dynamo" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def _geometry(impl, dry: bool):
    prepared = replace(impl.prepared, dry=dry)
    output = prepared.tape.value(prepared.tape.output)
    trace: list = []
    backward(prepared, impl._centre_seed(output), trace)
    return [(i, w.top, w.left, tuple(w.data.shape)) for i, _, w in trace]


def _drawn_models(count: int):
    seed = 0
    while count:
        drawn = random_model(RandomChooser(seed), seed)
        image = torch.rand(drawn.in_channels, 12 + seed % 5, 9 + seed % 7)
        seed += 1
        if not runs(drawn.model, image):
            continue
        try:
            engine = JacobianEngine(drawn.model, image, strategy="linear")
        except ConfigError:  # the linear strategy refuses this model
            continue
        count -= 1
        yield engine


def test_the_dry_pass_traces_the_windows_of_a_real_one():
    engines = [JacobianEngine(reference(), torch.rand(1, 32, 32)), *_drawn_models(25)]
    for engine in engines:
        impl = engine.strategy_impl
        assert _geometry(impl, dry=True) == _geometry(impl, dry=False)


def test_a_second_engine_reuses_the_weights_prepared_by_the_first():
    model = reference()
    first = JacobianEngine(model, torch.rand(1, 32, 32)).strategy_impl.prepared
    second = JacobianEngine(model, torch.rand(1, 32, 32)).strategy_impl.prepared
    convolutions = [
        i for i, e in enumerate(first.tape.entries) if i in first.consts and "convolution" in e.name
    ]
    assert convolutions
    for i in convolutions:
        assert second.consts[i] is first.consts[i]
    stacked = [key for key in first.consts if isinstance(key, tuple) and key[0] == "stacked"]
    assert stacked and all(second.consts[key] is first.consts[key] for key in stacked)


@pytest.mark.parametrize("change", ["convolution weight", "batch-norm variance"])
def test_a_weight_changed_in_place_is_prepared_again(change):
    model = reference()
    image = torch.rand(1, 16, 16)
    flat = torch.tensor([0, 37, 130, 255])
    before = JacobianEngine(model, image).rows(flat)
    with torch.no_grad():
        if change == "convolution weight":
            model.encoder[1].conv1.weight.mul_(-1.5)
        else:
            model.encoder[0].bn1.running_var.mul_(4.0)
    after = JacobianEngine(model, image).rows(flat)
    expected = autograd_rows(model, image, flat)
    scale = float(expected.abs().max())
    assert float((after - expected).abs().max()) <= 1e-5 * scale
    assert float((before - expected).abs().max()) > 1e-3 * scale


def test_seed_windows_take_few_shapes_and_rows_stay_exact():
    model = reference()
    image = torch.rand(1, 48, 48)
    engine = JacobianEngine(model, image)
    output = engine.strategy_impl.prepared.tape.value(engine.strategy_impl.prepared.tape.output)
    sides, spans = set(), set()
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        flat = torch.randperm(48 * 48, generator=generator)[:5]
        rows, cols = flat // 48, flat % 48
        window = seed_window(output, rows, cols, torch.ones(5, 2))
        assert 0 <= window.top <= int(rows.min()) and int(rows.max()) < window.top + window.height
        assert 0 <= window.left <= int(cols.min()) and int(cols.max()) < window.left + window.width
        assert window.top + window.height <= 48 and window.left + window.width <= 48
        sides |= {window.height, window.width}
        spans |= {int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1}
    assert len(sides) <= 12 and 2 * len(sides) < len(spans), (sorted(sides), len(spans))
    for low, high in [(0, 0), (3, 9), (10, 47), (40, 47)]:
        start, size = _rounded(low, high, 48)
        assert start <= low and high < start + size <= 48 and size <= 1.25 * (high - low + 1) + 1
    flat = torch.tensor([3, 700, 1201, 2000, 2303])
    expected = autograd_rows(model, image, flat)
    got = engine.rows(flat)
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_batches_are_split_so_that_no_buffer_passes_the_mmap_threshold():
    """A dense GroupNorm net: every row's cotangent covers the map, so 256 rows of a 64x64
    image make 64 MiB buffers, which glibc maps afresh on every pass."""
    model = randomise(
        nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.Conv2d(16, 2, 1),
        ),
        seed=0,
    )  # fmt: skip
    image = torch.rand(1, 64, 64)
    engine = JacobianEngine(model, image)
    impl = engine.strategy_impl
    flat = torch.arange(1000, 1256)
    rows, cols = flat // 64, flat % 64
    limit = BUFFER_BYTES // 4
    parts = bounded_batches([torch.arange(256)], rows, cols, impl.profile(), limit)
    assert len(parts) > 1
    assert torch.equal(torch.cat(parts), torch.arange(256))
    for part in parts:
        assert len(part) * 16 * 64 * 64 <= limit
    expected = autograd_rows(model, image, flat[::40])
    got = engine.rows(flat)[::40]
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_glibc_keeps_freed_buffers_for_the_next_pass():
    """Without the setting, the dense buffers of most passes of a GroupNorm net are mapped and
    page-faulted afresh (measured: about 190 page faults per row; some passes reuse the heap by
    chance, so the test sums 14 passes: 0-7,000 with the setting, 50,000-172,000 without)."""
    if not keep_freed_memory():
        pytest.skip("the C library is not glibc")
    script = textwrap.dedent(
        """
        import resource, sys, torch
        from torch import nn
        import vessel_lens.interpret
        from vessel_lens.interpret.proof.grammar import randomise
        jacobian = sys.modules["vessel_lens.interpret.jacobian.engine"]
        if sys.argv[1] == "default":
            jacobian.keep_freed_memory = lambda: False
        torch.set_num_threads(1)
        model = randomise(nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.Conv2d(16, 2, 1)), seed=0)
        engine = jacobian.JacobianEngine(model, torch.rand(1, 64, 64))
        faults = []
        for start in range(0, 1024, 64):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            engine.rows(torch.arange(start, start + 64))
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(sum(faults[2:]))
        """
    )

    def faults(mode: str) -> int:
        result = subprocess.run(
            [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True
        )
        return int(result.stdout.strip())

    kept, default = faults("keep"), faults("default")
    assert 4 * kept < default and default > 14 * 64 * 40


@pytest.mark.parametrize("make", [reference, pooled], ids=["reference", "pooled"])
def test_the_field_of_an_engines_recording_is_the_receptive_field(make):
    model = make()
    engine = JacobianEngine(model, torch.rand(1, 32, 32))
    field = tape_field(engine.tape)
    expected = receptive_field(model, 32)
    assert torch.equal(field.boxes, expected.boxes)
    assert (field.up, field.down, field.left, field.right, field.tight, field.reasons) == (
        expected.up,
        expected.down,
        expected.left,
        expected.right,
        expected.tight,
        expected.reasons,
    )


def test_maps_free_the_recording_without_a_full_garbage_collection(monkeypatch):
    """gc.collect() costs about 0.1 s in a large process, more than a small model's map."""
    collections = []
    monkeypatch.setattr(erf_module.gc, "collect", lambda *a: collections.append(a) or 0)
    tapes = []
    original = erf_module.JacobianEngine

    def engine(*args, **kwargs):
        made = original(*args, **kwargs)
        tapes.append(weakref.ref(made.tape))
        return made

    monkeypatch.setattr(erf_module, "JacobianEngine", engine)
    gc.disable()
    try:
        receptive_field_maps(pooled(), torch.rand(1, 32, 32), (0.1,), "pixel")
        assert tapes and all(tape() is None for tape in tapes)
    finally:
        gc.enable()
    assert collections == []


def test_coloured_passes_split_below_the_buffer_limit_give_the_same_maps(monkeypatch):
    from vessel_lens.interpret.fields.maps import ARRAYS
    from vessel_lens.interpret.jacobian._linear.strategy import LinearStrategy

    model, image = pooled(), torch.rand(1, 32, 32)
    never = receptive_field_maps(model, image, (0.05,), "pixel", colouring="never")
    monkeypatch.setattr(LinearStrategy, "largest_batch", lambda self, h, w: 3)
    split = receptive_field_maps(model, image, (0.05,), "pixel", colouring="always")
    auto = receptive_field_maps(model, image, (0.05,), "pixel", colouring="auto")
    assert split.metadata["colouring"] and auto.metadata["colouring_choice"]
    for maps in (split, auto):
        for name in ARRAYS:
            a, b = getattr(never, name), getattr(maps, name)
            if a.is_floating_point():
                assert torch.allclose(a, b, equal_nan=True, atol=1e-6), name
            else:
                assert torch.equal(a, b), name


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (1, 2), (2, 3)])
def test_one_channel_planes_equal_the_transposed_convolution(stride, dilation):
    from vessel_lens.interpret.jacobian._linear.window import _plane_taps

    generator = torch.Generator().manual_seed(0)
    data = torch.randn(3, 8, 9, 7, generator=generator, dtype=torch.float64)
    weight = torch.randn(8, 1, 3, 2, generator=generator, dtype=torch.float64)
    expected = torch.nn.functional.conv_transpose2d(data, weight, None, stride, 0, 0, 1, dilation)
    got = _plane_taps(data, weight, (stride, stride), (dilation, dilation))
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-12)
