"""Parsing batch bodies in worker processes, so that parsing and writing use both cores.

One process runs Python one thread at a time: while the writer formats rows and waits on
the database, a fetch thread parsing the next batch gets only what the writer leaves of
the GIL. A :class:`ParsePool` runs :func:`~batchsync.payload.parse_batch_body` in a
bounded pool of parser processes instead; a fetch thread hands its body over and waits,
without holding the GIL, for the records.

Contract, for a caller that swaps ``pool.parse_batch_body`` in for the function itself:

- the same records, and the same exception (type and message) for a body that cannot be
  parsed; an exception whose type cannot be rebuilt in this process arrives as the
  worker's :class:`~concurrent.futures.process.BrokenProcessPool` or pickling error,
  which the sync records as that batch's internal error;
- a worker that dies (killed, out of memory) breaks the pool: that body and every later
  one are parsed in the calling thread, as with ``--parse-workers 0``, after one warning;
- the workers are started with ``forkserver`` (never ``fork``: the parent holds database
  connections and threads), ignore SIGINT (Ctrl-C is the parent's to handle: it finishes
  or rolls back the batch in hand), and exit on their own when the parent is gone, even
  after a SIGKILL, within :data:`PARENT_CHECK_SECONDS`.

The records cross the process boundary as plain tuples of primitives and datetimes (see
:func:`_packed`): pickling named tuples costs about twice as much per call, all of it on
the receiving side too. A pool made with ``encode_for`` sends a batch's calls and lines
back as driver rows instead (:mod:`batchsync.encoded`): in ``ParsedBatch.encoded``, with
``calls`` and ``transcripts`` None. The caller asks for that only where rows are written
as parsed (phone numbers kept, no transcript redaction); the writer parses the body
again where it needs the records after all (a body that quotes the API key, say).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from typing import Any

from batchsync.encoded import FIELDS, EncodedBatch, EncodedRows, Encoder, RowSpec
from batchsync.gcpause import paused
from batchsync.payload import parse_batch_body
from batchsync.records import (
    AnalysisRecord,
    BatchLogRecord,
    BatchRecord,
    CallRecord,
    ErrorRecord,
    ParsedBatch,
    QueueStatusCountRecord,
    TranscriptLineRecord,
)

log = logging.getLogger(__name__)

# Objects tracked by the collector and still alive between two tasks of a worker, above
# which it collects before the next task: records are freed by reference counting, so
# only what cycles hold (an exception's traceback) stays.
_UNCOLLECTED_LIMIT = 50_000

# How often a worker checks that the process that started it is still there.
PARENT_CHECK_SECONDS = 0.2

_new = tuple.__new__
# The record type of each list field of ParsedBatch, in its field order.
_LIST_FIELDS: tuple[tuple[str, type[tuple[Any, ...]]], ...] = (
    ("queue_status_counts", QueueStatusCountRecord),
    ("errors", ErrorRecord),
    ("calls", CallRecord),
    ("transcripts", TranscriptLineRecord),
    ("logs", BatchLogRecord),
)

Packed = tuple[Any, ...]


def default_parse_workers() -> int:
    """Parser processes by default: the usable CPUs but one (the writer's), 0 on one CPU."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(cpus - 1, 1) if cpus > 1 else 0


class ParsePool:
    """Up to ``workers`` parser processes; :meth:`parse_batch_body` as the payload's own.

    A context manager: leaving it stops the workers (waiting for a parse in progress).
    The pool holds no queue of its own: at most one body per waiting caller is in it.
    """

    def __init__(self, workers: int, *, encode_for: RowSpec | None = None) -> None:
        if workers < 1:
            raise ValueError("a parse pool needs at least one worker")
        self._encode = encode_for is not None
        context = multiprocessing.get_context("forkserver")
        # The fork server imports the parser once; each worker forked from it starts ready.
        context.set_forkserver_preload(["batchsync.parse_pool"])
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(os.getpid(), encode_for),
        )
        self._broken = False
        # Start the workers now, while the sync plans its run, not when the first body waits.
        with _main_not_rerun():
            for _ in range(workers):
                self._executor.submit(_ready)

    def parse_batch_body(
        self, body: bytes, *, batch_id: str, transcripts_requested: bool = True
    ) -> ParsedBatch:
        """:func:`~batchsync.payload.parse_batch_body` in a worker process: same records,
        same PayloadError; in the calling thread once the pool is broken. With
        ``encode_for``, the calls and lines come back encoded (see the module's docstring)."""
        if not self._broken:
            try:
                future = self._executor.submit(
                    _parse, body, batch_id, transcripts_requested, self._encode
                )
                packed = future.result()
                with paused():
                    parsed = _unpacked(packed)
                if parsed.encoded is not None:
                    parsed = parsed._replace(
                        encoded=parsed.encoded._replace(
                            body=body,
                            batch_id=batch_id,
                            transcripts_requested=transcripts_requested,
                        )
                    )
                return parsed
            except BrokenProcessPool:
                self._broken = True
                log.warning(
                    "a parser process ended unexpectedly: parsing the rest of the run in this "
                    "process (as with --parse-workers 0)"
                )
        return parse_batch_body(
            body, batch_id=batch_id, transcripts_requested=transcripts_requested
        )

    def close(self) -> None:
        """Stop the workers; bodies not yet started are not parsed."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ParsePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def _main_not_rerun() -> Iterator[None]:
    """Start processes without running the sync's ``__main__`` script in them again.

    multiprocessing runs the parent's main script in the fork server and in each worker,
    under another name, unless ``__main__`` was imported as a package's ``__main__``
    (``python -m batchsync``). The ``batchsync`` console script is a file: run again, it
    imports the whole CLI (SQLAlchemy, Alembic, httpx), 0.6 s of a run that has nothing to
    parse. The workers need none of it: they run only this module's functions.
    """
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is not None or not hasattr(main, "__file__"):
        yield
        return
    main.__spec__ = ModuleSpec("batchsync.__main__", None)
    try:
        yield
    finally:
        main.__spec__ = None


def _start_worker(parent_pid: int, encode_for: RowSpec | None = None) -> None:
    """Set up a parser process: Ctrl-C is the parent's, and the parent's end is its end.

    The cyclic garbage collector is off for the worker's life: the records it builds hold
    no cycles, and its passes over each batch in hand cost a third of the parse
    (:mod:`batchsync.gcpause`). A body that fails leaves an exception and its traceback,
    which do form cycles: :func:`_parse` collects when such objects have piled up.
    """
    global _encoder
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.disable()
    _encoder = None if encode_for is None else Encoder(encode_for)
    watcher = threading.Thread(
        target=_exit_with, args=(parent_pid, os.getppid()), name="batchsync-parent", daemon=True
    )
    watcher.start()


def _exit_with(parent_pid: int, starter_pid: int) -> None:
    """End this process as soon as the sync process (or the fork server that started this
    one on its behalf, which ends with it) is gone: nothing else would end it after a
    SIGKILL of the sync."""
    while True:
        time.sleep(PARENT_CHECK_SECONDS)
        if os.getppid() != starter_pid or not _alive(parent_pid):
            os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user took the number: ours is gone
        return False
    return True


def _ready() -> None:
    """Nothing: submitted once per worker to start it early."""


# The worker's encoder, when its pool encodes (set by _start_worker).
_encoder: Encoder | None = None


def _parse(body: bytes, batch_id: str, transcripts_requested: bool, encode: bool = False) -> Packed:
    """The worker's side: parse, then pack the records (or their rows) for the trip back."""
    if gc.get_count()[0] > _UNCOLLECTED_LIMIT:
        gc.collect()  # what earlier tasks left in cycles (a failed body's traceback)
    parsed = parse_batch_body(body, batch_id=batch_id, transcripts_requested=transcripts_requested)
    return _packed(parsed, _encoder if encode else None)


