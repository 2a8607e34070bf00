"""Score-CAM's masked passes shared among CPU worker threads (napari_artseg.scorecam_passes)."""

from __future__ import annotations

import threading

import pytest
import torch
from test_scorecam import ATOL, _force_channels, _images, _model

from napari_artseg.scorecam import WEIGHTINGS, scorecam, scorecam_reference
from napari_artseg.scorecam_passes import CpuWorkers, resolve_workers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("artseg-scorecam")]


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_match_the_reference_with_dead_and_constant_channels(workers: int) -> None:
    model = _model(18)
    _force_channels(model, dead=[0, 3, 5], constant={2: 0.7, 9: 1.3})
    images = _images(2)
    for weighting in WEIGHTINGS:
        ref = scorecam_reference(model, images, weighting=weighting)
        for batch_size in (1, 5, 1000):
            fast = scorecam(model, images, batch_size=batch_size, weighting=weighting,
                            workers=workers)
            torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)
    approx_one = scorecam(model, images, max_channels=7, score_scale=0.5, workers=1)
    approx_two = scorecam(model, images, max_channels=7, score_scale=0.5, workers=workers)
    torch.testing.assert_close(approx_two, approx_one, atol=ATOL, rtol=0)


def test_passes_run_in_single_thread_workers_and_the_caller_is_left_as_it_was() -> None:
    model = _model(18)
    images = _images(1)
    seen: list[tuple[int, int]] = []
    # the scoring network is a copy of the model; copied layers keep this hook
    handle = model.fc.register_forward_hook(
        lambda m, inp, out: seen.append((threading.get_ident(), torch.get_num_threads())))
    torch.set_num_threads(2)
    try:
        scorecam(model, images, batch_size=4, workers="auto")
    finally:
        handle.remove()
    caller = threading.get_ident()
    worker_calls = [(ident, threads) for ident, threads in seen if ident != caller]
    assert len({ident for ident, _ in worker_calls}) == 2  # two workers shared the passes
    assert {threads for _, threads in worker_calls} == {1}  # each with one torch thread
    assert torch.get_num_threads() == 2  # the caller's count is unchanged
    assert not _worker_threads()  # the workers are gone
    fresh: list[int] = []  # and a new thread starts from the caller's count again
    thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert fresh == [2]


def test_one_worker_starts_no_thread_and_runs_inline() -> None:
    with CpuWorkers(1) as pool:
        assert pool.map(lambda x: (x * 2, torch.is_inference_mode_enabled()), [1, 2]) == [
            (2, True), (4, True)]
        assert not _worker_threads()
        assert pool.seconds_per_input(lambda: 3.0) == 3.0
    with CpuWorkers(2) as pool:
        assert len(_worker_threads()) <= 2
        # two workers measured side by side, each 3 s per input: 1.5 s per input together
        assert pool.seconds_per_input(lambda: 3.0) == 1.5
    assert not _worker_threads()


def test_resolve_workers() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    torch.set_num_threads(2)
    assert resolve_workers("auto", cpu, 128) == 2
    assert resolve_workers("auto", cpu, 1) == 1  # never more workers than passes
    assert resolve_workers(3, cpu, 128) == 3
    assert resolve_workers(4, cuda, 128) == 1  # accelerators batch instead
    for bad in (0, -1, 1.5, "many", True, None):
        with pytest.raises(ValueError, match="workers"):
            resolve_workers(bad, cpu, 8)
    with pytest.raises(ValueError, match="workers"):
        scorecam(_model(18, width=2), _images(1), workers=0)


def test_auto_batch_size_is_measured_with_the_workers_side_by_side() -> None:
    from napari_artseg.scorecam_tuning import clear_cache, resolve_batch_size, scoring_network

    clear_cache()
    model = _model(18, width=2)
    network = scoring_network(model, True, True)
    cpu = torch.device("cpu")
    with CpuWorkers(2) as pool:
        measured: list[int] = []
        original = pool.seconds_per_input

        def counting(measure):
            measured.append(1)
            return original(measure)

        pool.seconds_per_input = counting
        batch = resolve_batch_size("auto", network, (1, 32, 32), 9, cpu, False, True, model, pool)
        assert 1 <= batch <= 5  # candidates are capped at one worker's share (5 of 9 passes)
        assert measured  # every timing ran through the pool
        count = len(measured)
        again = resolve_batch_size("auto", network, (1, 32, 32), 9, cpu, False, True, model, pool)
        assert again == batch and len(measured) == count  # cached
    assert resolve_batch_size(7, network, (1, 32, 32), 5, cpu, False, True, model,
                              CpuWorkers(1)) == 5
    clear_cache()
