"""The HTTP side: retries and their limits, typed errors, paging, include flags, rate cap."""

from __future__ import annotations

import gzip
import io
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from batchsync import logs
from batchsync.bland.http import BlandHttp, RateLimiter, RetryPolicy, _retry_after
from batchsync.bland.source import Parts
from batchsync.bland.v1 import V1Source
from batchsync.config import load_api
from batchsync.emulator import Emulator, Fault
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
from tests.conftest import EMULATOR_URL, v1_source


def make_source(
    handler: httpx.MockTransport | httpx.BaseTransport,
    sleeps: list[float],
    *,
    attempts: int = 4,
    key: str = "emulator-key",
    **kwargs: object,
) -> V1Source:
    return v1_source(
        load_api(EMULATOR_URL, key),
        transport=handler,
        retry=RetryPolicy(attempts=attempts, initial_wait=1.0, max_wait=8.0),
        sleep=sleeps.append,
        **kwargs,
    )


def test_rate_limit_with_retry_after_is_retried_after_that_wait(
    emulator: Emulator, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    """A 429 with Retry-After waits exactly that long, logs the retry, then succeeds."""
    batch_id = emulator.batch_ids()[0]
    emulator.inject(batch_id, Fault("rate_limit", times=2, retry_after="2"))
    source = make_source(emulator.transport(), sleeps)

    with caplog.at_level(logging.WARNING, logger="batchsync"):
        fetched = source.fetch_batch(batch_id, Parts())

    assert fetched.parsed.batch.batch_id == batch_id
    assert emulator.request_count(f"/v1/batches/{batch_id}") == 3
    assert sleeps == [2.0, 2.0]
    assert source.http.stats.retries == 2
    assert "rate limited" in caplog.text
    assert "retrying in 2.0s" in caplog.text


def test_retry_after_is_capped_by_max_wait(emulator: Emulator, sleeps: list[float]) -> None:
    """A Retry-After longer than the cap waits only the cap."""
    batch_id = emulator.batch_ids()[0]
    emulator.inject(batch_id, Fault("rate_limit", times=1, retry_after="3600"))
    make_source(emulator.transport(), sleeps).fetch_batch(batch_id, Parts())
    assert sleeps == [8.0]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_back_off_exponentially_with_jitter(
    emulator: Emulator, sleeps: list[float], status: int
) -> None:
    """5xx answers are retried with growing, capped, jittered waits."""
    batch_id = emulator.batch_ids()[0]
    emulator.inject(batch_id, Fault("server_error", times=3, status=status))
    make_source(emulator.transport(), sleeps).fetch_batch(batch_id, Parts())
    assert len(sleeps) == 3
    assert 1.0 <= sleeps[0] <= 2.0
    assert 2.0 <= sleeps[1] <= 3.0
    assert all(wait <= 8.0 for wait in sleeps)


def test_retries_running_out_say_so(emulator: Emulator, sleeps: list[float]) -> None:
    """When every attempt is rate limited, the error says how many attempts were made."""
    batch_id = emulator.batch_ids()[0]
    emulator.inject(batch_id, Fault("rate_limit", times=-1))
    source = make_source(emulator.transport(), sleeps, attempts=5)
    with pytest.raises(TransientApiError, match=r"rate limited.*after 5 attempts"):
        source.fetch_batch(batch_id, Parts())
    assert emulator.request_count(f"/v1/batches/{batch_id}") == 5


def test_connection_errors_and_timeouts_are_retried(sleeps: list[float]) -> None:
    """A dropped connection and a read timeout are transient: retried, then succeed."""
    emulator = Emulator(seed=1, batches=1, calls_per_batch=2)
    failures = [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]

    def handler(request: httpx.Request) -> httpx.Response:
        if failures:
            raise failures.pop(0)
        return emulator.handle(request)

    source = make_source(httpx.MockTransport(handler), sleeps)
    fetched = source.fetch_batch(emulator.batch_ids()[0], Parts())
    assert fetched.parsed.calls is not None
    assert len(sleeps) == 2


def test_unreachable_api_fails_with_the_url_and_attempts(sleeps: list[float]) -> None:
    """An API that never answers gives a clear error naming where and how often it tried."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    source = make_source(httpx.MockTransport(handler), sleeps, attempts=3)
    with pytest.raises(TransientApiError, match=r"cannot reach .*after 3 attempts"):
        source.fetch_batch("b1", Parts())


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retried_and_never_show_the_key(
    sleeps: list[float], status: int
) -> None:
    """401/403 raise AuthError at once; the message is about the key, not the key."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"data": None, "errors": [{"message": "Unauthorized"}]})

    source = make_source(httpx.MockTransport(handler), sleeps, key="sk-live-abcdef123456")
    with pytest.raises(AuthError) as raised:
        source.fetch_batch("b1", Parts())
    assert len(calls) == 1
    assert "sk-live-abcdef123456" not in str(raised.value)
    assert "BLAND_API_KEY" in str(raised.value)
    assert calls[0].headers["authorization"] == "sk-live-abcdef123456"


def test_not_found_is_not_retried(emulator: Emulator, sleeps: list[float]) -> None:
    """A 404 raises BatchNotFound naming the batch, without retrying."""
    source = make_source(emulator.transport(), sleeps)
    with pytest.raises(BatchNotFound, match="batch nope: not found"):
        source.fetch_batch("nope", Parts())
    assert sleeps == []


def test_unexpected_status_is_reported(sleeps: list[float]) -> None:
    """A status with no rule (418) raises HttpStatusError with the API's message."""
    transport = httpx.MockTransport(
        lambda request: httpx.Response(418, json={"status": "error", "message": "teapot"})
    )
    with pytest.raises(HttpStatusError, match="HTTP 418 \\(teapot\\)"):
        make_source(transport, sleeps).fetch_batch("b1", Parts())


@pytest.mark.parametrize("kind", ["truncated", "invalid_json", "wrong_shape"])
def test_unreadable_bodies_raise_payload_errors_naming_the_batch(
    emulator: Emulator, sleeps: list[float], kind: str
) -> None:
    """A truncated body, HTML instead of JSON, or a wrong shape fail with the batch named."""
    batch_id = emulator.batch_ids()[0]
    emulator.inject(batch_id, Fault(kind))  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match=f"batch {batch_id}"):
        make_source(emulator.transport(), sleeps).fetch_batch(batch_id, Parts())