def _packed(parsed: ParsedBatch, encoder: Encoder | None = None) -> Packed:
    """``parsed`` as plain tuples (records without their named-tuple class); with an
    ``encoder``, its calls and lines as rows (when it has calls)."""
    analysis = None if parsed.analysis is None else tuple(parsed.analysis)
    rows: dict[str, EncodedRows] = {}
    if encoder is not None and parsed.calls is not None:
        try:
            rows = {
                name: encoder.encode(name, records)
                for name in FIELDS
                if (records := getattr(parsed, name)) is not None
            }
        except Exception:
            # The records go back as they are, and the writer meets the value itself, with
            # the message and outcome a batch written from records gets (a number out of
            # range for its column fails the batch as "the database rejected it").
            rows = {}
    lists: list[Any] = []
    for name, _ in _LIST_FIELDS:
        records = getattr(parsed, name)
        if name in rows:
            lists.append(rows[name])
        else:
            lists.append(None if records is None else [tuple(r) for r in records])
    return (tuple(parsed.batch), analysis, *lists)


def _unpacked(packed: Packed) -> ParsedBatch:
    """The ParsedBatch that :func:`_packed` was given; encoded rows go to ``encoded`` (its
    ``body`` and arguments left for the caller to fill in)."""
    batch, analysis, *lists = packed
    records: list[Any] = [
        None if rows is None or isinstance(rows, EncodedRows) else [_new(kind, r) for r in rows]
        for (_, kind), rows in zip(_LIST_FIELDS, lists, strict=True)
    ]
    parsed = ParsedBatch(
        _new(BatchRecord, batch),
        None if analysis is None else _new(AnalysisRecord, analysis),
        *records,
    )
    encoded = dict(zip((name for name, _ in _LIST_FIELDS), lists, strict=True))
    calls = encoded["calls"]
    if isinstance(calls, EncodedRows):
        transcripts = encoded["transcripts"]
        parsed = parsed._replace(
            encoded=EncodedBatch(
                calls, transcripts if isinstance(transcripts, EncodedRows) else None, b"", "", False
            )
        )
    return parsed
