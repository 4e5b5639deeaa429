"""Compact tiles: a batch of spread-out rows is split into spatially compact backward passes
when the cost model predicts a gain, and the rows stay exact."""

from __future__ import annotations

import pytest
import torch

from vessel_lens.interpret import JacobianEngine, jacobian
from vessel_lens.interpret.jacobian._linear.strategy import backward, seed_window
from vessel_lens.interpret.jacobian._linear.tiles import compact_groups
from vessel_lens.interpret.pixels import output_seeds
from vessel_lens.models import ResNetSeg

SIZE = 64


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    model = ResNetSeg(width=4)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 1, SIZE, SIZE))
    model.eval()
    image = torch.rand(1, SIZE, SIZE)
    return JacobianEngine(model, image, strategy="linear"), model, image


def grid(stride: int) -> torch.Tensor:
    steps = torch.arange(0, SIZE, stride)
    return (steps[:, None] * SIZE + steps[None, :]).reshape(-1)


def groups_of(engine: JacobianEngine, flat: torch.Tensor):
    impl = engine.strategy_impl
    return compact_groups(flat // SIZE, flat % SIZE, impl.profile(), SIZE, SIZE)


def one_batch(engine: JacobianEngine, flat: torch.Tensor) -> torch.Tensor:
    prepared = engine.strategy_impl.prepared
    seeds = output_seeds(engine.logits, flat, engine.target_class, engine.output)
    output = prepared.tape.value(prepared.tape.output)
    seed = seed_window(output, flat // SIZE, flat % SIZE, seeds.to(prepared.dtype))
    return backward(prepared, seed)


def test_a_strided_batch_is_split_into_compact_tiles(engine):
    engine, _, _ = engine
    flat = grid(4)  # 256 pixels spread over the whole image: one window of 61x61
    groups = groups_of(engine, flat)
    assert groups is not None and len(groups) > 1
    together = torch.sort(torch.cat(groups)).values
    assert torch.equal(together, torch.arange(len(flat)))  # every row once
    for group in groups:
        rows, cols = flat[group] // SIZE, flat[group] % SIZE
        side = max(int(rows.max() - rows.min()), int(cols.max() - cols.min())) + 1
        assert side < SIZE // 2, side
    again = groups_of(engine, flat)
    assert all(torch.equal(a, b) for a, b in zip(groups, again, strict=True))


@pytest.mark.parametrize(
    "flat",
    [torch.arange(SIZE * 10, SIZE * 10 + 16), torch.arange(5) * 7],
    ids=["short-contiguous-strip", "fewer-than-eight-rows"],
)
def test_compact_or_tiny_batches_stay_one_pass(engine, flat):
    assert groups_of(engine[0], flat) is None


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_tiled_rows_equal_one_pass_and_autograd(engine, stride):
    engine, model, image = engine
    flat = grid(stride)
    tiled = engine.rows(flat)
    whole = one_batch(engine, flat)
    scale = float(whole.abs().max())
    assert float((tiled - whole).abs().max()) <= 1e-5 * scale
    sample = flat[:: max(1, len(flat) // 12)]

    def probability(x):
        return model(x[None]).softmax(1)[0, 1].reshape(-1)[sample]

    expected = torch.autograd.functional.jacobian(probability, image)
    got = jacobian(model, image, pixels=flat, strategy="linear")[:: max(1, len(flat) // 12)]
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())
