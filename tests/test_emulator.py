"""The local Bland API: routes, envelopes, faults, revisions and the quirks of real payloads."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchsync.emulator import (
    FAULT_KINDS,
    STATE_FAULT_KINDS,
    Emulator,
    EmulatorServer,
    Fault,
    parse_fault,
)

BASE_URL = "http://bland.test"
KEY = "emulator-key"
UNFINISHED = {"new", "queued", "allocated", "started"}
TIMESTAMP_SHAPES = {
    "microseconds, +00:00": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$"),
    "five digits, +00:00": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{5}\+00:00$"),
    "milliseconds, Z": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"),
    "microseconds, -05:00": re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}-05:00$"),
}


@pytest.fixture
def emu() -> Emulator:
    return Emulator()


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(
        transport=emu.transport(), base_url=BASE_URL, headers={"authorization": KEY}
    ) as client:
        yield client


def batches_of(emu: Emulator) -> list[dict[str, Any]]:
    return [emu.raw_batch(batch_id) for batch_id in emu.batch_ids()]


def calls_of(emu: Emulator) -> list[dict[str, Any]]:
    return [call for raw in batches_of(emu) for call in raw["call_data"]]


def call_id(call: dict[str, Any]) -> str:
    value: str = call["call_id"] if "call_id" in call else call["c_id"]
    return value


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def list_ids(client: httpx.Client, **params: Any) -> list[str]:
    response = client.get("/v1/batches", params=params)
    assert response.status_code == 200
    return [batch["batch_id"] for batch in response.json()["batches"]]


def assert_analysis_matches_calls(raw: dict[str, Any]) -> None:
    calls = raw["call_data"]
    analysis = raw["analysis"]
    unfinished = sum(call["queue_status"] in UNFINISHED for call in calls)
    assert int(analysis["total_calls"]) == len(calls)
    assert int(analysis["in_progress_calls"]) == unfinished
    assert int(analysis["completed_calls"]) == len(calls) - unfinished
    assert analysis["queue_statuses"] == Counter(call["queue_status"] for call in calls)
    assert analysis["call_ids"] == [call_id(call) for call in calls]
    lengths = analysis["call_lengths"]
    assert lengths["all"] == [call["call_length"] for call in calls]
    assert sum(lengths["summary"].values()) == len(calls)
    assert lengths["average"] == pytest.approx(sum(lengths["all"]) / len(calls), abs=0.01)
    assert sum(int(n) for n in analysis["endpoints"].values()) == len(calls)
    errored = [call for call in calls if call["error_message"] is not None]
    messages = [
        entry if isinstance(entry, str) else entry["error_message"]
        for entry in analysis["error_messages"]
    ]
    assert messages == [call["error_message"] for call in errored]
    objects = [entry for entry in analysis["error_messages"] if isinstance(entry, dict)]
    assert all(entry["call_id"] in analysis["call_ids"] for entry in objects)
    if "status" in raw:
        assert raw["status"] == ("in-progress" if unfinished else "completed")


# -- determinism ------------------------------------------------------------------------


def test_same_seed_serves_identical_bytes() -> None:
    """Two emulators with one seed answer every request with the same bytes."""
    first, second = Emulator(seed=7), Emulator(seed=7)
    paths = ["/v1/batches", *(f"/v1/batches/{batch_id}" for batch_id in first.batch_ids())]
    for path in paths:
        request = httpx.Request("GET", BASE_URL + path, headers={"authorization": KEY})
        assert first.handle(request).content == second.handle(request).content


def test_different_seed_serves_different_data() -> None:
    """Another seed gives other batch ids and other calls."""
    first, second = Emulator(seed=1), Emulator(seed=2)
    assert set(first.batch_ids()).isdisjoint(second.batch_ids())
    assert orjson.dumps(calls_of(first)) != orjson.dumps(calls_of(second))


def test_batch_ids_ascend_by_created_at_within_the_window() -> None:
    """batch_ids() is oldest first and every batch falls in 2024-01-01..2025-06-30."""
    emu = Emulator(batches=12)
    created = [parse_ts(raw["batch_params"]["created_at"]) for raw in batches_of(emu)]
    assert created == sorted(created)
    assert datetime(2024, 1, 1, tzinfo=UTC) <= created[0]
    assert created[-1] <= datetime(2025, 6, 30, tzinfo=UTC)


def test_calls_are_created_minutes_after_their_batch() -> None:
    """Every call starts a few minutes after its batch was created."""
    for raw in batches_of(Emulator()):
        batch_created = parse_ts(raw["batch_params"]["created_at"])
        for call in raw["call_data"]:
            delay = (parse_ts(call["created_at"]) - batch_created).total_seconds()
            assert 60 < delay < 600


# -- list endpoint ----------------------------------------------------------------------


def test_list_is_newest_first_by_default(emu: Emulator, client: httpx.Client) -> None:
    """Without ascending the list runs newest first."""
    assert list_ids(client) == emu.batch_ids()[::-1]


def test_list_ascending_true_is_oldest_first(emu: Emulator, client: httpx.Client) -> None:
    """ascending=true lists oldest first."""
    assert list_ids(client, ascending="true") == emu.batch_ids()


def test_list_from_and_to_slice_the_ordered_batches(emu: Emulator, client: httpx.Client) -> None:
    """from is inclusive and to exclusive, applied after ordering."""
    ids = emu.batch_ids()
    assert list_ids(client, ascending="true", **{"from": 1, "to": 3}) == ids[1:3]
    assert list_ids(client, **{"from": 3}) == ids[::-1][3:]


def test_list_limit_caps_the_page(emu: Emulator, client: httpx.Client) -> None:
    """limit caps the number of batches after from/to."""
    ids = emu.batch_ids()
    assert list_ids(client, ascending="true", limit=2) == ids[:2]
    assert list_ids(client, ascending="true", limit=0) == []
    assert list_ids(client, ascending="true", limit=10, **{"from": 1, "to": 3}) == ids[1:3]


def test_list_filters_by_campaign_before_slicing(emu: Emulator, client: httpx.Client) -> None:
    """campaign_id keeps that campaign's batches, and from/to index into what is left."""
    raws = batches_of(emu)
    campaign = raws[-1]["batch_params"]["campaign_id"]
    expected = [
        raw["batch_params"]["id"] for raw in raws if raw["batch_params"]["campaign_id"] == campaign
    ]
    assert len(expected) >= 2
    assert list_ids(client, ascending="true", campaign_id=campaign) == expected
    assert list_ids(client, ascending="true", campaign_id=campaign, **{"from": 1}) == expected[1:]
    assert list_ids(client, campaign_id="no-such-campaign") == []


