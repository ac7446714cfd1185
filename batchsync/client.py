"""The Bland API over httpx: authentication, timeouts, retries, paging, typed errors.

:class:`BlandClient` knows HTTP and nothing of SQL. Each request is retried on what is
transient (429, 500/502/503/504, connection errors, timeouts) with capped exponential
backoff and jitter, honouring ``Retry-After``; 401/403 raise :class:`AuthError` at once,
404 raises :class:`BatchNotFound`. Batch bodies are decoded and parsed by
:mod:`batchsync.payload`, whole or as they stream in, with the same outcome; with
``spool_large_bodies`` a large body is saved to a temporary file instead, for its writer to
parse a chunk of calls at a time (:class:`SpooledBody`).

A source of batches is anything with ``iter_batches`` and ``fetch_batch``
(:class:`BatchSource`): the v1 API here; a v2 source, which lists batches and their
calls separately, would produce the same :class:`~batchsync.payload.ParsedBatch`.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, NamedTuple, NoReturn, Protocol, TypeVar, cast

import httpx
import orjson
import tenacity

from batchsync import __version__
from batchsync.config import ApiSettings, echoes_secret, redact
from batchsync.errors import (
    ApiError,
    ApiUnreachable,
    AuthError,
    BatchNotFound,
    ConfigError,
    HttpStatusError,
    InvalidBatchId,
    PayloadError,
    TransientApiError,
)
from batchsync.payload import (
    CHUNK_CALLS,
    MAX_KEY_BYTES,
    BatchSummary,
    CallsSink,
    ParsedBatch,
    key_too_long,
    parse_batch_body,
    parse_batch_list_body,
    parse_batch_stream,
    recordable_id,
)

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
T = TypeVar("T")


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


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: ``attempts`` in all, waits capped at ``max_wait``."""

    attempts: int = 5
    initial_wait: float = 1.0
    max_wait: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError("--retries must allow at least one attempt")
        if self.initial_wait < 0 or self.max_wait < 0:
            raise ConfigError("retry waits cannot be negative")


@dataclass
class ClientStats:
    """Counters of one client's HTTP traffic; safe to update from several threads."""

    requests: int = 0
    retries: int = 0
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, requests: int = 0, retries: int = 0, bytes_received: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.bytes_received += bytes_received


class RateLimiter:
    """Space request starts at least ``1 / per_second`` apart, across threads."""

    def __init__(self, per_second: float, sleep: Callable[[float], None] = time.sleep) -> None:
        if not per_second >= 0.001:  # also refuses nan
            raise ConfigError("--max-requests-per-second must be a number, at least 0.001")
        self._interval = 1.0 / per_second
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


