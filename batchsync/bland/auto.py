"""An account holding v1 and v2 batches: both lists read, each batch fetched by its own API."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from batchsync.bland.http import BlandHttp
from batchsync.bland.source import BatchSource, BodyParser, FetchedBatch, Parts, Unchanged
from batchsync.bland.v1 import V1Source
from batchsync.bland.v2 import V1_CARRIED_COLUMNS, V2Source, is_v2_id, v1_carried_columns
from batchsync.errors import ApiError, BatchNotFound
from batchsync.payload import parse_batch_body
from batchsync.records import BatchSummary, StoredCalls

log = logging.getLogger(__name__)

ApiChoice = Literal["auto", "v1", "v2"]
API_CHOICES: tuple[ApiChoice, ...] = ("auto", "v1", "v2")
# A list that answers one of these has no such API for this account: noted, then skipped.
LIST_GONE_STATUSES = frozenset({404, 405, 410})


@dataclass
class AutoSource:
    """The ``BatchSource`` over the v1 and the v2 API, or only one of them (``api``).

    Discovery reads both lists (v2 first), deduplicating ids. A named id goes to the API its
    shape names (a UUID to v2, any other to v1); in ``auto`` a 404 there tries the other API.
    """

    v1: BatchSource
    v2: V2Source
    api: ApiChoice = "auto"
    # --call-details for v1 batches too (their detail responses already carry transcripts).
    v1_call_details: bool = False
    _origin: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _sources(self) -> list[tuple[str, BatchSource]]:
        chosen: list[tuple[str, BatchSource]] = [("v2", self.v2), ("v1", self.v1)]
        return [(name, source) for name, source in chosen if self.api in ("auto", name)]

    def iter_batches(self, *, campaign_id: str | None = None) -> Iterator[BatchSummary]:
        """Every batch of the chosen APIs, each id once.

        In ``auto`` a list that answers 404, 405 or 410 before listing anything is noted
        (info) and skipped, unless both do; any other failure is raised as the one API's
        would be.
        """
        if self.api != "auto":
            yield from self._iter_listed(campaign_id)
            return
        # Two lists, each in its own order: merged oldest first, so that the window check
        # downstream sees one list in the order it asked for.
        listed = list(self._iter_listed(campaign_id))
        far = datetime.max.replace(tzinfo=UTC)
        yield from sorted(listed, key=lambda summary: summary.created_at or far)

    def _iter_listed(self, campaign_id: str | None) -> Iterator[BatchSummary]:
        seen: set[str] = set()
        sources = self._sources()
        gone: list[ApiError] = []
        for name, source in sources:
            listed = 0
            try:
                for summary in source.iter_batches(campaign_id=campaign_id):
                    listed += 1
                    if summary.batch_id in seen:
                        continue
                    seen.add(summary.batch_id)
                    with self._lock:
                        self._origin[summary.batch_id] = name
                    yield summary
            except ApiError as exc:
                if self.api != "auto" or exc.status_code not in LIST_GONE_STATUSES or listed:
                    raise
                gone.append(exc)
                if len(gone) == len(sources):
                    raise  # neither API has a list here: that is no account to sync
                log.info(
                    "the %s batch list answered HTTP %d: this account has no %s batches there; "
                    "listing the other API only",
                    name,
                    exc.status_code,
                    name,
                )

    def fetch_batch(
        self, batch_id: str, parts: Parts, *, unchanged: Unchanged | None = None
    ) -> FetchedBatch:
        """The batch from the API that listed it, or that its id names; in ``auto`` a 404
        there tries the other API, and the first 404 is raised when both answer it."""
        sources = dict(self._sources())
        with self._lock:
            first = self._origin.get(batch_id)
        if first is None:
            first = "v2" if is_v2_id(batch_id) else "v1"
        if first not in sources:
            first = next(iter(sources))
        try:
            return self._fetch_from(first, batch_id, parts, unchanged)
        except BatchNotFound:
            other = "v1" if first == "v2" else "v2"
            if other not in sources:
                raise
            try:
                fetched = self._fetch_from(other, batch_id, parts, unchanged)
            except BatchNotFound:
                pass
            else:
                log.info("batch %s is not a %s batch; found through the %s API", batch_id,
                         first, other)  # fmt: skip
                return fetched
            raise

    def _fetch_from(
        self, name: str, batch_id: str, parts: Parts, unchanged: Unchanged | None
    ) -> FetchedBatch:
        if name == "v2":
            return self.v2.fetch_batch(batch_id, parts, unchanged=unchanged)
        if self.v1_call_details:
            return self.v2.fetch_with_details(self.v1, batch_id, parts, unchanged=unchanged)
        fetched = self.v1.fetch_batch(batch_id, parts, unchanged=unchanged)
        parsed = fetched.parsed
        if parsed is not None and parsed.calls:
            # A stored detail stays: it is not fetched, not gone. Merged when written, after
            # the phone-number policy (see ParsedBatch.carried).
            carried = v1_carried_columns(parsed.calls)
            fetched = fetched._replace(parsed=parsed._replace(carried=carried))
        elif fetched.body is not None:
            fetched.body.carried = V1_CARRIED_COLUMNS  # merged chunk by chunk as written
        return fetched


def build_source(
    http: BlandHttp,
    api: ApiChoice = "auto",
    call_details: bool | None = None,
    *,
    stored_calls: Callable[[str], StoredCalls] | None = None,
    refresh: bool = False,
    spool_large_bodies: bool = False,
    body_parser: BodyParser = parse_batch_body,
) -> AutoSource:
    """The source for ``--api`` and ``--call-details`` (None: the default of each API), both
    APIs read through the one client ``http``.

    ``stored_calls``: a batch's stored calls, so that final calls keep their stored detail
    instead of a request (None: every detail is fetched; pass None when the stored values
    are not the API's own, under --phone-numbers hash or drop). Under --no-call-details
    stored details stay whatever is passed: they are merged when the batch is written;
    ``refresh``: fetch every detail again all the same; ``spool_large_bodies``: see
    :class:`~batchsync.bland.v1.V1Source`; ``body_parser``: what parses a v1 body decoded
    whole (a :class:`~batchsync.parse_pool.ParsePool`'s, to parse in worker processes).
    """
    v1 = V1Source(http, spool_large_bodies=spool_large_bodies, body_parser=body_parser)
    v2 = V2Source(
        http,
        call_details=True if call_details is None else call_details,
        stored_calls=stored_calls,
        refresh_details=refresh,
    )
    return AutoSource(v1, v2, api, v1_call_details=call_details is True)