@pytest.mark.parametrize("batches", [5, 6])
def test_paging_ascending_until_a_short_page_sees_every_batch_once(batches: int) -> None:
    """Paging with ascending=true and stopping on a short page collects every batch in order."""
    emu = Emulator(batches=batches)
    seen: list[str] = []
    with httpx.Client(
        transport=emu.transport(), base_url=BASE_URL, headers={"authorization": KEY}
    ) as client:
        while True:
            page = list_ids(client, ascending="true", limit=3, **{"from": len(seen)})
            seen += page
            if len(page) < 3:
                break
    assert seen == emu.batch_ids()


@settings(max_examples=60, deadline=None)
@given(
    start=st.none() | st.integers(0, 9),
    stop=st.none() | st.integers(0, 9),
    limit=st.none() | st.integers(0, 9),
    ascending=st.none() | st.booleans(),
)
def test_list_matches_order_then_slice_then_limit(
    start: int | None, stop: int | None, limit: int | None, ascending: bool | None
) -> None:
    """Any from/to/limit/ascending answers ordered[from:to][:limit]."""
    emu = Emulator(batches=7, calls_per_batch=1)
    params = {"from": start, "to": stop, "limit": limit, "ascending": ascending}
    request = httpx.Request(
        "GET",
        BASE_URL + "/v1/batches",
        params={k: str(v).lower() for k, v in params.items() if v is not None},
        headers={"authorization": KEY},
    )
    ordered = emu.batch_ids() if ascending else emu.batch_ids()[::-1]
    expected = ordered[start or 0 : stop][: 1000 if limit is None else limit]
    body = orjson.loads(emu.handle(request).content)
    assert [batch["batch_id"] for batch in body["batches"]] == expected


def test_list_entries_mirror_batch_params(emu: Emulator, client: httpx.Client) -> None:
    """Each list entry carries batch_id and the batch's documented batch_params fields."""
    body = client.get("/v1/batches").json()
    assert body["status"] == "success"
    for entry in body["batches"]:
        params = emu.raw_batch(entry["batch_id"])["batch_params"]
        assert entry == {
            "batch_id": params["id"],
            **{
                key: params[key]
                for key in (
                    "campaign_id",
                    "created_at",
                    "label",
                    "base_prompt",
                    "endpoint_code",
                    "call_params",
                )
            },
        }


@pytest.mark.parametrize(
    ("name", "value"),
    [("from", "-1"), ("to", "two"), ("limit", "1.5"), ("limit", ""), ("ascending", "maybe")],
)
def test_list_rejects_bad_parameters_with_400(client: httpx.Client, name: str, value: str) -> None:
    """A malformed from/to/limit/ascending gets 400 and the v1 error envelope."""
    response = client.get("/v1/batches", params={name: value})
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error"
    assert name in body["message"]


# -- detail endpoint --------------------------------------------------------------------


def test_detail_serves_the_whole_raw_batch(emu: Emulator, client: httpx.Client) -> None:
    """With no flags the detail body is raw_batch(): params, calls with transcripts, analysis."""
    for batch_id in emu.batch_ids():
        response = client.get(f"/v1/batches/{batch_id}")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == emu.raw_batch(batch_id)


def test_include_calls_false_drops_call_data(emu: Emulator, client: httpx.Client) -> None:
    """include_calls=false leaves out call_data and nothing else."""
    batch_id = emu.batch_ids()[-1]
    body = client.get(f"/v1/batches/{batch_id}", params={"include_calls": "false"}).json()
    assert "call_data" not in body
    assert body["analysis"] == emu.raw_batch(batch_id)["analysis"]


def test_include_transcripts_false_drops_only_transcripts(
    emu: Emulator, client: httpx.Client
) -> None:
    """include_transcripts=false removes the transcripts key from every call, keeping the rest."""
    batch_id = emu.batch_ids()[-1]
    body = client.get(f"/v1/batches/{batch_id}", params={"include_transcripts": "false"}).json()
    raw_calls = emu.raw_batch(batch_id)["call_data"]
    assert [
        {**call, "transcripts": raw["transcripts"]}
        for call, raw in zip(body["call_data"], raw_calls, strict=True)
    ] == raw_calls
    assert all("transcripts" not in call for call in body["call_data"])


def test_include_analysis_false_drops_analysis(emu: Emulator, client: httpx.Client) -> None:
    """include_analysis=false leaves out analysis; "true" keeps it."""
    batch_id = emu.batch_ids()[0]
    assert (
        "analysis"
        not in client.get(f"/v1/batches/{batch_id}", params={"include_analysis": "false"}).json()
    )
    assert (
        "analysis"
        in client.get(f"/v1/batches/{batch_id}", params={"include_analysis": "true"}).json()
    )


# -- auth and errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": f"Bearer {KEY}"}, {"authorization": "wrong"}]
)
@pytest.mark.parametrize("path", ["/v1/batches", "/v1/batches/anything", "/elsewhere"])
def test_bad_key_gets_the_auth_failure_envelope(
    emu: Emulator, headers: dict[str, str], path: str
) -> None:
    """A missing, Bearer-prefixed or wrong key gets 401 with the data/errors envelope."""
    with httpx.Client(transport=emu.transport(), base_url=BASE_URL, headers=headers) as client:
        response = client.get(path)
    assert response.status_code == 401
    assert response.json() == {
        "data": None,
        "errors": [{"error": "AUTH_FAILURE", "message": "Unauthorized"}],
    }


def test_api_key_can_change_between_requests(emu: Emulator, client: httpx.Client) -> None:
    """Setting api_key takes effect on the next request."""
    assert client.get("/v1/batches").status_code == 200
    emu.api_key = "rotated"
    assert client.get("/v1/batches").status_code == 401
    assert client.get("/v1/batches", headers={"authorization": "rotated"}).status_code == 200


