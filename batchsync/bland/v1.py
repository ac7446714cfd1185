"""Bland's v1 batches API: list the batches, fetch one, parse it into records.

``GET /v1/batches`` lists the batches (offset pages, oldest first) and
``GET /v1/batches/{batch_id}`` returns one with its calls, transcripts and analysis as the
``include_*`` flags ask (``/work/shared/api/get-batch.md``). Requests go through the shared
:class:`~batchsync.bland.http.BlandHttp`, so retries, the rate cap and error handling are
those of every source. Bodies are parsed by :mod:`batchsync.payload`, whole or as they
stream in, with the same outcome; with ``spool_large_bodies`` a large body is saved to a
temporary file instead, for its writer to parse a chunk of calls at a time
(:class:`~batchsync.bland.source.SpooledBody`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from batchsync.bland.http import BlandHttp, CountedChunks, batch_path_segment, spool_to_file
from batchsync.bland.source import (
    BodyParser,
    FetchedBatch,
    ListPage,
    Parts,
    SpooledBody,
    Unchanged,
    page_through,
)
from batchsync.config import echoes_secret
from batchsync.errors import ConfigError
from batchsync.gcpause import paused
from batchsync.payload import (
    CHUNK_CALLS,
    parse_batch_body,
    parse_batch_list_body,
    parse_batch_stream,
)
from batchsync.records import BatchSummary


@dataclass
class V1Source:
    """v1 batches through the shared client: the ``BatchSource`` protocol.

    Raises ConfigError for a ``page_size`` below 1.
    """

    http: BlandHttp
    page_size: int = 1000  # batches asked for per page of the list
    # With this set, a body above the client's stream threshold is saved to a temporary
    # file and returned unparsed (FetchedBatch.body): its writer parses it a chunk of calls
    # at a time, so memory is bounded whatever the batch's size.
    spool_large_bodies: bool = False
    chunk_calls: int = CHUNK_CALLS  # calls per chunk when a spooled body is parsed
    # Parses a body decoded whole (one below the stream threshold): parse_batch_body, or a
    # stand-in with its contract, such as batchsync.parse_pool.ParsePool.parse_batch_body.
    body_parser: BodyParser = parse_batch_body

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ConfigError("the page size must be at least 1")

    def iter_batches(self, *, campaign_id: str | None = None) -> Iterator[BatchSummary]:
        """Every batch, asked for oldest first, ``page_size`` a page (``from``/``to``), read
        as :func:`~batchsync.bland.source.page_through` reads an offset-paged list."""

        def read_page(start: int) -> ListPage:
            params: dict[str, Any] = {
                "from": start,
                "to": start + self.page_size,
                "limit": self.page_size,
                "ascending": "true",
            }
            if campaign_id:
                params["campaign_id"] = campaign_id
            return self.http.get(
                "/v1/batches",
                params,
                what="the batch list",
                consume=lambda response: parse_batch_list_body(self.http.read(response)),
            )

        return page_through(read_page, what="the batch list")

    def fetch_batch(
        self, batch_id: str, parts: Parts, *, unchanged: Unchanged | None = None
    ) -> FetchedBatch:
        """One batch with the requested parts, parsed; raises ApiError, PayloadError or
        InvalidBatchId (an id that cannot be put in a URL).

        The id goes into the URL path percent-encoded, whatever it holds. A body larger
        than the client's ``stream_threshold`` bytes once decoded (a compressed or chunked
        body is read up to the threshold to know) is parsed as it arrives, call by call, so
        memory follows the records, not the body. A body for which
        ``unchanged(content hash)`` is true is not parsed at all (``parsed`` is None).
        """
        path = f"/v1/batches/{batch_path_segment(batch_id)}"
        transcripts = parts.calls and parts.transcripts

        def consume(response: httpx.Response) -> FetchedBatch:
            digest = hashlib.sha256(parts.tag.encode())
            body, rest = self.http.read_bounded(response, digest)
            if body is not None:
                if unchanged is not None and unchanged(digest.hexdigest()):
                    return FetchedBatch(None, digest.hexdigest(), len(body))
                size = len(body)
                with paused():
                    parsed = self.body_parser(
                        body, batch_id=batch_id, transcripts_requested=transcripts
                    )
                echoed = echoes_secret(body)
            elif self.spool_large_bodies:
                spooled, counted = spool_to_file(rest)
                if unchanged is not None and unchanged(digest.hexdigest()):
                    spooled.close()
                    return FetchedBatch(None, digest.hexdigest(), counted.size)
                saved = SpooledBody(
                    spooled,
                    batch_id=batch_id,
                    transcripts_requested=transcripts,
                    chunk_calls=self.chunk_calls,
                )
                return FetchedBatch(
                    None, digest.hexdigest(), counted.size, saved, counted.echoes_secret
                )
            else:
                counted = CountedChunks(rest)
                parsed = parse_batch_stream(
                    counted, batch_id=batch_id, transcripts_requested=transcripts
                )
                size, echoed = counted.size, counted.echoes_secret
            return FetchedBatch(parsed, digest.hexdigest(), size, echoes_secret=echoed)

        return self.http.get(
            path,
            {
                "include_calls": _flag(parts.calls),
                "include_transcripts": _flag(parts.transcripts),
                "include_analysis": _flag(parts.analysis),
            },
            what=f"batch {batch_id}",
            consume=consume,
            batch_id=batch_id,
        )


def _flag(value: bool) -> str:
    return "true" if value else "false"


__all__ = ["V1Source"]