def test_include_flags_reach_the_api(emulator: Emulator, sleeps: list[float]) -> None:
    """--no-transcripts and --no-analysis become include_* query parameters."""
    batch_id = emulator.batch_ids()[0]
    fetched = make_source(emulator.transport(), sleeps).fetch_batch(
        batch_id, Parts(transcripts=False, analysis=False)
    )
    params = emulator.requests[-1].url.params
    assert params["include_transcripts"] == "false"
    assert params["include_analysis"] == "false"
    assert params["include_calls"] == "true"
    assert fetched.parsed.transcripts is None
    assert fetched.parsed.analysis is None


def test_batch_list_pages_past_a_short_page_until_an_empty_one(sleeps: list[float]) -> None:
    """Discovery pages with from/to/limit ascending until an empty page, not a short one."""
    emulator = Emulator(seed=2, batches=7, calls_per_batch=1)
    source = make_source(emulator.transport(), sleeps, page_size=3)
    listed = [summary.batch_id for summary in source.iter_batches()]
    assert listed == emulator.batch_ids()
    pages = [r.url.params for r in emulator.requests if r.url.path == "/v1/batches"]
    assert [(p["from"], p["to"], p["limit"]) for p in pages] == [
        ("0", "3", "3"),
        ("3", "6", "3"),
        ("6", "9", "3"),
        ("7", "10", "3"),
    ]
    assert all(p["ascending"] == "true" for p in pages)


@pytest.mark.parametrize("cap", [1, 2, 5])
def test_batch_list_capped_below_the_page_size_still_lists_every_batch(
    sleeps: list[float], cap: int
) -> None:
    """A server that serves fewer batches per page than asked loses none of them."""
    emulator = Emulator(seed=2, batches=7, calls_per_batch=1, page_cap=cap)
    source = make_source(emulator.transport(), sleeps, page_size=6)
    assert [summary.batch_id for summary in source.iter_batches()] == emulator.batch_ids()