def test_unknown_batch_is_404_batch_not_found(client: httpx.Client) -> None:
    """An id the emulator does not know gets 404 and "Batch not found"."""
    response = client.get("/v1/batches/no-such-batch")
    assert response.status_code == 404
    assert response.json() == {"status": "error", "message": "Batch not found"}


@pytest.mark.parametrize("path", ["/", "/v2/batches", "/v1/batches/a/b", "/v1/call"])
def test_unknown_path_is_404(client: httpx.Client, path: str) -> None:
    """Routes the emulator does not serve get 404 in the v1 error envelope."""
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["status"] == "error"


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
def test_non_get_is_405(client: httpx.Client, method: str) -> None:
    """Anything but GET gets 405."""
    response = client.request(method, "/v1/batches")
    assert response.status_code == 405
    assert response.json()["status"] == "error"


# -- faults -----------------------------------------------------------------------------


def assert_faulted(kind: str, response: httpx.Response, normal: bytes) -> None:
    if kind == "rate_limit":
        assert response.status_code == 429
        assert response.json() == {"status": "error", "message": "Rate limit exceeded"}
        assert "retry-after" not in response.headers
    elif kind == "server_error":
        assert response.status_code == 503
        assert response.json() == {"status": "error", "message": "Internal server error"}
    elif kind == "slow":
        assert response.content == normal
    elif kind == "truncated":
        assert response.status_code == 200
        assert response.content == normal[: len(normal) // 2]
        assert int(response.headers["content-length"]) == len(response.content)
        with pytest.raises(ValueError, match=r"JSON|unexpected|Expecting|EOF"):
            orjson.loads(response.content)
    elif kind == "invalid_json":
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html"
        assert response.content == b"<html>502 Bad Gateway</html>"
    elif kind == "wrong_shape":
        assert response.status_code == 200
        assert response.json() == {
            "status": "success",
            "batch_params": "oops",
            "call_data": {"not": "a list"},
        }
    elif kind in ("lone_surrogate", "bad_escape", "huge_number"):
        assert response.status_code == 200
        spoiled = {"lone_surrogate": b"\\ud800", "bad_escape": b"\\uZZZZ"}.get(kind, b"1e400")
        assert spoiled in response.content
        assert spoiled not in normal
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(response.content)
    else:
        assert kind == "not_found"
        assert response.status_code == 404
        assert response.json() == {"status": "error", "message": "Batch not found"}


# wrong_encoding cannot be read by an httpx client at all: see its own test.
ANSWER_FAULT_KINDS = [k for k in FAULT_KINDS if k not in STATE_FAULT_KINDS | {"wrong_encoding"}]


@pytest.mark.parametrize("kind", ANSWER_FAULT_KINDS)
def test_fault_hits_its_count_then_the_batch_recovers(
    emu: Emulator, client: httpx.Client, kind: Any
) -> None:
    """A fault with times=2 spoils exactly the next two requests to its batch."""
    batch_id = emu.batch_ids()[1]
    path = f"/v1/batches/{batch_id}"
    normal = client.get(path).content
    emu.inject(batch_id, Fault(kind, times=2))
    for _ in range(2):
        assert_faulted(kind, client.get(path), normal)
    assert client.get(path).content == normal
    assert client.get(f"/v1/batches/{emu.batch_ids()[0]}").status_code == 200


@pytest.mark.parametrize("value", ["1", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_rate_limit_sends_the_given_retry_after(
    emu: Emulator, client: httpx.Client, value: str
) -> None:
    """rate_limit with retry_after sends that exact Retry-After value."""
    emu.inject("*", Fault("rate_limit", retry_after=value))
    response = client.get(f"/v1/batches/{emu.batch_ids()[0]}")
    assert response.status_code == 429
    assert response.headers["retry-after"] == value


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_error_answers_with_the_given_status(
    emu: Emulator, client: httpx.Client, status: int
) -> None:
    """server_error answers with its own 5xx status."""
    emu.inject("*list*", Fault("server_error", status=status))
    assert client.get("/v1/batches").status_code == status


def test_slow_fault_sleeps_before_a_normal_answer(emu: Emulator, client: httpx.Client) -> None:
    """slow waits at least its delay, then answers normally."""
    emu.inject(Emulator.LIST_TARGET, Fault("slow", delay=0.05))
    started = time.perf_counter()
    response = client.get("/v1/batches")
    assert time.perf_counter() - started >= 0.05
    assert response.status_code == 200
    assert len(response.json()["batches"]) == 5


def test_list_faults_have_list_shapes(emu: Emulator, client: httpx.Client) -> None:
    """wrong_shape and not_found on the list endpoint use the list's body and message."""
    emu.inject("*list*", Fault("wrong_shape"))
    emu.inject("*list*", Fault("not_found"))
    assert client.get("/v1/batches").json() == {"status": "success", "batches": {"x": 1}}
    response = client.get("/v1/batches")
    assert response.status_code == 404
    assert response.json()["status"] == "error"
    assert client.get("/v1/batches").status_code == 200


def test_list_target_spares_details_and_star_spares_the_list(
    emu: Emulator, client: httpx.Client
) -> None:
    """ "*list*" faults hit only the list, "*" faults only batch details."""
    emu.inject("*list*", Fault("server_error", times=-1))
    emu.inject("*", Fault("rate_limit", times=-1))
    assert client.get("/v1/batches").status_code == 503
    for batch_id in emu.batch_ids():
        assert client.get(f"/v1/batches/{batch_id}").status_code == 429


def test_faults_on_one_target_apply_in_order(emu: Emulator, client: httpx.Client) -> None:
    """Several faults queued on one batch are served one after the other."""
    batch_id = emu.batch_ids()[2]
    emu.inject(batch_id, Fault("rate_limit"))
    emu.inject(batch_id, Fault("server_error", status=502, times=2))
    emu.inject(batch_id, Fault("not_found"))
    statuses = [client.get(f"/v1/batches/{batch_id}").status_code for _ in range(5)]
    assert statuses == [429, 502, 502, 404, 200]


def test_batch_fault_is_served_before_a_star_fault(emu: Emulator, client: httpx.Client) -> None:
    """A fault for the batch itself goes first; the "*" fault waits for the next request."""
    batch_id = emu.batch_ids()[0]
    emu.inject("*", Fault("server_error"))
    emu.inject(batch_id, Fault("rate_limit"))
    statuses = [client.get(f"/v1/batches/{batch_id}").status_code for _ in range(3)]
    assert statuses == [429, 503, 200]


def test_forever_fault_is_never_spent(emu: Emulator, client: httpx.Client) -> None:
    """times=-1 spoils every matching request."""
    emu.inject("*list*", Fault("invalid_json", times=-1))
    for _ in range(5):
        assert client.get("/v1/batches").headers["content-type"] == "text/html"


def test_unauthorized_request_does_not_spend_a_fault(emu: Emulator, client: httpx.Client) -> None:
    """Auth is checked first: a 401 leaves the fault queued for the next good request."""
    emu.inject("*list*", Fault("server_error"))
    assert client.get("/v1/batches", headers={"authorization": "wrong"}).status_code == 401
    assert client.get("/v1/batches").status_code == 503
    assert client.get("/v1/batches").status_code == 200


def test_faults_are_spent_exactly_once_across_threads(emu: Emulator) -> None:
    """Concurrent requests consume a counted fault exactly its number of times."""
    batch_id = emu.batch_ids()[0]
    emu.inject(batch_id, Fault("rate_limit", times=10))
    request = httpx.Request(
        "GET", f"{BASE_URL}/v1/batches/{batch_id}", headers={"authorization": KEY}
    )
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: emu.handle(request).status_code, range(40)))
    assert Counter(statuses) == {429: 10, 200: 30}
    assert emu.request_count(f"/v1/batches/{batch_id}") == 40


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "explode"},
        {"kind": "rate_limit", "times": 0},
        {"kind": "rate_limit", "times": -2},
        {"kind": "server_error", "status": 404},
        {"kind": "slow", "delay": -1.0},
        {"kind": "rate_limit", "retry_after": " "},
    ],
)
def test_fault_rejects_impossible_values(kwargs: dict[str, Any]) -> None:
    """Fault refuses a kind, count, status, delay or Retry-After that cannot be served."""
    with pytest.raises(ValueError, match=r"kind|times|status|delay|retry_after"):
        Fault(**kwargs)


