"""The app's work queue and memory budget: admission, refusal, timeouts, eviction, pauses,
and the memory estimates behind them (no Dash needed)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from vessel_lens.app.cache import LRUCache, held_bytes
from vessel_lens.app.costs import Costs, Line, measure_costs, peak_bytes, saved_bytes
from vessel_lens.app.work import Busy, Cancelled, OverBudget, WorkQueue

MIB = 2**20


class Holder:
    """Holds a queue slot in a thread until released (a computation that takes its time)."""

    def __init__(self, queue: WorkQueue, nbytes: int = 0, **options):
        self.entered, self.release = threading.Event(), threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(queue, nbytes, options))
        self.thread.start()

    def _run(self, queue, nbytes, options) -> None:
        try:
            with queue.slot(nbytes, "holder", **options):
                self.entered.set()
                self.release.wait(10)
        except Exception as exc:
            self.error = exc
            self.entered.set()

    def done(self) -> None:
        self.release.set()
        self.thread.join(10)


def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_a_full_queue_refuses_at_once_with_a_message():
    queue = WorkQueue(workers=1, budget=100 * MIB, max_waiting=1, timeout=30)
    running = Holder(queue)
    assert running.entered.wait(5)
    waiting = Holder(queue)
    wait_until(lambda: queue.waiting() == 1)
    started = time.monotonic()
    refused = r"busy \(1 running, 1 waiting, at most 1 may wait\)"
    with pytest.raises(Busy, match=refused), queue.slot(0, "a hover"):
        pass
    assert time.monotonic() - started < 1.0
    running.done()
    assert waiting.entered.wait(5) and waiting.error is None
    waiting.done()
    with queue.slot(0, "a hover"):  # free again
        pass


def test_a_request_that_waits_too_long_gives_up_with_a_message():
    queue = WorkQueue(workers=1, budget=100 * MIB, max_waiting=4, timeout=0.3)
    running = Holder(queue)
    assert running.entered.wait(5)
    with pytest.raises(Busy, match=r"waited 0\.3 s for a free worker"), queue.slot(0, "hover"):
        pass
    assert queue.timed_out == 1 and queue.waiting() == 0
    running.done()


def test_background_steps_are_not_refused_but_come_after_interactive_requests():
    queue = WorkQueue(workers=1, budget=100 * MIB, max_waiting=1, timeout=30)
    order: list[str] = []
    running = Holder(queue)
    assert running.entered.wait(5)
    background = [
        threading.Thread(target=lambda i=i: _enter(queue, order, f"task {i}", background=True))
        for i in range(3)
    ]
    for thread in background:
        thread.start()
    wait_until(lambda: queue.waiting(background=True) == 3)
    hover = threading.Thread(target=lambda: _enter(queue, order, "hover"))
    hover.start()
    wait_until(lambda: queue.waiting() == 1)
    running.done()
    for thread in [*background, hover]:
        thread.join(10)
    assert order[0] == "hover" and sorted(order[1:]) == ["task 0", "task 1", "task 2"]


def _enter(queue: WorkQueue, order: list, name: str, **options) -> None:
    with queue.slot(0, name, **options):
        order.append(name)


def test_more_than_the_whole_budget_is_refused_naming_the_option():
    queue = WorkQueue(workers=2, budget=64 * MIB)
    too_much = r"needs about 65 MiB.*--cache-mb 64"
    with pytest.raises(OverBudget, match=too_much), queue.slot(65 * MIB, "preparing the view"):
        pass


def test_reservations_and_cache_contents_stay_within_the_budget():
    queue = WorkQueue(workers=4, budget=10_000, max_waiting=4, timeout=30)
    cache = LRUCache(100)
    queue.account(cache)
    for key in "abcd":
        cache.put(key, torch.zeros(500))  # 2000 bytes each: 8000 held
    with queue.slot(5000, "a computation"):
        # the least recently used entries made room: 5000 reserved + at most 5000 held
        assert [k for k, _ in cache.snapshot()] == ["c", "d"]
        assert queue.reserved + queue.held() <= queue.budget
        cache.put("e", torch.zeros(500))  # too much now: the oldest entry goes
        assert [k for k, _ in cache.snapshot()] == ["d", "e"]
    assert queue.peak_accounted <= queue.budget


def test_a_second_reservation_waits_for_memory_not_only_for_a_worker():
    queue = WorkQueue(workers=4, budget=10 * MIB, max_waiting=4, timeout=30)
    first = Holder(queue, 6 * MIB)
    assert first.entered.wait(5)
    second = Holder(queue, 6 * MIB)
    time.sleep(0.3)
    assert not second.entered.is_set() and queue.reserved == 6 * MIB
    first.done()
    assert second.entered.wait(5) and second.error is None
    assert queue.peak_accounted == 6 * MIB
    second.done()


def test_pinned_entries_are_not_dropped_to_make_room():
    queue = WorkQueue(workers=2, budget=10_000, timeout=0.3)
    cache = LRUCache(10)
    queue.account(cache)
    with cache.pinned("engine", lambda: torch.zeros(1500)):  # 6000 bytes, in use
        cache.put("map", torch.zeros(500))
        with queue.slot(4000, "a computation"):
            assert [k for k, _ in cache.snapshot()] == ["engine"]
        # the pinned 6000 bytes leave no room for 5000
        with pytest.raises(Busy), queue.slot(5000, "another"):
            pass
    with queue.slot(5000, "another"):  # unpinned: dropped to make room
        assert len(cache) == 0


def test_a_pause_gives_the_worker_to_a_waiting_hover_and_a_cancel_stops_the_batches():
    queue = WorkQueue(workers=1, budget=100 * MIB, max_waiting=4, timeout=30)
    cancel = threading.Event()
    order: list[str] = []
    with queue.slot(10 * MIB, "integrated gradients", cancel, background=True) as slot:
        order.append("batch 1")
        hover = threading.Thread(target=lambda: _enter(queue, order, "hover"))
        hover.start()
        wait_until(lambda: queue.waiting() == 1)
        slot.pause()
        hover.join(5)
        order.append("batch 2")
        assert queue.reserved == 10 * MIB  # kept its memory while paused
        cancel.set()
        with pytest.raises(Cancelled):
            slot.pause()
    assert order == ["batch 1", "hover", "batch 2"]
    assert queue.reserved == 0 and queue.running == 0


def test_stopping_the_queue_wakes_every_waiter():
    queue = WorkQueue(workers=1, budget=MIB, max_waiting=4, timeout=30)
    running = Holder(queue)
    assert running.entered.wait(5)
    waiting = Holder(queue)
    wait_until(lambda: queue.waiting() == 1)
    queue.stop()
    waiting.thread.join(5)
    assert isinstance(waiting.error, Cancelled)
    running.done()


# -- the cache's pins -------------------------------------------------------------------------


def test_the_oldest_unpinned_entry_is_offered_for_dropping():
    cache = LRUCache(10)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")
    assert cache.oldest()[1] == "b"
    with cache.pinned("b", lambda: 2):
        assert cache.oldest()[1] == "a"
        assert cache.drop("b") == 0 and "b" in cache
    assert cache.oldest()[1] == "a"


def test_a_pinned_entry_survives_the_count_bound():
    cache = LRUCache(2)
    with cache.pinned("keep", lambda: "engine"):
        for key in "abc":
            cache.put(key, key)
        assert "keep" in cache
    assert len(cache) <= 3


# -- the estimates ------------------------------------------------------------------------


def test_a_line_through_two_measurements():
    line = Line.through((100, 1300), (400, 4300))
    assert line.per_pixel == 10 and line.fixed == 300 and line(1000) == 10_300
    flat = Line.through((100, 1000), (400, 1000))  # a slope of at least 1/4 of the average
    assert flat.per_pixel == pytest.approx(1000 / 400 / 4)


def test_saved_bytes_of_a_single_convolution_counted_by_hand():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    image = torch.rand(1, 1, 8, 8)
    # autograd keeps the input (64 floats) and the weight (9 floats) for the backward pass
    assert saved_bytes(conv, image) == (64 + 9) * 4
    assert all(p.requires_grad for p in conv.parameters())  # left as found


def test_the_measured_costs_predict_a_third_view_size():
    from vessel_lens.interpret import JacobianEngine
    from vessel_lens.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet_seg", width=4, in_channels=1)
    costs = measure_costs(model, 1, torch.device("cpu"))
    image = torch.rand(1, 96, 160)
    engine = held_bytes(JacobianEngine(model, image))
    assert costs.engine(96 * 160) == pytest.approx(engine, rel=0.05)
    assert costs.sample(96 * 160) == pytest.approx(saved_bytes(model, image[None]), rel=0.05)
    assert costs.build(96 * 160) > engine


def test_peak_bytes_counts_the_tensors_alive_at_once():
    def compute():
        first = torch.ones(1000)  # 4000 bytes
        second = first * 2  # 8000 alive
        del first
        third = second + 1  # 8000 again: first was freed
        return third.view(10, 100)  # a view adds no storage

    result, peak = peak_bytes(compute)
    assert peak == 8000 and result.shape == (10, 100)


def test_reservations_cover_what_a_row_and_the_receptive_field_take():
    # a width-1 model's receptive field takes about four times its prepared view (the
    # reservation of a view's preparation, which the field used to get, was far too small)
    from vessel_lens.interpret import JacobianEngine
    from vessel_lens.interpret.fields.structural import receptive_field
    from vessel_lens.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model("resnet_seg", width=1, in_channels=1)
    costs = measure_costs(model, 1, torch.device("cpu"))
    height, width = 320, 384
    pixels = height * width
    engine = JacobianEngine(model, torch.rand(1, height, width))
    centre = (height // 2) * width + width // 2  # a window away from the borders, as measured
    row = peak_bytes(lambda: engine.rows(torch.tensor([centre])))[1]
    chunk = peak_bytes(lambda: engine.rows(torch.arange(16) + centre))[1]
    field = peak_bytes(lambda: receptive_field(model, (height, width), in_channels=1))[1]
    assert field > 2 * costs.build(pixels)
    assert row <= costs.rows(pixels, 1) < 2 * row
    assert chunk <= costs.rows(pixels, 16) < 2 * chunk
    assert field <= costs.receptive_field(pixels) < 2 * field


def test_batch_size_and_largest_side_follow_the_limit():
    line = Line(0, 1000)
    costs = Costs(line, line, parameters=0, row=line, chunk=line, field=line)
    pixels = 100 * 100
    one = costs.samples(pixels, 1)
    assert costs.batch_size(pixels, one, 50) == 1
    assert costs.batch_size(pixels, 10 * one, 50) >= 8
    assert costs.batch_size(pixels, 10**12, 50) == 50
    assert costs.batch_size(pixels, 1, 50) == 1  # never below one sample
    side = costs.largest_side(500 * MIB)
    assert costs.build(side * side) <= 500 * MIB < costs.build((side + 1) * (side + 1))