def test_exact_multiple_of_page_size_ends_on_an_empty_page(sleeps: list[float]) -> None:
    """When the last page is full, one more (empty) page ends discovery."""
    emulator = Emulator(seed=2, batches=6, calls_per_batch=1)
    source = make_source(emulator.transport(), sleeps, page_size=3)
    assert len(list(source.iter_batches())) == 6
    assert emulator.request_count("/v1/batches") == 3


def test_content_hash_depends_on_body_and_parts(emulator: Emulator, sleeps: list[float]) -> None:
    """The same body with the same parts hashes the same; other parts hash differently."""
    source = make_source(emulator.transport(), sleeps)
    batch_id = emulator.batch_ids()[0]
    first = source.fetch_batch(batch_id, Parts())
    again = source.fetch_batch(batch_id, Parts())
    other = source.fetch_batch(batch_id, Parts(transcripts=False))
    assert first.content_sha256 == again.content_sha256
    assert first.content_sha256 != other.content_sha256


def test_missing_key_is_a_config_error() -> None:
    """A client without a key refuses to start."""
    with pytest.raises(ConfigError, match="BLAND_API_KEY"):
        BlandHttp(load_api(EMULATOR_URL, None))


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    """Retry-After as seconds or as an HTTP date becomes seconds to wait."""
    assert _retry_after("7") == 7.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = now + timedelta(seconds=30)
    assert _retry_after(format_datetime(later, usegmt=True), now=now) == 30.0
    past = now - timedelta(seconds=30)
    assert _retry_after(format_datetime(past, usegmt=True), now=now) == 0.0