# -- parse_fault ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "target", "fault"),
    [
        (
            "b-123:rate_limit x3:retry_after=1",
            "b-123",
            Fault("rate_limit", times=3, retry_after="1"),
        ),
        ("ID:rate_limitx3:retry_after=2", "ID", Fault("rate_limit", times=3, retry_after="2")),
        ("ID:server_error:status=502:times=2", "ID", Fault("server_error", times=2, status=502)),
        ("ID:slow:delay=0.5", "ID", Fault("slow", delay=0.5)),
        ("*list*:server_error", "*list*", Fault("server_error")),
        ("*:not_found:times=-1", "*", Fault("not_found", times=-1)),
        ("ID: truncated ", "ID", Fault("truncated")),
        ("ID:invalid_json x2", "ID", Fault("invalid_json", times=2)),
        ("ID:wrong_shape", "ID", Fault("wrong_shape")),
        ("ID:wrong_encoding", "ID", Fault("wrong_encoding")),
        ("ID:lone_surrogate x2", "ID", Fault("lone_surrogate", times=2)),
        ("*:bad_escape", "*", Fault("bad_escape")),
        ("ID:huge_number", "ID", Fault("huge_number")),
        ("*:api_down:after=1", "*", Fault("api_down", after=1)),
        ("*list*:page_cap:size=2", "*list*", Fault("page_cap", size=2)),
        ("*list*:unsorted:order=shuffled", "*list*", Fault("unsorted", order="shuffled")),
        ("*list*:unsorted", "*list*", Fault("unsorted", order="descending")),
        (
            "ID:rate_limit:retry_after=Wed, 21 Oct 2015 07:28:00 GMT",
            "ID",
            Fault("rate_limit", retry_after="Wed, 21 Oct 2015 07:28:00 GMT"),
        ),
    ],
)
def test_parse_fault_reads_good_specs(spec: str, target: str, fault: Fault) -> None:
    """Every documented spec form parses to its target and Fault."""
    assert parse_fault(spec) == (target, fault)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "ID",
        "ID:",
        ":rate_limit",
        "ID:explode",
        "ID:rate_limit:status=502",
        "ID:server_error:status=404",
        "ID:server_error:status=bad",
        "ID:rate_limitx0",
        "ID:rate_limit xmany",
        "ID:slow:delay=soon",
        "ID:rate_limit x2:times=3",
        "ID:server_error:colour=red",
        "ID:rate_limit:oops",
        "ID:slow:delay=1:delay=2",
        "*:api_down:after=-1",
        "*:api_down:size=2",
        "*list*:page_cap:size=0",
        "*list*:unsorted:order=random",
    ],
)
def test_parse_fault_rejects_bad_specs(spec: str) -> None:
    """A malformed spec raises ValueError naming the spec."""
    with pytest.raises(ValueError, match="bad fault spec"):
        parse_fault(spec)


# -- revisions --------------------------------------------------------------------------


@pytest.mark.parametrize("revision", [1, 2, 5])
def test_revision_drops_one_call_and_adds_one_per_batch(revision: int) -> None:
    """At revision r every batch lost one base call and gained one new call."""
    base = Emulator()
    revised = Emulator(revision=revision)
    for before, after in zip(batches_of(base), batches_of(revised), strict=True):
        old_ids = [call_id(call) for call in before["call_data"]]
        new_ids = [call_id(call) for call in after["call_data"]]
        assert len(set(old_ids) - set(new_ids)) == 1
        assert len(set(new_ids) - set(old_ids)) == 1
        assert new_ids[-1] not in old_ids


