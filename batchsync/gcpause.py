"""Pausing Python's cyclic garbage collector while a batch's records are built and written.

Parsing a batch allocates a few container objects per field of every call, and each
allocation counts toward the collector's next pass, which walks every tracked object still
alive: the whole batch in hand, again and again. Records hold no reference cycles (they are
freed by reference counting the moment they are dropped), so those passes find nothing,
yet they cost a quarter to a half of the time spent parsing, packing and unpacking a batch
(``bench/stages.py``). :func:`paused` switches the collector off for such a stretch and back
on when the last stretch in any thread ends; cycles made meanwhile elsewhere are collected
then.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0  # stretches in progress, in every thread
_resume = False  # whether the collector was on when the first of them began


@contextmanager
def paused() -> Iterator[None]:
    """Keep the cyclic collector off for the ``with`` block. Stretches may overlap and nest
    across threads: the collector is switched back on when the last one ends, and only if
    it was on when the first one began (a program that turned it off keeps it off)."""
    global _holders, _resume
    with _lock:
        if _holders == 0:
            _resume = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _resume:
                gc.enable()
