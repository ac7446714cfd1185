"""The one HTTP client every source of batches uses: auth, timeouts, retries, rate, errors.

:class:`BlandHttp` knows HTTP and nothing of SQL, nor of what a body holds. Each request is
retried on what is transient (429, 500/502/503/504, connection errors, timeouts) with capped
exponential backoff and jitter, honouring ``Retry-After``; 401/403 raise :class:`AuthError`
at once, 404 raises :class:`BatchNotFound`, any other status :class:`HttpStatusError`, with
the API's own message (from either of its error envelopes) redacted of secrets. Requests are
counted in :class:`ClientStats`, spaced by :class:`RateLimiter`, and logged at DEBUG without
their headers (the API key travels in one).

A body is read whole, or up to a decoded-size threshold and then handed on as a stream of
chunks (:meth:`BlandHttp.read_bounded`), or saved to a temporary file
(:func:`spool_to_file`): what the body means is its source's business
(:mod:`batchsync.bland.v1`, :mod:`batchsync.bland.v2`).
"""

from __future__ import annotations

import email.utils
import logging
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, BinaryIO, NoReturn, TypeVar, cast

import httpx
import orjson
import tenacity

from batchsync import __version__
from batchsync.config import ApiSettings, echoes_secret, redact
from batchsync.errors import (
    ApiUnreachable,
    AuthError,
    BatchNotFound,
    ConfigError,
    HttpStatusError,
    InvalidBatchId,
    PayloadError,
    TransientApiError,
)
from batchsync.payload import MAX_KEY_BYTES, key_too_long, recordable_id

log = logging.getLogger(__name__)

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
T = TypeVar("T")


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
class BlandHttp:
    """GET requests to the Bland API, shared by every source: one connection pool, one
    rate cap, one retry policy and one set of counters for the run.

    Raises ConfigError when there is no API key. Every request method raises the ApiError
    subclasses of :mod:`batchsync.errors` (see the module docstring), or PayloadError for a
    body that does not decode as its Content-Encoding says.
    """

    settings: ApiSettings
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    max_requests_per_second: float | None = None
    max_connections: int = 10
    # Bodies up to this size, decoded, are read whole (fastest); larger ones, or of unknown
    # length, are handed on as they stream in (bounded memory): see read_bounded.
    stream_threshold: int = 12 * 1024 * 1024
    stats: ClientStats = field(default_factory=ClientStats)

    def __post_init__(self) -> None:
        if self.settings.api_key is None:
            raise ConfigError("no API key: set BLAND_API_KEY or pass --api-key")
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

    def __enter__(self) -> BlandHttp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_body(
        self, path: str, params: dict[str, Any], *, what: str, batch_id: str | None = None
    ) -> bytes:
        """GET ``path`` and return the whole body, with this client's auth, retries, rate
        cap and error rules; ``what`` names the resource in error messages."""
        return self.get(path, params, what=what, consume=self.read, batch_id=batch_id)

    def chunks(self, response: httpx.Response, digest: Any = None) -> Iterator[bytes]:
        """The response body's decoded chunks, counted in ``stats`` and fed to ``digest``."""
        for chunk in response.iter_bytes():
            self.stats.add(bytes_received=len(chunk))
            if digest is not None:
                digest.update(chunk)
            yield chunk

    def read(self, response: httpx.Response, digest: Any = None) -> bytes:
        """The whole decoded response body, as :meth:`chunks` reads it."""
        return b"".join(self.chunks(response, digest))

    def read_bounded(
        self, response: httpx.Response, digest: Any = None
    ) -> tuple[bytes | None, Iterator[bytes]]:
        """The body whole (and no chunks left) when its decoded size is at most
        ``stream_threshold`` bytes; else None and its chunks, those read so far first.

        A compressed body's Content-Length is its compressed size (gzip can shrink JSON a
        hundredfold), and a chunked body has none: the threshold applies to the decoded
        bytes, read until it is passed. Only an uncompressed body whose Content-Length is
        within the threshold is taken whole on its word.
        """
        length = response.headers.get("content-length")
        encoded = response.headers.get("content-encoding", "identity").strip().lower()
        small = length is not None and length.isdigit() and int(length) <= self.stream_threshold
        chunks = self.chunks(response, digest)
        if small and encoded in ("", "identity"):
            return b"".join(chunks), iter(())
        head: list[bytes] = []
        seen = 0
        for chunk in chunks:
            head.append(chunk)
            seen += len(chunk)
            if seen > self.stream_threshold:
                return None, _drained(head, chunks)
        return b"".join(head), iter(())

    def get(
        self,
        path: str,
        params: dict[str, Any],
        *,
        what: str,
        consume: Callable[[httpx.Response], T],
        batch_id: str | None = None,
    ) -> T:
        """GET ``path`` and hand the streamed response to ``consume``, retrying what is
        transient (a connection lost while the body streams in too).

        ``consume`` runs once per attempt, only for a status below 300; the error statuses
        raise as the module docstring says, after the retries of a transient one.
        """
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


def _drained(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks of ``head`` (each let go once handed on), then those of ``rest``."""
    head.reverse()
    while head:
        yield head.pop()
    yield from rest


def spool_to_file(chunks: Iterator[bytes]) -> tuple[BinaryIO, CountedChunks]:
    """Write ``chunks`` to a new temporary file, to be closed by the caller; with the chunks'
    count of bytes and whether any quotes a secret. The file is closed if writing fails."""
    # Closed by its owner, not here: SIM115 does not apply.
    spooled = tempfile.TemporaryFile(prefix="batchsync-")  # noqa: SIM115
    counted = CountedChunks(chunks)
    try:
        for chunk in counted:
            spooled.write(chunk)
    except BaseException:
        spooled.close()
        raise
    return spooled, counted


class CountedChunks:
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
    "BlandHttp",
    "ClientStats",
    "CountedChunks",
    "RateLimiter",
    "RetryPolicy",
    "batch_path_segment",
    "spool_to_file",
]