def test_revision_changes_changed_fraction_of_calls() -> None:
    """About changed_fraction of the surviving calls carry new values; the rest are untouched."""
    base = Emulator(batches=2, calls_per_batch=100).raw_batch
    revised = Emulator(batches=2, calls_per_batch=100, revision=1)
    for batch_id in revised.batch_ids()[:1]:  # the oldest batch: no in-progress calls to finish
        before = {call_id(call): call for call in base(batch_id)["call_data"]}
        after = {call_id(call): call for call in revised.raw_batch(batch_id)["call_data"]}
        changed = [cid for cid in before.keys() & after.keys() if before[cid] != after[cid]]
        assert len(changed) == 10
        for cid in changed:
            old, new = before[cid], after[cid]
            assert old.get("answered_by") != new.get("answered_by")
            assert len(new["transcripts"]) == max(0, len(old["transcripts"]) - 1)
            assert new["transcripts"] == old["transcripts"][: len(new["transcripts"])]


def test_revision_finishes_the_in_progress_batch() -> None:
    """The newest batch is in-progress at revision 0 and completed, with no call pending, later."""
    emu = Emulator()
    newest = emu.batch_ids()[-1]
    assert emu.raw_batch(newest)["status"] == "in-progress"
    emu.revision = 1
    raw = emu.raw_batch(newest)
    assert raw["status"] == "completed"
    assert all(call["queue_status"] not in UNFINISHED for call in raw["call_data"])
    assert int(raw["analysis"]["in_progress_calls"]) == 0
    assert int(raw["analysis"]["completed_calls"]) == len(raw["call_data"])


@pytest.mark.parametrize("revision", [0, 1, 2, 3])
def test_analysis_agrees_with_calls_at_every_revision(revision: int) -> None:
    """Counts, queue statuses, lengths, ids, endpoints and errors match call_data."""
    for raw in batches_of(Emulator(batches=6, calls_per_batch=40, revision=revision)):
        assert_analysis_matches_calls(raw)


def test_revision_is_a_pure_function_of_seed_batch_and_revision() -> None:
    """Setting revision on a live emulator serves what a fresh one at that revision serves."""
    live = Emulator(seed=3)
    live.revision = 2
    assert batches_of(live) == batches_of(Emulator(seed=3, revision=2))
    assert batches_of(live) != batches_of(Emulator(seed=3, revision=1))
    live.revision = 0
    assert batches_of(live) == batches_of(Emulator(seed=3))


def test_zero_changed_fraction_leaves_finished_batches_alone() -> None:
    """With changed_fraction=0 a revision only finishes the in-progress batch."""
    base, revised = Emulator(changed_fraction=0.0), Emulator(changed_fraction=0.0, revision=1)
    assert batches_of(base)[:-1] == batches_of(revised)[:-1]
    assert batches_of(revised)[-1]["status"] == "completed"


@pytest.mark.parametrize("revision", [0, 1, 4])
def test_transcript_ids_are_unique_across_the_emulator(revision: int) -> None:
    """No two transcript lines share an id, new calls' lines included."""
    ids = [
        line["id"] for call in calls_of(Emulator(revision=revision)) for line in call["transcripts"]
    ]
    assert ids
    assert len(ids) == len(set(ids))


# -- put_batch and remove_batch ---------------------------------------------------------


def test_put_batch_replaces_a_generated_batch(emu: Emulator, client: httpx.Client) -> None:
    """A stored payload is served as given, in list and detail, at any revision."""
    batch_id = emu.batch_ids()[1]
    raw = emu.raw_batch(batch_id)
    raw["batch_params"]["label"] = "Replaced"
    raw["call_data"] = raw["call_data"][:2]
    emu.put_batch(raw)
    emu.revision = 3
    assert client.get(f"/v1/batches/{batch_id}").json() == raw
    assert emu.raw_batch(batch_id) == raw
    labels = {
        entry["batch_id"]: entry["label"] for entry in client.get("/v1/batches").json()["batches"]
    }
    assert labels[batch_id] == "Replaced"
    assert len(labels) == 5


def test_put_batch_adds_a_batch_in_created_at_order(emu: Emulator, client: httpx.Client) -> None:
    """A new id joins the list at the place its created_at puts it, whatever its format."""
    raw = emu.raw_batch(emu.batch_ids()[0])
    raw["batch_params"]["id"] = "added-batch"
    raw["batch_params"]["created_at"] = "2024-12-31T19:00:00.000-05:00"
    emu.put_batch(raw)
    ids = emu.batch_ids()
    assert "added-batch" in ids
    created = [parse_ts(emu.raw_batch(batch_id)["batch_params"]["created_at"]) for batch_id in ids]
    assert created == sorted(created)
    assert list_ids(client, ascending="true") == ids


def test_put_batch_keeps_its_own_copy(emu: Emulator) -> None:
    """Changing a payload after put_batch, or the copy raw_batch returns, changes nothing served."""
    raw = emu.raw_batch(emu.batch_ids()[0])
    emu.put_batch(raw)
    raw["batch_params"]["label"] = "mutated"
    served = emu.raw_batch(emu.batch_ids()[0])
    served["call_data"].clear()
    assert emu.raw_batch(emu.batch_ids()[0])["batch_params"]["label"] != "mutated"
    assert emu.raw_batch(emu.batch_ids()[0])["call_data"]


@pytest.mark.parametrize("raw", [{}, {"batch_params": "x"}, {"batch_params": {"id": 3}}])
def test_put_batch_refuses_a_payload_without_an_id(emu: Emulator, raw: dict[str, Any]) -> None:
    """put_batch needs a string batch_params.id."""
    with pytest.raises(ValueError, match="batch_params"):
        emu.put_batch(raw)


def test_remove_batch_hides_it_from_list_and_detail(emu: Emulator, client: httpx.Client) -> None:
    """A removed batch leaves the list, answers 404, and comes back when put again."""
    batch_id = emu.batch_ids()[2]
    raw = emu.raw_batch(batch_id)
    emu.remove_batch(batch_id)
    emu.remove_batch(batch_id)
    assert batch_id not in list_ids(client)
    assert batch_id not in emu.batch_ids()
    assert client.get(f"/v1/batches/{batch_id}").status_code == 404
    with pytest.raises(KeyError):
        emu.raw_batch(batch_id)
    emu.put_batch(raw)
    assert client.get(f"/v1/batches/{batch_id}").json() == raw