def test_rate_limiter_spaces_requests_across_threads() -> None:
    """Four threads asking at once are spaced 1/rate apart."""
    waits: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            waits.append(seconds)

    limiter = RateLimiter(10.0, sleep=record)
    threads = [threading.Thread(target=limiter.acquire) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(waits) >= 3
    assert max(waits) == pytest.approx(0.3, abs=0.05)


def test_stats_count_requests_from_many_threads(emulator: Emulator, sleeps: list[float]) -> None:
    """Concurrent fetches are all counted."""
    source = make_source(emulator.transport(), sleeps)
    ids = emulator.batch_ids()
    threads = [threading.Thread(target=source.fetch_batch, args=(b, Parts())) for b in ids * 5]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert source.http.stats.requests == len(ids) * 5


def test_large_bodies_are_parsed_as_they_stream(emulator: Emulator, sleeps: list[float]) -> None:
    """Above the stream threshold the batch is parsed call by call, to the same result."""
    batch_id = emulator.batch_ids()[0]
    whole = make_source(emulator.transport(), sleeps).fetch_batch(batch_id, Parts())
    streamed = make_source(emulator.transport(), sleeps, stream_threshold=0).fetch_batch(
        batch_id, Parts()
    )
    assert streamed == whole


def test_large_body_is_saved_unparsed_when_spooling_and_parses_to_the_same_batch(
    emulator: Emulator, sleeps: list[float]
) -> None:
    """With spool_large_bodies, a body above the threshold comes back unparsed, with the same
    hash and size, and parses to the batch the whole body gives."""
    batch_id = emulator.batch_ids()[0]
    whole = make_source(emulator.transport(), sleeps).fetch_batch(batch_id, Parts())
    spooling = make_source(
        emulator.transport(), sleeps, stream_threshold=0, spool_large_bodies=True
    )
    saved = spooling.fetch_batch(batch_id, Parts())
    assert saved.parsed is None
    assert saved.body is not None
    assert (saved.content_sha256, saved.size) == (whole.content_sha256, whole.size)
    assert saved.body.parse() == whole.parsed
    saved.body.close()


def test_spooled_body_with_unchanged_content_is_dropped(
    emulator: Emulator, sleeps: list[float]
) -> None:
    """A spooled body whose hash the caller finds unchanged is neither kept nor parsed."""
    source = make_source(emulator.transport(), sleeps, stream_threshold=0, spool_large_bodies=True)
    fetched = source.fetch_batch(emulator.batch_ids()[0], Parts(), unchanged=lambda _: True)
    assert (fetched.parsed, fetched.body) == (None, None)


def test_streamed_truncated_body_is_a_payload_error(
    emulator: Emulator, sleeps: list[float]
) -> None:
    """A truncated body fails the batch when streamed too."""
    batch_id = emulator.batch_ids()[0]
    emulator.inject(batch_id, Fault("truncated"))
    source = make_source(emulator.transport(), sleeps, stream_threshold=0)
    with pytest.raises(PayloadError, match="not valid JSON"):
        source.fetch_batch(batch_id, Parts())


def test_connection_lost_while_the_body_streams_is_retried(sleeps: list[float]) -> None:
    """A connection that drops in the middle of a body is transient: fetched again."""
    emulator = Emulator(seed=4, batches=1, calls_per_batch=30)
    drops = [1]

    class Dropping(httpx.SyncByteStream):
        def __init__(self, body: bytes) -> None:
            self.body = body

        def __iter__(self) -> Iterator[bytes]:
            yield self.body[:100]
            raise httpx.RemoteProtocolError("peer closed connection mid-body")

    def handler(request: httpx.Request) -> httpx.Response:
        response = emulator.handle(request)
        if drops and request.url.path != "/v1/batches":
            drops.pop()
            return httpx.Response(200, stream=Dropping(response.content))
        return response

    for threshold in (0, 1 << 30):
        drops[:] = [1]
        source = make_source(httpx.MockTransport(handler), sleeps, stream_threshold=threshold)
        fetched = source.fetch_batch(emulator.batch_ids()[0], Parts())
        assert fetched.parsed.calls is not None
        assert len(fetched.parsed.calls) == 30
        assert source.http.stats.retries == 1


def test_listing_stops_when_the_api_ignores_the_offset(sleeps: list[float]) -> None:
    """An API answering every page with the same batches does not make discovery loop."""
    emulator = Emulator(seed=2, batches=3, calls_per_batch=1)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/batches":
            params = dict(request.url.params)
            params["from"] = "0"
            request = httpx.Request(
                "GET", request.url.copy_with(params=params), headers=request.headers
            )
        return emulator.handle(request)

    source = make_source(httpx.MockTransport(handler), sleeps, page_size=3)
    assert [s.batch_id for s in source.iter_batches()] == emulator.batch_ids()


def _put_batch_with_id(emulator: Emulator, batch_id: str) -> None:
    raw = emulator.raw_batch(emulator.batch_ids()[0])
    raw["batch_params"]["id"] = batch_id
    emulator.put_batch(raw)


@pytest.mark.parametrize(
    "batch_id",
    [
        "a/b",
        "a?b=1",
        "a#b",
        "100%",
        "a b",
        "caf\u00e9-\u6771\u4eac",
        "tab\there",
        "nl\nx",
        "..x",
        "+",
    ],
)
def test_ids_with_url_special_characters_reach_the_api_whole(
    emulator: Emulator, sleeps: list[float], batch_id: str
) -> None:
    """An id with '/', '?', '#', '%', spaces, control or non-ASCII characters is fetched whole."""
    _put_batch_with_id(emulator, batch_id)
    fetched = make_source(emulator.transport(), sleeps).fetch_batch(batch_id, Parts())
    assert fetched.parsed is not None
    assert fetched.parsed.batch.batch_id == batch_id
    assert emulator.requests[-1].url.raw_path.startswith(b"/v1/batches/")
    assert b"/" not in emulator.requests[-1].url.raw_path[len(b"/v1/batches/") :]


@pytest.mark.parametrize("batch_id", ["", "   ", "a\x00b", ".", "..", "\ud800"])
def test_ids_that_cannot_be_sent_raise_invalid_batch_id_without_a_request(
    emulator: Emulator, sleeps: list[float], batch_id: str
) -> None:
    """An empty, blank, NUL-holding, dot-segment or non-Unicode id fails with a reason, unsent."""
    with pytest.raises(InvalidBatchId, match=r"cannot|not valid Unicode"):
        make_source(emulator.transport(), sleeps).fetch_batch(batch_id, Parts())
    assert emulator.requests == []


def test_wrong_content_encoding_is_a_payload_error_naming_the_batch(
    emulator: Emulator, sleeps: list[float]
) -> None:
    """A body that is not in the Content-Encoding its header names fails as a PayloadError."""
    batch_id = emulator.batch_ids()[0]
    emulator.inject(batch_id, Fault("wrong_encoding"))
    with pytest.raises(PayloadError, match=f"batch {batch_id}, field \\(body\\).*gzip") as caught:
        make_source(emulator.transport(), sleeps).fetch_batch(batch_id, Parts())
    assert "status" not in str(caught.value)  # no byte of the body is quoted


def test_detail_without_its_own_id_is_taken_as_the_batch_requested(
    emulator: Emulator, sleeps: list[float]
) -> None:
    """A detail response with no id in batch_params is stored under the id asked for."""
    raw = emulator.raw_batch(emulator.batch_ids()[0])
    del raw["batch_params"]["id"]
    emulator.put_batch(raw, batch_id="no-id-inside")
    fetched = make_source(emulator.transport(), sleeps).fetch_batch("no-id-inside", Parts())
    assert fetched.parsed is not None
    assert fetched.parsed.batch.batch_id == "no-id-inside"


def test_detail_for_another_batch_is_a_payload_error(
    emulator: Emulator, sleeps: list[float]
) -> None:
    """A detail response whose id is not the one requested fails that batch, naming the field."""
    raw = emulator.raw_batch(emulator.batch_ids()[0])
    raw["batch_params"]["id"] = "someone-else"
    emulator.put_batch(raw, batch_id="asked-for")
    with pytest.raises(PayloadError, match=r"batch asked-for, field batch_params\.id"):
        make_source(emulator.transport(), sleeps).fetch_batch("asked-for", Parts())


def test_api_refusing_connections_raises_api_unreachable_after_retries(
    emulator: Emulator, sleeps: list[float]
) -> None:
    """Connections refused for a batch are retried, then raised as ApiUnreachable."""
    emulator.inject("*", Fault("api_down"))
    with pytest.raises(ApiUnreachable, match="gave up after 4 attempts"):
        make_source(emulator.transport(), sleeps).fetch_batch(emulator.batch_ids()[0], Parts())
    assert len(sleeps) == 3


def test_error_answer_in_the_wrong_encoding_keeps_its_status(sleeps: list[float]) -> None:
    """A 404 whose body is not in its Content-Encoding is still a 404, not a decoding crash."""

    def handle(request: httpx.Request) -> httpx.Response:
        headers = {"content-encoding": "gzip", "content-type": "application/json"}
        return httpx.Response(404, stream=httpx.ByteStream(b'{"message": "gone"}'), headers=headers)

    with pytest.raises(BatchNotFound, match=r"batch b1: not found \(HTTP 404: Not Found\)"):
        make_source(httpx.MockTransport(handle), sleeps).fetch_batch("b1", Parts())


def test_request_log_names_a_request_that_got_no_answer() -> None:
    """At -vv a request that fails before any answer is logged with the error's kind."""
    stream = io.StringIO()
    logs.configure(5, "text", stream)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    api = load_api(EMULATOR_URL, "sk-request-log-1234")
    with (
        BlandHttp(
            api, transport=httpx.MockTransport(refuse), retry=RetryPolicy(attempts=1)
        ) as http,
        pytest.raises(TransientApiError),
    ):
        list(V1Source(http).iter_batches())
    assert "HTTP GET /v1/batches -> ConnectError" in stream.getvalue()
    assert "sk-request-log-1234" not in stream.getvalue()


BODIES_TO_AGREE_ON = [
    b'{"batch_params": {"id": "b1", "call_params": {"n": 123456789012345678901234567890,'
    b' "t": "nul \\u0000 lone \\ud800 pair \\ud83d\\ude00"}},'
    b' "call_data": [{"call_id": "c1", "transcripts": [{"id": 1, "text": "x\\udfff"}]}]}',
    b'\xef\xbb\xbf{"batch_params": {"id": "b1"}}',
    b'{"batch_params": {"id": "b1"}} trailing',
    b'{"batch_params": {"id": "b1"}, "x": "\\q"}',
    b'{"batch_params": {"id": "b1"}, "x": 1e400}',
    b'{"batch_params": {"id": "b1"}, "call_data": [{"c_id": null}]',
    b"",
]


@pytest.mark.parametrize(
    "body",
    BODIES_TO_AGREE_ON,
    ids=["odd-values", "bom", "trailing", "bad-escape", "huge-exponent", "cut", "empty"],
)
def test_body_with_and_without_content_length_gives_the_same_outcome(
    body: bytes, sleeps: list[float]
) -> None:
    """A body sent with its Content-Length (decoded whole) and the same body chunked (parsed as
    it streams) give the same records, or fail with the same message."""

    def outcome(*, chunked: bool) -> object:
        def handler(request: httpx.Request) -> httpx.Response:
            if chunked:
                return httpx.Response(
                    200, content=iter([body[i : i + 3] for i in range(0, len(body), 3)])
                )
            return httpx.Response(200, content=body)

        source = make_source(httpx.MockTransport(handler), sleeps)
        try:
            return source.fetch_batch("b1", Parts()).parsed
        except PayloadError as exc:
            return str(exc)

    whole, streamed = outcome(chunked=False), outcome(chunked=True)
    assert whole == streamed
    if isinstance(whole, str):
        assert whole.startswith("batch b1, field ")


def _gzipped(emulator: Emulator, sizes: list[tuple[int, int]]) -> httpx.MockTransport:
    """The emulator, with every batch body sent gzip-compressed with its Content-Length;
    ``sizes`` gets (compressed, decoded) of each."""

    def handle(request: httpx.Request) -> httpx.Response:
        response = emulator.handle(request)
        if request.url.path == "/v1/batches":
            return response
        body = gzip.compress(response.content)
        sizes.append((len(body), len(response.content)))
        headers = {
            "content-encoding": "gzip",
            "content-type": "application/json",
            "content-length": str(len(body)),
        }
        return httpx.Response(response.status_code, stream=httpx.ByteStream(body), headers=headers)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(("threshold", "streamed"), [(16384, True), (1 << 30, False)])
def test_a_compressed_body_is_measured_by_its_decoded_size(
    sleeps: list[float], threshold: int, streamed: bool
) -> None:
    """A gzip body whose compressed Content-Length is under the threshold but whose decoded
    size is over it is parsed as it streams in (no whole-body "unchanged" check), and one
    under it decoded is read whole; both give the same records."""
    emulator = Emulator(seed=4, batches=1, calls_per_batch=30)
    batch_id = emulator.batch_ids()[0]
    sizes: list[tuple[int, int]] = []
    source = make_source(_gzipped(emulator, sizes), sleeps, stream_threshold=threshold)

    fetched = source.fetch_batch(batch_id, Parts(), unchanged=lambda digest: True)

    [(compressed, decoded)] = sizes
    assert compressed < 16384 < decoded

    if streamed:
        assert fetched.parsed is not None
        assert fetched.parsed.calls is not None
        assert len(fetched.parsed.calls) == 30
    else:
        assert fetched.parsed is None  # read whole, and found unchanged before parsing


@pytest.mark.parametrize("bad", [0, 1], ids=["first_of_page", "last_of_page"])
def test_list_entry_with_an_id_and_a_bad_field_does_not_shift_the_next_page(bad: int) -> None:
    """An entry listed with its error (a created_at that cannot be read) counts once toward
    the next offset: no entry of the following page is skipped."""
    entries = [{"batch_id": f"b{i}", "created_at": "2026-01-01T00:00:00Z"} for i in range(5)]
    entries[bad]["created_at"] = "yesterday"

    def handle(request: httpx.Request) -> httpx.Response:
        start, limit = int(request.url.params["from"]), int(request.url.params["limit"])
        return httpx.Response(
            200, json={"status": "success", "batches": entries[start : start + limit]}
        )

    api = load_api(EMULATOR_URL, "emulator-key")
    source = v1_source(api, transport=httpx.MockTransport(handle), page_size=2)
    with source.http:
        listed = list(source.iter_batches())
    assert [summary.batch_id for summary in listed] == [f"b{i}" for i in range(5)]
    assert [summary.batch_id for summary in listed if summary.error] == [f"b{bad}"]