@dataclass
class BlandClient:
    """The Bland v1 batches API."""

    settings: ApiSettings
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    page_size: int = 1000
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    max_requests_per_second: float | None = None
    max_connections: int = 10
    # Bodies up to this size are decoded whole (fastest); larger ones, or of unknown length,
    # are parsed as they stream in (bounded memory). Both give the same records and errors.
    stream_threshold: int = 32 * 1024 * 1024
    # With this set, a body above the stream threshold is saved to a temporary file and
    # returned unparsed (FetchedBatch.body): its writer parses it a chunk of calls at a
    # time, so memory is bounded whatever the batch's size.
    spool_large_bodies: bool = False
    chunk_calls: int = CHUNK_CALLS  # calls per chunk when a spooled body is parsed
    # Parses a body decoded whole (one below the stream threshold): parse_batch_body, or a
    # stand-in with its contract, such as batchsync.parse_pool.ParsePool.parse_batch_body.
    body_parser: BodyParser = parse_batch_body
    stats: ClientStats = field(default_factory=ClientStats)

    def __post_init__(self) -> None:
        if self.settings.api_key is None:
            raise ConfigError("no API key: set BLAND_API_KEY or pass --api-key")
        if self.page_size < 1:
            raise ConfigError("the page size must be at least 1")
        self._http = httpx.Client(
            base_url=self.settings.base_url,
            headers={
                "authorization": self.settings.api_key.reveal(),
                "user-agent": f"batchsync/{__version__}",
                "accept": "application/json",
            },
            timeout=httpx.Timeout(self.settings.timeout, connect=min(10.0, self.settings.timeout)),
            limits=httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
            transport=self.transport,
        )
        self._closed = False
        self._limiter = (
            RateLimiter(self.max_requests_per_second, self.sleep)
            if self.max_requests_per_second
            else None
        )

    def close(self) -> None:
        """Close the connections; requests still in flight fail without being retried."""
        self._closed = True
        self._http.close()

    def _should_retry(self, state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        return isinstance(exc, TransientApiError) and not self._closed

    def __enter__(self) -> BlandClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def iter_batches(self, *, campaign_id: str | None = None) -> Iterator[BatchSummary]:
        """Every batch, asked for oldest first: offset pages, until a page brings nothing new.

        A page shorter than ``page_size`` does not end the listing (a server may cap its
        pages below what was asked), and the next offset follows what the page held. An
        empty page, or one that brings no batch not seen before, ends it, so an API that
        ignores the offset cannot keep the run paging forever.
        """
        start = 0
        seen: set[str] = set()
        last_problems: list[str] = []
        while True:
            params: dict[str, Any] = {
                "from": start,
                "to": start + self.page_size,
                "limit": self.page_size,
                "ascending": "true",
            }
            if campaign_id:
                params["campaign_id"] = campaign_id
            page, problems = self._get(
                "/v1/batches",
                params,
                what="the batch list",
                consume=lambda response: parse_batch_list_body(self._read(response)),
            )
            # An entry without a usable id is left out with a warning: one bad entry must
            # not end discovery.
            for problem in problems:
                if problem.batch_id is None:  # one with an id fails its batch in the run
                    log.warning("the batch list: %s; that entry is left out", problem)
            new = [summary for summary in page if summary.batch_id not in seen]
            seen.update(summary.batch_id for summary in new)
            yield from new
            if not page:
                # A page of bad entries only goes on to the next page, unless it is the
                # same as the last one (an API that ignores the offset).
                described = [str(problem) for problem in problems]
                if not problems or described == last_problems:
                    return
                last_problems = described
                start += len(problems)
                continue
            if not new:
                log.warning(
                    "the batch list repeated itself at offset %d; stopping the listing", start
                )
                return
            start += len(page) + len(problems)

    def fetch_batch(
        self, batch_id: str, parts: Parts, *, unchanged: Unchanged | None = None
    ) -> FetchedBatch:
        """One batch with the requested parts, parsed; raises ApiError, PayloadError or
        InvalidBatchId (an id that cannot be put in a URL).

        The id goes into the URL path percent-encoded, whatever it holds. A body larger
        than ``stream_threshold`` bytes once decoded (a compressed or chunked body is read
        up to the threshold to know) is parsed as it arrives, call by call, so memory
        follows the records, not the body. A body for which
        ``unchanged(content hash)`` is true is not parsed at all (``parsed`` is None).
        """
        path = f"/v1/batches/{batch_path_segment(batch_id)}"
        transcripts = parts.calls and parts.transcripts

        def consume(response: httpx.Response) -> FetchedBatch:
            digest = hashlib.sha256(parts.tag.encode())
            length = response.headers.get("content-length")
            encoded = response.headers.get("content-encoding", "identity").strip().lower()
            small = length is not None and length.isdigit() and int(length) <= self.stream_threshold
            chunks = self._chunks(response, digest)
            head: list[bytes] = []
            if small and encoded in ("", "identity"):
                head.append(b"".join(chunks))
                whole = True
            else:
                # A compressed body's Content-Length is its compressed size (gzip can shrink
                # JSON a hundredfold), and a chunked body has none: the threshold applies to
                # the decoded bytes, read until it is passed, then parsed as they stream in.
                whole, seen = True, 0
                for chunk in chunks:
                    head.append(chunk)
                    seen += len(chunk)
                    if seen > self.stream_threshold:
                        whole = False
                        break
            if whole:
                body = b"".join(head)
                del head[:]
                if unchanged is not None and unchanged(digest.hexdigest()):
                    return FetchedBatch(None, digest.hexdigest(), len(body))
                size = len(body)
                parsed = self.body_parser(
                    body, batch_id=batch_id, transcripts_requested=transcripts
                )
                echoed = echoes_secret(body)
            elif self.spool_large_bodies:
                # Closed by the SpooledBody's owner, not here: SIM115 does not apply.
                spooled = tempfile.TemporaryFile(prefix="batchsync-")  # noqa: SIM115
                counted = _Counted(_drained(head, chunks))
                try:
                    for chunk in counted:
                        spooled.write(chunk)
                except BaseException:
                    spooled.close()
                    raise
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
                counted = _Counted(_drained(head, chunks))
                parsed = parse_batch_stream(
                    counted, batch_id=batch_id, transcripts_requested=transcripts
                )
                size, echoed = counted.size, counted.echoes_secret
            return FetchedBatch(parsed, digest.hexdigest(), size, echoes_secret=echoed)

        return self._get(
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

    def get_body(
        self, path: str, params: dict[str, Any], *, what: str, batch_id: str | None = None
    ) -> bytes:
        """GET ``path`` and return the whole body, with this client's auth, retries, rate
        cap and error rules (for the endpoints other sources read: v2, the calls API)."""
        return self._get(path, params, what=what, consume=self._read, batch_id=batch_id)

    def _chunks(self, response: httpx.Response, digest: Any = None) -> Iterator[bytes]:
        for chunk in response.iter_bytes():
            self.stats.add(bytes_received=len(chunk))
            if digest is not None:
                digest.update(chunk)
            yield chunk

    def _read(self, response: httpx.Response, digest: Any = None) -> bytes:
        return b"".join(self._chunks(response, digest))

    def _get(
        self,
        path: str,
        params: dict[str, Any],
        *,
        what: str,
        consume: Callable[[httpx.Response], T],
        batch_id: str | None = None,
    ) -> T:
        """GET ``path`` and hand the streamed response to ``consume``, retrying what is
        transient (a connection lost while the body streams in too)."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retry.attempts),
            wait=self._wait,
            retry=self._should_retry,
            before_sleep=lambda state: self._log_retry(state, what),
            sleep=self.sleep,
            reraise=True,
        )
        try:
            return cast(T, retrying(self._get_once, path, params, what, consume, batch_id))
        except TransientApiError as exc:
            if self.retry.attempts > 1:
                raise type(exc)(
                    f"{exc} (gave up after {self.retry.attempts} attempts)",
                    status_code=exc.status_code,
                ) from None
            raise

    def _get_once(
        self,
        path: str,
        params: dict[str, Any],
        what: str,
        consume: Callable[[httpx.Response], T],
        batch_id: str | None,
    ) -> T:
        if self._limiter is not None:
            self._limiter.acquire()
        self.stats.add(requests=1)
        started = time.perf_counter()
        try:
            with self._http.stream("GET", path, params=params) as response:
                try:
                    if response.status_code >= 300:
                        try:
                            response.read()
                            message = _error_message(response)
                        except httpx.DecodingError:  # an error body in the wrong encoding
                            message = response.reason_phrase or "no message"
                        self._raise_for_status(response, what, message)
                    try:
                        return consume(response)
                    except httpx.DecodingError:
                        # The body is not in the Content-Encoding its headers name. The
                        # decoder's own message may quote body bytes, so it is not repeated.
                        encoding = response.headers.get("content-encoding", "none")
                        raise PayloadError(
                            "the body does not decode as its Content-Encoding header says "
                            f"({encoding})",
                            batch_id=batch_id,
                            field="(body)",
                        ) from None
                finally:
                    _log_request(response, time.perf_counter() - started)
        except httpx.TransportError as exc:
            log.debug(
                "HTTP GET %s -> %s, %.0f ms",
                path,
                type(exc).__name__,
                (time.perf_counter() - started) * 1000,
            )
            if isinstance(exc, httpx.TimeoutException):
                raise ApiUnreachable(
                    f"{what}: timed out ({type(exc).__name__}) at {self.settings.base_url}"
                ) from None
            raise ApiUnreachable(
                f"{what}: cannot reach {self.settings.base_url} ({type(exc).__name__}: {exc})"
            ) from None

    def _raise_for_status(self, response: httpx.Response, what: str, message: str) -> NoReturn:
        status = response.status_code
        if status in (401, 403):
            raise AuthError(
                f"the Bland API rejected the API key (HTTP {status}: {message}); "
                "check BLAND_API_KEY",
                status_code=status,
            )
        if status == 404:
            raise BatchNotFound(f"{what}: not found (HTTP 404: {message})", status_code=404)
        if status in TRANSIENT_STATUSES:
            reason = "rate limited" if status == 429 else f"server error HTTP {status}"
            raise TransientApiError(
                f"{what}: {reason} ({message})",
                status_code=status,
                retry_after=_retry_after(response.headers.get("retry-after")),
            )
        raise HttpStatusError(f"{what}: unexpected HTTP {status} ({message})", status_code=status)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientApiError) and exc.retry_after is not None:
            return min(exc.retry_after, self.retry.max_wait)
        backoff = tenacity.wait_exponential_jitter(
            initial=self.retry.initial_wait, max=self.retry.max_wait, jitter=self.retry.initial_wait
        )
        return min(backoff(state), self.retry.max_wait)

    def _log_retry(self, state: tenacity.RetryCallState, what: str) -> None:
        self.stats.add(retries=1)
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s; retrying in %.1fs (attempt %d of %d)",
            exc,
            wait,
            state.attempt_number + 1,
            self.retry.attempts,
            extra={"batch": what, "status": getattr(exc, "status_code", None), "wait": wait},
        )


def batch_path_segment(batch_id: str) -> str:
    """The batch id as one percent-encoded URL path segment; InvalidBatchId if it has none.

    Every character is encoded but the unreserved ones, so '/', '?', '#', '%', spaces,
    control characters and non-ASCII letters reach the API as part of the id.
    """
    if not batch_id.strip():
        raise InvalidBatchId(f"batch {batch_id!r}: an empty or blank id cannot be requested")
    if "\x00" in batch_id:
        raise InvalidBatchId(f"batch {batch_id!r}: an id holding a NUL character cannot be sent")
    if batch_id in (".", ".."):
        raise InvalidBatchId(f"batch {batch_id!r}: '.' and '..' cannot be sent as a URL path")
    if key_too_long(batch_id):
        size = len(batch_id.encode("utf-8", "surrogatepass"))
        raise InvalidBatchId(
            f"batch {recordable_id(batch_id)!r}: the id is {size:,} bytes long, over the "
            f"limit of {MAX_KEY_BYTES:,} bytes for an id: not requested"
        )
    try:
        return urllib.parse.quote(batch_id, safe="", errors="strict")
    except UnicodeEncodeError:
        raise InvalidBatchId(
            f"batch {batch_id!r}: the id is not valid Unicode (a lone surrogate)"
        ) from None


def _log_request(response: httpx.Response, seconds: float) -> None:
    """One DEBUG line per request (-vv): method, path and query, status, body bytes, time.

    Headers are never logged: the key travels in one."""
    request = response.request
    log.debug(
        "HTTP %s %s -> %d, %d bytes, %.0f ms",
        request.method,
        request.url.raw_path.decode("ascii", "replace"),
        response.status_code,
        response.num_bytes_downloaded,
        seconds * 1000,
        extra={"status": response.status_code, "bytes": response.num_bytes_downloaded},
    )


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _drained(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks of ``head`` (each let go once handed on), then those of ``rest``."""
    head.reverse()
    while head:
        yield head.pop()
    yield from rest


class _Counted:
    """Chunks passed through, their total size counted, and whether any quotes a secret
    (tested with the end of the previous chunk, so an echo split across two is seen)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.size = 0
        self.echoes_secret = False

    def __iter__(self) -> Iterator[bytes]:
        tail = b""
        for chunk in self._chunks:
            self.size += len(chunk)
            if not self.echoes_secret:
                self.echoes_secret = echoes_secret(tail + chunk)
                tail = chunk[-256:]
            yield chunk


def _error_message(response: httpx.Response) -> str:
    """The API's own error message, from either of its error envelopes, secrets redacted
    (an API may echo the key it was sent)."""
    return redact(_api_message(response))


def _api_message(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.reason_phrase or "no message"
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return str(body["message"])
        errors = body.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message") or errors[0].get("error") or "no message")
    return response.reason_phrase or "no message"


def _retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date.

    An HTTP date is measured from ``now`` (default: the current time).
    """
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


__all__ = [
    "ApiError",
    "BatchSource",
    "BlandClient",
    "ClientStats",
    "FetchedBatch",
    "Parts",
    "RetryPolicy",
]