def test_raw_batch_raises_key_error_for_unknown_ids(emu: Emulator) -> None:
    """raw_batch of an id that never existed raises KeyError."""
    with pytest.raises(KeyError):
        emu.raw_batch("no-such-batch")


# -- the quirks of real payloads, all present in a default emulator ---------------------


def test_old_batches_use_c_id_and_have_no_status() -> None:
    """The oldest batches key calls by c_id and lack status; newer ones use call_id and have it."""
    raws = batches_of(Emulator())
    assert "status" not in raws[0]
    assert all("c_id" in call and "call_id" not in call for call in raws[0]["call_data"])
    assert all(
        line["c_id"] == call["c_id"]
        for call in raws[0]["call_data"]
        for line in call["transcripts"]
    )
    assert all("call_id" in call for call in raws[-1]["call_data"])
    assert {raw.get("status") for raw in raws} == {None, "completed", "in-progress"}


def test_newest_batch_is_in_progress_with_queued_and_started_calls() -> None:
    """The newest batch is in-progress and some of its calls are queued or started."""
    raw = batches_of(Emulator())[-1]
    assert raw["status"] == "in-progress"
    pending = [
        call for call in raw["call_data"] if not call["completed"] and call["error_message"] is None
    ]
    assert {call["queue_status"] for call in pending} == {"queued", "started"}
    assert {call["status"] for call in pending} <= {"queued", "in-progress"}


def test_answered_by_takes_every_shape() -> None:
    """answered_by is a string, a one-element list, null or missing."""
    values = [call.get("answered_by", "<missing>") for call in calls_of(Emulator())]
    shapes = {repr(value) for value in values}
    for expected in ("human", "voicemail", "unknown", "no-answer", ["human"], None, "<missing>"):
        assert repr(expected) in shapes


def test_analysis_counts_are_ints_in_some_batches_and_strings_in_others() -> None:
    """total/completed/in_progress and endpoint counts come as ints and as numeric strings."""
    analyses = [raw["analysis"] for raw in batches_of(Emulator())]
    count_types = {
        type(a[key])
        for a in analyses
        for key in ("total_calls", "completed_calls", "in_progress_calls")
    }
    endpoint_types = {type(n) for a in analyses for n in a["endpoints"].values()}
    assert count_types == {int, str}
    assert endpoint_types == {int, str}
    assert all(str(a["total_calls"]) == "20" for a in analyses)


def test_error_messages_are_objects_in_some_batches_and_strings_in_others() -> None:
    """error_messages are {call_id, error_message} objects or plain strings, one per failed call."""
    raws = batches_of(Emulator())
    kinds = {type(entry) for raw in raws for entry in raw["analysis"]["error_messages"]}
    assert kinds == {dict, str}
    for raw in raws:
        errored = [call for call in raw["call_data"] if call["error_message"] is not None]
        assert len(raw["analysis"]["error_messages"]) == len(errored)


def test_timestamps_take_all_four_shapes() -> None:
    """Timestamps come with microseconds, five digits, milliseconds plus Z, and a -05:00 offset."""
    stamps = [raw["batch_params"]["created_at"] for raw in batches_of(Emulator())]
    for call in calls_of(Emulator()):
        stamps += [call["created_at"], *([call["end_at"]] if call["end_at"] else [])]
        stamps += [line["created_at"] for line in call["transcripts"]]
    for name, shape in TIMESTAMP_SHAPES.items():
        assert any(shape.match(stamp) for stamp in stamps), name
    assert all(any(shape.match(stamp) for shape in TIMESTAMP_SHAPES.values()) for stamp in stamps)


def test_queue_status_mixes_complete_completed_and_error_states() -> None:
    """queue_status says complete and completed for finished calls and *_error for failed ones."""
    calls = calls_of(Emulator())
    assert {"complete", "completed", "call_error", "complete_error"} <= {
        call["queue_status"] for call in calls
    }
    for call in calls:
        if call["queue_status"].endswith("_error"):
            assert isinstance(call["error_message"], str)
            assert call["status"] == "failed"
            assert call["completed"] is False
    assert {"completed", "in-progress", "failed", "queued"} <= {call["status"] for call in calls}


def test_error_message_is_set_on_about_a_tenth_of_calls() -> None:
    """Roughly 10% of calls carry an error_message string; the rest have null."""
    calls = calls_of(Emulator(batches=3, calls_per_batch=100))
    errored = [call for call in calls if call["error_message"] is not None]
    assert 0.05 * len(calls) <= len(errored) <= 0.15 * len(calls)
    assert all(isinstance(call["error_message"], str) for call in errored)


def test_corrected_duration_is_a_string_an_int_or_missing() -> None:
    """corrected_duration is mostly a string of seconds, sometimes an int, sometimes absent."""
    values = [call.get("corrected_duration", "<missing>") for call in calls_of(Emulator())]
    assert any(isinstance(value, int) for value in values)
    assert "<missing>" in values
    assert any(isinstance(value, str) and value.isdigit() for value in values)


def test_call_fields_have_the_real_types() -> None:
    """call_length is float minutes, max_duration int minutes, end_at a string or null, etc."""
    for raw in batches_of(Emulator()):
        max_duration = raw["batch_params"]["call_params"]["max_duration"]
        for call in raw["call_data"]:
            assert isinstance(call["call_length"], float)
            assert 0 <= call["call_length"] <= max_duration == call["max_duration"]
            assert call["end_at"] is None or isinstance(call["end_at"], str)
            assert isinstance(call["endpoint_url"], str)
            assert call["request_data"]["phone_number"] == call["to"]
            assert isinstance(call["completed"], bool)
            for number in (call["to"], call["from"]):
                assert re.fullmatch(r"\+1555\d{7}", number)


def test_unknown_fields_appear_on_calls_params_and_top_level() -> None:
    """Some calls carry price/summary/variables, some batch_params voice, some payloads meta."""
    raws = batches_of(Emulator())
    call_keys = {key for raw in raws for call in raw["call_data"] for key in call}
    assert {"price", "summary", "variables"} <= call_keys
    assert any("voice" in raw["batch_params"] for raw in raws)
    assert not all("voice" in raw["batch_params"] for raw in raws)
    assert any("meta" in raw for raw in raws)


