"""What every source of batches gives the sync: the ``BatchSource`` protocol and its types.

A source lists batches (``iter_batches``, :class:`~batchsync.records.BatchSummary`) and
fetches one (``fetch_batch``, :class:`FetchedBatch` holding a
:class:`~batchsync.records.ParsedBatch`). The v1 source (:mod:`batchsync.bland.v1`), the v2
source (:mod:`batchsync.bland.v2`) and both at once (:mod:`batchsync.bland.auto`) follow it;
the sync and the storage layer see only these types, never HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, Protocol

from batchsync.errors import PayloadError
from batchsync.payload import CHUNK_CALLS, CallsSink, parse_batch_stream
from batchsync.records import BatchSummary, ParsedBatch

log = logging.getLogger(__name__)

# One page of a batch list read from an offset: the batches it lists (an entry with an id
# but a bad field is listed, with its ``error``), and the errors of its bad entries in order
# (``batch_id`` None: an entry without a usable id, left out).
ListPage = tuple[list[BatchSummary], list[PayloadError]]


def page_through(read_page: Callable[[int], ListPage], *, what: str) -> Iterator[BatchSummary]:
    """Every batch of an offset-paged list (``read_page(offset)``), each id once.

    A page shorter than asked does not end the listing (a server may cap its pages), and
    the next offset follows what the page held, entries left out included. An entry
    without a usable id is left out with a warning: one bad entry must not end discovery.
    An empty page ends the listing, and so does a page that brings no batch not seen
    before, so an API that ignores the offset cannot keep the run paging forever; a page
    of bad entries only goes on to the next page, unless it is the same as the last one.
    """
    offset = 0
    seen: set[str] = set()
    last_problems: list[str] = []
    while True:
        page, problems = read_page(offset)
        left_out = [problem for problem in problems if problem.batch_id is None]
        for problem in left_out:
            log.warning("%s: %s; that entry is left out", what, problem)
        new = [summary for summary in page if summary.batch_id not in seen]
        seen.update(summary.batch_id for summary in new)
        yield from new
        if not page:
            described = [str(problem) for problem in problems]
            if not problems or described == last_problems:
                return
            last_problems = described
        elif not new:
            log.warning("%s repeated itself at offset %d; stopping the listing", what, offset)
            return
        offset += len(page) + len(left_out)


@dataclass(frozen=True)
class Parts:
    """Which parts of a batch to request (the API's include_* flags)."""

    calls: bool = True
    transcripts: bool = True
    analysis: bool = True

    @property
    def tag(self) -> str:
        """A short, stable name of the combination, stored with the batch."""
        names = [n for n, on in (("calls", self.calls), ("transcripts", self.transcripts),
                                 ("analysis", self.analysis)) if on]  # fmt: skip
        return ",".join(names) or "none"

    def covers(self, tag: str | None) -> bool:
        """Whether a batch stored with ``tag`` holds at least these parts."""
        return tag is not None and set(self.tag.split(",")) <= set(tag.split(","))


class SpooledBody:
    """A batch body saved to a temporary file as it arrived, to be parsed by its writer.

    Lets a batch of any size be parsed a chunk of calls at a time while those calls are
    written (``parse`` with ``on_calls``), instead of holding all its records at once.
    """

    # The columns each of its calls keeps from a stored detail (ParsedBatch.carried, for
    # every call): set for a v1 body whose calls' details are not fetched.
    carried: frozenset[str] | None = None
    # Whether a body fetched while this one is parsed (a call's detail) may quote the API
    # key: its records need redacting, as FetchedBatch.echoes_secret says for the rest.
    # Read after each chunk handed to ``on_calls`` and after ``parse`` returns.
    echoes_secret: bool = False

    def __init__(
        self,
        file: BinaryIO,
        *,
        batch_id: str,
        transcripts_requested: bool,
        chunk_calls: int = CHUNK_CALLS,
    ) -> None:
        self._file = file
        self.batch_id = batch_id
        self.transcripts_requested = transcripts_requested
        self.chunk_calls = chunk_calls

    def chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        self._file.seek(0)
        while chunk := self._file.read(size):
            yield chunk

    def parse(self, on_calls: CallsSink | None = None) -> ParsedBatch:
        """The body's records, as :func:`~batchsync.payload.parse_batch_stream` gives them;
        with ``on_calls``, the calls go to it in chunks and are not returned."""
        return parse_batch_stream(
            self.chunks(),
            batch_id=self.batch_id,
            transcripts_requested=self.transcripts_requested,
            on_calls=on_calls,
            chunk_size=self.chunk_calls,
        )

    def close(self) -> None:
        self._file.close()


class FetchedBatch(NamedTuple):
    # None: the caller judged the content unchanged, so not parsed; or the body is in
    # ``body``, to be parsed by the caller.
    parsed: ParsedBatch | None
    content_sha256: str
    size: int
    body: SpooledBody | None = None
    echoes_secret: bool = False  # the body may quote the API key: its strings need redacting


class BodyParser(Protocol):
    """:func:`~batchsync.payload.parse_batch_body`'s signature: records or PayloadError."""

    def __call__(
        self, body: bytes, *, batch_id: str, transcripts_requested: bool = True
    ) -> ParsedBatch: ...


# Given a fetched body's content hash, whether it is the one already stored, so that the
# body need not even be parsed. The caller (the sync) owns that decision.
Unchanged = Callable[[str], bool]


class BatchSource(Protocol):
    """Where batches come from; the storage layer sees only what this yields."""

    def iter_batches(self, *, campaign_id: str | None = None) -> Iterator[BatchSummary]: ...

    def fetch_batch(
        self, batch_id: str, parts: Parts, *, unchanged: Unchanged | None = None
    ) -> FetchedBatch: ...


__all__ = ["BatchSource", "FetchedBatch", "Parts", "SpooledBody", "Unchanged"]
