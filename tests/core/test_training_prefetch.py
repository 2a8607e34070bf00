"""Batches prepared in a background thread: same batches, errors passed on, no thread left."""

import threading

import pytest
import torch

from napari_artseg.config import preset
from napari_artseg.training import loop
from napari_artseg.training import prefetch as prefetch_module
from napari_artseg.training.classifier import train_classifier
from napari_artseg.training.data import TrainingItem
from napari_artseg.training.prefetch import pin_memory_for, prefetch, prefetch_depth


def _live_threads():
    return {t for t in threading.enumerate() if t.is_alive()}


def test_pin_memory_only_for_cuda():
    assert pin_memory_for(torch.device("cuda")) is True
    assert pin_memory_for(torch.device("cuda", 0)) is True
    assert pin_memory_for(torch.device("cpu")) is False
    assert pin_memory_for(torch.device("mps")) is False
    assert pin_memory_for("cpu") is False


def test_prefetching_on_a_cpu_needs_a_core_of_its_own(monkeypatch):
    """Where torch's threads take every core, the batch thread would slow them down."""
    monkeypatch.setattr(prefetch_module, "usable_cores", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert prefetch_depth(torch.device("cpu")) == 0
    assert prefetch_depth(torch.device("cuda")) == prefetch_module.PREFETCH_BATCHES == 2
    assert prefetch_depth(torch.device("mps")) == 2
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert prefetch_depth("cpu") == 2
    assert prefetch_module.usable_cores() >= 1


def test_items_come_in_order_from_another_thread():
    ran_in = set()

    def source():
        for i in range(20):
            ran_in.add(threading.current_thread())
            yield torch.full((2,), float(i))

    got = list(prefetch(source(), depth=3, transform=lambda t: t * 2))
    assert [float(t[0]) for t in got] == [2.0 * i for i in range(20)]
    assert threading.current_thread() not in ran_in and len(ran_in) == 1
    assert list(prefetch(iter([1, 2]), depth=0)) == [1, 2]


def test_an_error_in_the_source_reaches_the_consumer():
    def source():
        yield 1
        raise ValueError("bad crop")

    before = _live_threads()
    stream = prefetch(source(), depth=2)
    assert next(stream) == 1
    with pytest.raises(ValueError, match="bad crop"):
        next(stream)
    assert _live_threads() == before


def test_closing_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            yield from range(1000)
        finally:
            closed.set()

    before = _live_threads()
    stream = prefetch(source(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed.is_set() and _live_threads() == before


def _items(n=16, side=32):
    generator = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        image = torch.randn(1, side, side, generator=generator)
        label = i % 2
        if label:
            image[:, 8:20, 8:20] += 3.0  # a bright square: something to learn
        items.append(TrainingItem(f"im{i}.tif", label, image, (2 * side, 2 * side)))
    return items


def _config():
    return preset("tiny", input_size=32, batch_size=2, classifier_epochs=2, device="cpu")


def test_closing_training_mid_epoch_leaves_no_thread(monkeypatch):
    monkeypatch.setattr(loop, "prefetch_depth", lambda device: 2)  # whatever the cores
    items = _items()
    before = _live_threads()
    generator = train_classifier(items, list(range(12)), list(range(12, 16)), _config(),
                                 torch.device("cpu"))
    seen_worker = False
    for event in generator:
        names = {t.name for t in _live_threads() - before}
        seen_worker |= "artseg-classifier-batches" in names
        if event.kind == "step" and event.step == 2:  # 6 batches per epoch: mid-epoch
            break
    generator.close()
    assert seen_worker  # the batches really were prepared in a background thread
    assert _live_threads() == before


def test_prefetching_trains_the_same_weights(monkeypatch):
    def train(depth):
        monkeypatch.setattr(loop, "prefetch_depth", lambda device: depth)
        generator = train_classifier(_items(), list(range(12)), list(range(12, 16)), _config(),
                                     torch.device("cpu"))
        while True:
            try:
                next(generator)
            except StopIteration as stop:
                model, result = stop.value
                return model.state_dict(), result.history

    plain_state, plain_history = train(0)
    ahead_state, ahead_history = train(2)
    assert plain_history == ahead_history and len(plain_history) == 2
    for key, value in plain_state.items():
        assert torch.equal(value, ahead_state[key]), key