def test_batch_params_have_documented_fields_and_some_null_campaigns() -> None:
    """batch_params has the documented fields, call_params an object, campaign_id sometimes null."""
    raws = batches_of(Emulator())
    for raw in raws:
        params = raw["batch_params"]
        assert {
            "id",
            "created_at",
            "label",
            "base_prompt",
            "endpoint_code",
            "campaign_id",
        } <= params.keys()
        assert isinstance(params["call_params"], dict)
        assert isinstance(params["call_params"]["max_duration"], int)
    campaigns = [raw["batch_params"]["campaign_id"] for raw in raws]
    assert None in campaigns
    assert any(isinstance(campaign, str) for campaign in campaigns)


def test_transcripts_are_on_about_half_the_calls_with_every_speaker() -> None:
    """About transcript_ratio of calls have 2-8 lines by user, assistant, robot and agent-action."""
    calls = calls_of(Emulator())
    with_lines = [call for call in calls if call["transcripts"]]
    assert 0.3 * len(calls) <= len(with_lines) <= 0.6 * len(calls)
    assert all(2 <= len(call["transcripts"]) <= 8 for call in with_lines)
    assert {line["user"] for call in with_lines for line in call["transcripts"]} == {
        "user",
        "assistant",
        "robot",
        "agent-action",
    }
    for call in with_lines:
        for line in call["transcripts"]:
            assert isinstance(line["id"], int)
            assert line["c_id"] == call_id(call)
    assert not any(call["transcripts"] for call in calls_of(Emulator(transcript_ratio=0.0)))


# -- HTTP server ------------------------------------------------------------------------


def test_serve_answers_like_the_transport_over_one_kept_alive_connection(emu: Emulator) -> None:
    """Over 127.0.0.1 a pooled client reuses one connection and gets the in-process bytes."""
    paths = [
        "/v1/batches",
        *(f"/v1/batches/{batch_id}" for batch_id in emu.batch_ids()),
        "/v1/batches/nope",
    ]
    with (
        emu.serve() as server,
        httpx.Client(base_url=server.url, headers={"authorization": KEY}) as client,
    ):
        assert server.url.startswith("http://127.0.0.1:")
        local_addresses = set()
        for path in paths:
            response = client.get(path, params={"include_transcripts": "false"})
            local_addresses.add(response.extensions["network_stream"].get_extra_info("client_addr"))
            in_process = emu.handle(
                httpx.Request(
                    "GET",
                    BASE_URL + path,
                    params={"include_transcripts": "false"},
                    headers={"authorization": KEY},
                )
            )
            assert response.status_code == in_process.status_code
            assert response.content == in_process.content
            assert int(response.headers["content-length"]) == len(response.content)
        assert client.get("/v1/batches", headers={"authorization": "wrong"}).status_code == 401
    assert len(local_addresses) == 1
    assert emu.request_count("/v1/batches") == 3  # served twice, handled in-process once


def test_serve_delivers_faults_byte_for_byte(emu: Emulator) -> None:
    """A truncated answer reaches an HTTP client cut, with a matching Content-Length."""
    batch_id = emu.batch_ids()[0]
    normal = orjson.dumps(emu.raw_batch(batch_id))
    emu.inject(batch_id, Fault("truncated"))
    emu.inject(batch_id, Fault("rate_limit", retry_after="2"))
    with (
        emu.serve() as server,
        httpx.Client(base_url=server.url, headers={"authorization": KEY}) as client,
    ):
        cut = client.get(f"/v1/batches/{batch_id}")
        limited = client.get(f"/v1/batches/{batch_id}")
        assert client.get(f"/v1/batches/{batch_id}").content == normal
    assert cut.status_code == 200
    assert cut.content == normal[: len(normal) // 2]
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "2")


def test_serve_accepts_localhost_and_frees_the_port_on_close(emu: Emulator) -> None:
    """ "localhost" serves on 127.0.0.1; after close the port refuses connections."""
    server = emu.serve(host="localhost")
    with httpx.Client(base_url=server.url, headers={"authorization": KEY}) as client:
        assert client.get("/v1/batches").status_code == 200
        server.close()
        server.close()
        with pytest.raises(httpx.TransportError):
            client.get("/v1/batches")


NOT_LOOPBACK = ["0.0.0.0", "::", "192.168.1.10", "8.8.8.8", "example.com", ""]  # noqa: S104


# S104 above: these addresses are only handed to serve() to see it refuse them.
@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_serve_refuses_a_host_that_is_not_loopback(emu: Emulator, host: str) -> None:
    """serve() binds loopback addresses only."""
    with pytest.raises(ValueError, match="loopback"):
        emu.serve(host=host)


def test_serve_forever_returns_once_closed(emu: Emulator) -> None:
    """serve_forever blocks until another thread closes the server."""
    server = emu.serve()
    closer = threading.Timer(0.1, server.close)
    closer.start()
    server.serve_forever()
    closer.join()
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/v1/batches", headers={"authorization": KEY})


def test_server_repr_shows_the_url(emu: Emulator) -> None:
    """An EmulatorServer names its URL, and an Emulator's repr keeps the API key out."""
    with emu.serve() as server:
        assert isinstance(server, EmulatorServer)
        assert server.url in repr(server)
    assert KEY not in repr(emu)


# -- clients and scale ------------------------------------------------------------------


def test_transport_works_with_an_async_client(emu: Emulator) -> None:
    """The same transport serves an httpx.AsyncClient."""

    async def fetch() -> list[int]:
        async with httpx.AsyncClient(
            transport=emu.transport(), base_url=BASE_URL, headers={"authorization": KEY}
        ) as client:
            responses = await asyncio.gather(
                *(client.get(f"/v1/batches/{batch_id}") for batch_id in emu.batch_ids())
            )
        return [len(response.json()["call_data"]) for response in responses]

    assert asyncio.run(fetch()) == [20] * 5


