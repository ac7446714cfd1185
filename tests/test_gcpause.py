"""The collector pause: overlapping stretches in several threads, and the state it restores."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from batchsync.gcpause import paused


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_collector_is_off_inside_and_back_on_after() -> None:
    with paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_overlapping_stretches_in_two_threads_resume_only_after_the_last() -> None:
    """A writer's stretch ending while a fetch thread's is still running leaves the
    collector off; it comes back on when the second ends."""
    inside, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other() -> None:
        with paused():
            inside.set()
            release.wait(5)
            seen.append(gc.isenabled())

    thread = threading.Thread(target=other)
    with paused():
        thread.start()
        assert inside.wait(5)
    assert not gc.isenabled()  # the other thread's stretch still runs
    release.set()
    thread.join(5)
    assert seen == [False]
    assert gc.isenabled()


def test_nested_stretches_resume_once() -> None:
    with paused():
        with paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_program_that_turned_the_collector_off_keeps_it_off() -> None:
    gc.disable()
    with paused():
        pass
    assert not gc.isenabled()


def test_an_exception_inside_still_resumes_the_collector() -> None:
    with pytest.raises(ValueError, match="boom"), paused():
        raise ValueError("boom")
    assert gc.isenabled()