def test_request_count_counts_all_or_one_path(emu: Emulator, client: httpx.Client) -> None:
    """request_count() counts every request; with a path, only requests to that path."""
    batch_id = emu.batch_ids()[0]
    client.get("/v1/batches")
    client.get("/v1/batches", params={"limit": 1})
    client.get(f"/v1/batches/{batch_id}")
    assert emu.request_count() == 3
    assert emu.request_count("/v1/batches") == 2
    assert emu.request_count(f"/v1/batches/{batch_id}") == 1
    assert emu.requests[-1].url.path == f"/v1/batches/{batch_id}"


def test_ten_thousand_call_batch_generates_and_serializes() -> None:
    """A 10,000-call batch comes out whole, consistent and valid JSON."""
    emu = Emulator(batches=100, calls_per_batch=10_000)
    batch_id = emu.batch_ids()[42]
    response = emu.handle(
        httpx.Request("GET", f"{BASE_URL}/v1/batches/{batch_id}", headers={"authorization": KEY})
    )
    raw = orjson.loads(response.content)
    assert len(raw["call_data"]) == 10_000
    assert_analysis_matches_calls(raw)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batches": -1},
        {"calls_per_batch": -1},
        {"revision": -1},
        {"transcript_ratio": 1.5},
        {"changed_fraction": -0.1},
    ],
)
def test_emulator_refuses_impossible_settings(kwargs: dict[str, Any]) -> None:
    """Negative sizes and ratios outside [0, 1] raise ValueError."""
    with pytest.raises(ValueError, match=r"negative|ratio"):
        Emulator(**kwargs)


# -- faults real servers produce, ids of any characters, list modes ----------------------


def test_wrong_encoding_sends_plain_json_labelled_gzip(emu: Emulator) -> None:
    """wrong_encoding: the header says gzip, the bytes on the wire are the plain JSON body."""
    batch_id = emu.batch_ids()[0]
    normal = orjson.dumps(emu.raw_batch(batch_id))
    emu.inject(batch_id, Fault("wrong_encoding"))
    with (
        emu.serve() as server,
        httpx.Client(base_url=server.url, headers={"authorization": KEY}) as client,
        client.stream("GET", f"/v1/batches/{batch_id}") as response,
    ):
        raw = b"".join(response.iter_raw())
        assert response.headers["content-encoding"] == "gzip"
    assert raw == normal


@pytest.mark.parametrize(
    "batch_id",
    ["a/b", "q?x=1", "frag#ment", "100%", "with space", "tab\tnl\n", "caf\u00e9-\u6771\u4eac"],
)
def test_ids_with_any_characters_are_served_in_process_and_over_http(
    emu: Emulator, client: httpx.Client, batch_id: str
) -> None:
    """A percent-encoded id reaches its batch, in-process and through the HTTP server."""
    raw = emu.raw_batch(emu.batch_ids()[0])
    raw["batch_params"]["id"] = batch_id
    emu.put_batch(raw)
    path = "/v1/batches/" + urllib.parse.quote(batch_id, safe="")
    in_process = client.get(path)
    with (
        emu.serve() as server,
        httpx.Client(base_url=server.url, headers={"authorization": KEY}) as http,
    ):
        served = http.get(path)
        listed = [b["batch_id"] for b in http.get("/v1/batches").json()["batches"]]
    assert in_process.status_code == served.status_code == 200
    assert in_process.json()["batch_params"]["id"] == batch_id
    assert served.content == in_process.content
    assert batch_id in listed


def test_api_down_after_one_batch_refuses_every_later_request(emu: Emulator) -> None:
    """api_down after=1: one detail is answered, then every request gets no answer at all."""
    first, second = emu.batch_ids()[:2]
    emu.inject(*parse_fault("*:api_down:after=1"))
    with httpx.Client(
        transport=emu.transport(), base_url=BASE_URL, headers={"authorization": KEY}
    ) as client:
        assert client.get("/v1/batches").status_code == 200  # the list is not a batch
        assert client.get(f"/v1/batches/{first}").status_code == 200
        for path in (f"/v1/batches/{second}", f"/v1/batches/{first}", "/v1/batches"):
            with pytest.raises(httpx.ConnectError):
                client.get(path)


def test_api_down_over_http_hangs_up_without_an_answer(emu: Emulator) -> None:
    """Through the HTTP server, a downed API closes each connection without a response."""
    emu.inject("*", Fault("api_down"))
    with (
        emu.serve() as server,
        httpx.Client(base_url=server.url, headers={"authorization": KEY}) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"/v1/batches/{emu.batch_ids()[0]}")
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/v1/batches")


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_page_cap_serves_at_most_that_many_whatever_limit_asks(cap: int) -> None:
    """page_cap K: each page holds at most K batches even when limit asks for more."""
    emu = Emulator(batches=5, page_cap=cap)
    with httpx.Client(
        transport=emu.transport(), base_url=BASE_URL, headers={"authorization": KEY}
    ) as client:
        page = client.get("/v1/batches", params={"limit": 100, "ascending": "true"})
    assert [b["batch_id"] for b in page.json()["batches"]] == emu.batch_ids()[:cap]


@pytest.mark.parametrize("order", ["descending", "shuffled"])
def test_unsorted_list_ignores_ascending_and_keeps_every_batch(order: Any) -> None:
    """An unsorted list mode lists every batch once, not oldest first, whatever is asked."""
    emu = Emulator(batches=8)
    emu.inject(*parse_fault(f"*list*:unsorted:order={order}"))
    with httpx.Client(
        transport=emu.transport(), base_url=BASE_URL, headers={"authorization": KEY}
    ) as client:
        listed = [
            b["batch_id"]
            for b in client.get("/v1/batches", params={"ascending": "true"}).json()["batches"]
        ]
    assert sorted(listed) == sorted(emu.batch_ids())
    assert listed != emu.batch_ids()
    if order == "descending":
        assert listed == emu.batch_ids()[::-1]


def test_put_batch_can_serve_a_payload_under_another_id(
    emu: Emulator, client: httpx.Client
) -> None:
    """put_batch(batch_id=...) serves the payload as given, its own id absent or different."""
    raw = emu.raw_batch(emu.batch_ids()[0])
    del raw["batch_params"]["id"]
    emu.put_batch(raw, batch_id="elsewhere")
    served = client.get("/v1/batches/elsewhere").json()
    assert "id" not in served["batch_params"]
