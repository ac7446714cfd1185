"""The v2 source: parsing the v2 and calls API payloads (the documented examples and every
quirk of the notes) and requesting them through the shared client."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from batchsync.bland.auto import AutoSource, build_source
from batchsync.bland.http import BlandHttp, RetryPolicy
from batchsync.bland.source import Parts
from batchsync.bland.v1 import V1Source
from batchsync.bland.v2 import (
    V2Source,
    batch_status,
    is_v2_id,
    parse_base_prompt,
    parse_calls_page,
    parse_envelope,
    parse_logs,
    parse_v2_batch,
    parse_v2_list,
)
from batchsync.config import load_api
from batchsync.emulator import Emulator, parse_fault
from batchsync.errors import BatchNotFound, HttpStatusError, PayloadError
from tests.conftest import EMULATOR_URL

FIXTURES = Path(__file__).parent / "fixtures" / "v2"
BATCH_ID = "652ad643-5b6c-4a3f-9f1e-3c2d7b8e9a10"
CALL_ID = "3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d"
SYNCED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def fixture(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


def example(**changes: Any) -> dict[str, Any]:
    """The documented example batch: metadata, logs, calls list and one call's detail."""
    parts = {
        "raw_batch": fixture("batch.json")["data"],
        "raw_logs": fixture("batch-logs.json")["data"],
        "raw_calls": fixture("calls-list.json")["calls"],
        "details": {CALL_ID: fixture("call-detail.json")},
    }
    parts.update(changes)
    return parts


def parse(**changes: Any) -> Any:
    return parse_v2_batch(**example(**changes), batch_id=BATCH_ID, details_synced_at=SYNCED)


# -- parsing ----------------------------------------------------------------------------------


def test_example_batch_maps_to_the_batches_row() -> None:
    """The documented batch: description as label, task as prompt, the rest as call_params,
    status and figures from the complete event, org_id from user_id."""
    batch = parse().batch
    assert batch.batch_id == BATCH_ID
    assert batch.api_version == "v2"
    assert batch.label == "My first batch"
    assert batch.base_prompt == "Say hello to the user"
    assert batch.call_params == {"record": True, "voice": "maya", "max_duration": 5}
    assert batch.status == "completed"
    assert (batch.calls_successful, batch.calls_failed) == (2, 0)
    assert batch.org_id == "64602f94-1b2c-4d5e-8f90-a1b2c3d4e5f6"
    assert batch.created_at == datetime(2025, 5, 8, 19, 28, 12, 627000, tzinfo=UTC)
    assert batch.extra is None  # call_objects is a preview of the calls: not kept


def test_example_calls_merge_the_list_entry_and_the_detail() -> None:
    """A call with a detail gets its detail columns and transcript; one without keeps NULLs."""
    parsed = parse()
    calls = {call.call_id: call for call in parsed.calls}
    detailed = calls[CALL_ID]
    assert detailed.price == 0.068
    assert detailed.summary == "The user picked up and said hello back."
    assert detailed.recording_url == "https://example.invalid/recordings/3f1b2c4d.mp3"
    assert detailed.started_at == datetime(2025, 5, 8, 19, 28, 20, tzinfo=UTC)
    assert detailed.inbound is False
    assert detailed.call_ended_by == "ASSISTANT"
    assert detailed.disposition_tag == "COMPLETED_ACTION"
    assert detailed.variables == {"now_utc": "Thu, 08 May 2025 19:28:20 GMT", "to": "+15555550100"}
    assert detailed.metadata == {}
    assert detailed.analysis is None
    assert detailed.details_synced_at == SYNCED
    assert detailed.corrected_duration == 45  # sent as the string "45"
    assert detailed.queue_status == "complete"  # the detail says "completed"
    assert detailed.extra == {"is_canary": False, "pathway_version": None,
                              "transferred_at": None, "record": True}  # fmt: skip
    other = calls["7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d"]
    assert other.price is None
    assert other.details_synced_at is None
    assert [(line.line_id, line.speaker) for line in parsed.transcripts] == [
        (7395694, "user"),
        (7395695, "assistant"),
    ]


def test_counts_queue_statuses_and_errors_are_derived_from_the_calls() -> None:
    """v2 sends no analysis: total, completed, averages, queue counts and errors come from
    the calls."""
    parsed = parse()
    assert parsed.analysis.total_calls == 2
    assert parsed.analysis.completed_calls == 2
    assert parsed.analysis.in_progress_calls == 0
    assert parsed.analysis.call_length_average == pytest.approx(0.375)
    assert parsed.analysis.call_length_average_nonzero == pytest.approx(0.75)
    assert {(q.queue_status, q.count) for q in parsed.queue_status_counts} == {
        ("complete", 1),
        ("call_error", 1),
    }
    assert [(e.call_id, e.error_message) for e in parsed.errors] == [
        ("7a8b9c0d-1e2f-4a3b-9c4d-5e6f7a8b9c0d", "Call was not answered")
    ]


def test_log_entries_become_batch_logs_rows() -> None:
    """Each log entry is a row with its event type, UTC timestamp and payload as sent."""
    logs = parse().logs
    assert [(log.event_type, log.payload.get("state_change")) for log in logs] == [
        ("complete", None),
        ("lifecycle", "in_progress"),
    ]
    assert logs[0].timestamp == datetime(2025, 5, 8, 19, 28, 42, 748000, tzinfo=UTC)


def test_status_without_complete_event_is_the_newest_lifecycle_state_whatever_the_order() -> None:
    """Logs come newest first by default: the status is the newest state_change by time."""
    raw = [
        {"id": "b", "event_type": "lifecycle", "timestamp": "2025-05-08T19:28:15Z",
         "payload": {"state_change": "in_progress"}},
        {"id": "a", "event_type": "lifecycle", "timestamp": "2025-05-08T19:28:13Z",
         "payload": {"state_change": "validating"}},
    ]  # fmt: skip
    assert batch_status(parse_logs(raw, batch_id=BATCH_ID)) == ("in_progress", None, None)
    assert batch_status(parse_logs(list(reversed(raw)), batch_id=BATCH_ID))[0] == "in_progress"
    assert batch_status([]) == (None, None, None)


@pytest.mark.parametrize(
    ("value", "prompt", "params"),
    [
        ('{"record":true,"task":"Say hi"}', "Say hi", {"record": True}),
        ("Say hi {not json", "Say hi {not json", None),
        ('"just a string"', '"just a string"', None),
        ('{"record":true}', None, {"record": True}),
        (None, None, None),
    ],
    ids=["json-object", "invalid-json", "json-not-object", "no-task", "missing"],
)
def test_base_prompt_is_decoded_when_it_is_a_json_object(
    value: str | None, prompt: str | None, params: Any
) -> None:
    """base_prompt is a JSON-encoded string; text that is not a JSON object is kept as the
    prompt and call_params stays NULL."""
    assert parse_base_prompt(value) == (prompt, params)


def test_pathway_tags_are_kept_as_sent_strings_or_objects() -> None:
    """pathway_tags: documented as strings, seen as {name, color} objects; both kept as sent."""
    detail = fixture("call-detail.json") | {"pathway_tags": ["A", {"name": "B", "color": "#fff"}]}
    call = parse(details={CALL_ID: detail}).calls[0]
    assert call.pathway_tags == ["A", {"name": "B", "color": "#fff"}]


def test_pathway_tags_that_are_not_a_list_fail_the_batch_naming_the_field() -> None:
    """A pathway_tags value that is no list is refused, naming the batch, call and field."""
    detail = fixture("call-detail.json") | {"pathway_tags": "Greeting"}
    with pytest.raises(PayloadError) as caught:
        parse(details={CALL_ID: detail})
    assert caught.value.field == f"call {CALL_ID}.pathway_tags"
    assert BATCH_ID in str(caught.value)


def test_price_that_is_not_a_number_fails_the_batch_without_quoting_other_payload() -> None:
    """A detail whose price is not a number fails the batch, naming batch and field."""
    detail = fixture("call-detail.json") | {"price": {"usd": 1}}
    with pytest.raises(PayloadError) as caught:
        parse(details={CALL_ID: detail})
    assert caught.value.field == f"call {CALL_ID}.price"
    assert "hello back" not in str(caught.value)


def test_detail_that_is_not_an_object_fails_the_batch() -> None:
    """A call detail body that is a list fails the batch, naming the call."""
    with pytest.raises(PayloadError, match="expected an object"):
        parse(details={CALL_ID: []})


def test_response_for_another_batch_fails() -> None:
    """A v2 batch body naming another id is refused."""
    raw = fixture("batch.json")["data"] | {"id": "00000000-0000-4000-8000-000000000000"}
    with pytest.raises(PayloadError, match="another batch than the one requested") as caught:
        parse(raw_batch=raw)
    assert "00000000-0000" not in str(caught.value)  # the value sent is not quoted


def test_calls_not_fetched_leave_call_tables_alone() -> None:
    """Without the calls list, calls, counts and errors are None (stored rows untouched)."""
    parsed = parse(raw_calls=None, details=None)
    assert parsed.calls is parsed.analysis is parsed.errors is parsed.transcripts is None
    assert parsed.logs is not None


def test_calls_without_details_have_no_transcripts_part() -> None:
    """With the calls list only, transcripts are None: stored lines are kept."""
    parsed = parse(details=None)
    assert parsed.transcripts is None
    assert all(call.details_synced_at is None for call in parsed.calls)


def test_calls_page_without_total_count_gives_none() -> None:
    """total_count may be missing from the calls list."""
    raw = fixture("calls-list.json")
    del raw["total_count"]
    calls, total = parse_calls_page(raw, batch_id=BATCH_ID)
    assert (len(calls), total) == (2, None)


def test_calls_page_whose_calls_are_not_a_list_fails() -> None:
    """A calls page without a calls list is refused, naming the field."""
    with pytest.raises(PayloadError, match="field calls"):
        parse_calls_page({"total_count": 1, "calls": {}}, batch_id=BATCH_ID)


def test_envelope_with_errors_fails_with_the_apis_message() -> None:
    """{data: null, errors: [...]} is an error whose message is the API's own."""
    raw = {"data": None, "errors": [{"error": "AUTH_FAILURE", "message": "Unauthorized"}]}
    with pytest.raises(PayloadError, match=r"answered with an error \(Unauthorized\)"):
        parse_envelope(raw, batch_id=BATCH_ID, what="(batch)")


def test_list_page_reads_id_created_at_and_description() -> None:
    """The v2 list entries become summaries with description as the label."""
    (summary,), problems = parse_v2_list(fixture("list-batches.json"))
    assert summary.batch_id == BATCH_ID
    assert summary.label == "My first batch"
    assert summary.campaign_id is None
    assert summary.error is None
    assert problems == []


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"description": "x"}, "data[1].id"),
        ({"id": None}, "data[1].id"),
        ({"id": ""}, "data[1].id"),
        ({"id": 42}, "data[1].id"),
        ({"id": {"uuid": BATCH_ID}}, "data[1].id"),
        ("652ad643-5b6c-4a3f-9f1e-3c2d7b8e9a11", "data[1]"),
        (None, "data[1]"),
    ],
    ids=["missing", "null", "empty", "number", "object", "string_entry", "null_entry"],
)
def test_list_entry_without_a_usable_id_is_left_out_naming_the_position(
    entry: Any, field: str
) -> None:
    """An entry with no usable id is left out; its error names where it sits; the entries
    around it are read."""
    good = fixture("list-batches.json")["data"][0]
    later = {**good, "id": "11111111-2222-4333-8444-555555555555"}
    summaries, problems = parse_v2_list({"data": [good, entry, later], "errors": None})
    assert [s.batch_id for s in summaries] == [BATCH_ID, later["id"]]
    [problem] = problems
    assert problem.batch_id is None
    assert problem.field == field


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"created_at": "yesterday"}, "data[0].created_at"),
        ({"created_at": ["2025-05-08"]}, "data[0].created_at"),
        ({"description": {"text": "x"}}, "data[0].description"),
    ],
    ids=["created_at_text", "created_at_list", "description_object"],
)
def test_list_entry_with_an_id_and_an_unreadable_field_carries_its_error(
    change: dict[str, Any], field: str
) -> None:
    """An entry with an id but a bad created_at or description is listed with its error
    (its batch fails in the run), and the error names the batch and the field."""
    entry = {**fixture("list-batches.json")["data"][0], **change}
    [summary], [problem] = parse_v2_list({"data": [entry], "errors": None})
    assert summary.batch_id == BATCH_ID
    assert summary.error == str(problem)
    assert problem.batch_id == BATCH_ID
    assert problem.field == field


@pytest.mark.parametrize(
    "raw", [{"data": "batches", "errors": None}, {"data": {"id": BATCH_ID}}, ["x"], "text"]
)
def test_list_page_that_is_not_a_list_of_entries_fails(raw: Any) -> None:
    """A page whose data is not a list (or that is no envelope at all) is a PayloadError."""
    with pytest.raises(PayloadError):
        parse_v2_list(raw)


def test_uuid_ids_are_v2_and_gen_batch_ids_are_not() -> None:
    """A UUID goes to v2, a ...-gen-batch id to v1."""
    assert is_v2_id(BATCH_ID)
    assert not is_v2_id("AAcQq8zXxLB56LWg-gen-batch")


# -- requests -----------------------------------------------------------------------------------


@pytest.fixture
def account() -> Emulator:
    return Emulator(seed=11, batches=2, calls_per_batch=3, v2_batches=3, v2_calls_per_batch=5)


@pytest.fixture
def shared_http(account: Emulator, sleeps: list[float]) -> Iterator[BlandHttp]:
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(
        api, transport=account.transport(), retry=RetryPolicy(attempts=3), sleep=sleeps.append
    ) as http:
        yield http


def v2_ids(account: Emulator) -> list[str]:
    return list(account.v2.batches)


def paths(account: Emulator) -> list[str]:
    return [request.url.path for request in account.requests]


def test_fetch_reads_batch_logs_one_calls_page_and_each_detail(
    account: Emulator, shared_http: BlandHttp
) -> None:
    """One batch of 5 calls: batch, logs (one page, then the empty page that ends them), one
    calls page, 5 details."""
    batch_id = v2_ids(account)[0]
    fetched = V2Source(shared_http).fetch_batch(batch_id, Parts())
    assert fetched.parsed is not None
    assert len(fetched.parsed.calls) == 5
    assert len(fetched.parsed.transcripts) > 0
    assert sorted(paths(account)).count("/v1/calls") == 1
    assert sum(p.startswith("/v1/calls/") for p in paths(account)) == 5
    assert len(account.requests) == 1 + 2 + 1 + 5


@pytest.mark.parametrize(
    ("page_size", "pages"),
    [(100, 2), (4, 2), (3, 2), (2, 3), (1, 4)],
    ids=["100", "4", "3", "2", "1"],
)
def test_logs_are_paged_until_an_empty_page(
    account: Emulator, shared_http: BlandHttp, page_size: int, pages: int
) -> None:
    """A batch of three log entries: pages until an empty one, short pages included (a
    server may cap a page below ``take``); every entry is read once."""
    batch_id = v2_ids(account)[0]
    source = V2Source(shared_http, logs_page_size=page_size)
    fetched = source.fetch_batch(batch_id, Parts(calls=False))
    assert fetched.parsed is not None
    assert len(fetched.parsed.logs or []) == len(account.v2.batches[batch_id].logs) == 3
    asked = [r.url.params for r in account.requests if r.url.path.endswith("/logs")]
    assert len(asked) == pages
    assert [int(params["take"]) for params in asked] == [page_size] * pages


def test_logs_of_an_api_that_ignores_skip_stop_at_the_repeated_page(
    account: Emulator, sleeps: list[float]
) -> None:
    """A logs endpoint that answers the same full page whatever the skip ends the paging at
    the first page that brings no new entry."""
    batch_id = v2_ids(account)[0]
    handle_rest = account.transport().handler

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/logs"):
            url = request.url.copy_set_param("skip", "0")
            request = httpx.Request(request.method, url, headers=request.headers)
        return handle_rest(request)  # type: ignore[no-any-return]

    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(api, transport=httpx.MockTransport(handle), sleep=sleeps.append) as http:
        fetched = V2Source(http, logs_page_size=2).fetch_batch(batch_id, Parts(calls=False))
    assert fetched.parsed is not None
    assert len(fetched.parsed.logs or []) == 2  # the first page, served again and again
    assert sum(r.url.path.endswith("/logs") for r in account.requests) == 2


def test_no_call_details_makes_one_calls_request_per_thousand_calls(sleeps: list[float]) -> None:
    """Without details, 1,001 calls cost two calls-list requests and no detail request."""
    account = Emulator(seed=1, batches=0, v2_batches=1, v2_calls_per_batch=1001)
    api = load_api(EMULATOR_URL, account.api_key)
    with BlandHttp(api, transport=account.transport(), sleep=sleeps.append) as http:
        (batch_id,) = v2_ids(account)
        fetched = V2Source(http, call_details=False).fetch_batch(batch_id, Parts())
    assert fetched.parsed is not None
    assert len(fetched.parsed.calls) == 1001
    assert paths(account).count("/v1/calls") == 2
    assert not any(p.startswith("/v1/calls/") for p in paths(account))


def test_calls_list_over_several_pages_is_read_whole_and_deduplicated(
    account: Emulator, shared_http: BlandHttp
) -> None:
    """Pages of 2 calls: 5 calls in 3 pages, each call once."""
    batch_id = v2_ids(account)[0]
    source = V2Source(shared_http, call_details=False, calls_page_size=2)
    fetched = source.fetch_batch(batch_id, Parts())
    assert fetched.parsed is not None
    assert len({call.call_id for call in fetched.parsed.calls}) == 5
    assert paths(account).count("/v1/calls") == 3


def test_calls_list_shorter_than_total_count_fails_the_batch(
    account: Emulator, shared_http: BlandHttp
) -> None:
    """A calls list that gives fewer calls than its total_count must not pass for the whole."""
    batch_id = v2_ids(account)[0]
    account.v2.batches[batch_id].hidden_calls = 1
    with pytest.raises(PayloadError, match="gave 4 calls where its total_count says 5"):
        V2Source(shared_http).fetch_batch(batch_id, Parts())


def test_unknown_v2_batch_is_not_found(shared_http: BlandHttp) -> None:
    """A v2 id the API does not know raises BatchNotFound."""
    with pytest.raises(BatchNotFound):
        V2Source(shared_http).fetch_batch("00000000-0000-4000-8000-000000000000", Parts())


@pytest.mark.parametrize("target", ["*v2list*", "*v2*", "*logs*", "*calls*", "*call*"])
def test_a_server_error_on_each_v2_endpoint_is_retried(
    account: Emulator, shared_http: BlandHttp, sleeps: list[float], target: str
) -> None:
    """Every new endpoint gets the v1 retry policy: a 503 then the answer."""
    account.inject(*parse_fault(f"{target}:server_error"))
    source = V2Source(shared_http)
    listed = [s.batch_id for s in source.iter_batches()]
    assert listed == v2_ids(account)
    assert source.fetch_batch(listed[0], Parts()).parsed is not None
    assert len(sleeps) == 1


@pytest.mark.parametrize("target", ["*v2*", "*logs*", "*calls*", "*call*"])
def test_a_body_that_is_not_json_on_each_v2_endpoint_fails_the_batch(
    account: Emulator, shared_http: BlandHttp, target: str
) -> None:
    """A 200 answer that is not JSON fails the batch naming it, quoting no body bytes."""
    account.inject(*parse_fault(f"{target}:invalid_json"))
    batch_id = v2_ids(account)[0]
    with pytest.raises(PayloadError, match="not valid JSON") as caught:
        V2Source(shared_http).fetch_batch(batch_id, Parts())
    assert batch_id in str(caught.value)
    assert "<html>" not in str(caught.value)


def test_a_call_detail_that_is_not_found_fails_the_batch_not_as_batch_not_found(
    account: Emulator, shared_http: BlandHttp
) -> None:
    """A 404 for one call's detail fails the batch; it is no reason to try the v1 API."""
    account.inject(*parse_fault("*call*:not_found"))
    with pytest.raises(HttpStatusError, match=r"call .* of batch"):
        V2Source(shared_http).fetch_batch(v2_ids(account)[0], Parts())


def test_auto_lists_both_apis_oldest_first_each_id_once(
    account: Emulator, shared_http: BlandHttp
) -> None:
    """auto reads the v2 and the v1 list and yields every batch once, oldest first."""
    listed = list(build_source(shared_http).iter_batches())
    ids = [s.batch_id for s in listed]
    assert sorted(ids) == sorted(v2_ids(account) + account.batch_ids())
    assert [s.created_at for s in listed] == sorted(s.created_at for s in listed)  # type: ignore[type-var]


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_api_choice_lists_only_that_api(
    account: Emulator, shared_http: BlandHttp, api: str
) -> None:
    """--api v1 reads only the v1 list, --api v2 only the v2 list."""
    listed = {s.batch_id for s in build_source(shared_http, api).iter_batches()}  # type: ignore[arg-type]
    assert listed == set(v2_ids(account) if api == "v2" else account.batch_ids())
    other = "/v1/batches" if api == "v2" else "/v2/batches/list"
    assert other not in paths(account)


def test_auto_skips_a_list_that_answers_404_and_uses_the_other(
    account: Emulator, shared_http: BlandHttp, caplog: pytest.LogCaptureFixture
) -> None:
    """A v1 list that answers 404 is noted once (info) and the v2 batches are still listed."""
    account.inject(*parse_fault("*list*:not_found x-1"))
    with caplog.at_level("INFO", logger="batchsync"):
        listed = {s.batch_id for s in build_source(shared_http).iter_batches()}
    assert listed == set(v2_ids(account))
    assert sum("v1 batch list answered HTTP 404" in r.getMessage() for r in caplog.records) == 1


def test_v2_list_404_under_api_v2_is_an_error(account: Emulator, shared_http: BlandHttp) -> None:
    """Asked for v2 only, a v2 list that answers 404 is not skipped."""
    account.inject(*parse_fault("*v2list*:not_found"))
    with pytest.raises(BatchNotFound):
        list(build_source(shared_http, "v2").iter_batches())


def test_named_uuid_that_v2_does_not_know_is_fetched_from_v1(
    account: Emulator, shared_http: BlandHttp
) -> None:
    """A v1 batch with a UUID-shaped id: v2 answers 404, so v1 is tried and serves it."""
    v1_id = account.batch_ids()[0]
    assert is_v2_id(v1_id)
    fetched = build_source(shared_http).fetch_batch(v1_id, Parts())
    assert fetched.parsed is not None
    assert fetched.parsed.batch.api_version == "v1"
    assert paths(account)[-1].startswith("/v1/batches/")


def test_named_id_unknown_to_both_apis_is_not_found(shared_http: BlandHttp) -> None:
    """An id neither API knows raises BatchNotFound after trying both."""
    with pytest.raises(BatchNotFound):
        build_source(shared_http).fetch_batch("nope-gen-batch", Parts())


def test_named_v2_id_under_api_v1_is_not_tried_on_v2(
    account: Emulator, shared_http: BlandHttp
) -> None:
    """--api v1 never asks the v2 API, even for a UUID that v1 does not know."""
    with pytest.raises(BatchNotFound):
        build_source(shared_http, "v1").fetch_batch(v2_ids(account)[0], Parts())
    assert not any(p.startswith("/v2/") for p in paths(account))


def test_same_content_is_reported_unchanged_without_parsing(
    account: Emulator, shared_http: BlandHttp
) -> None:
    """The content hash covers every body of the batch: the same answers give the same hash."""
    batch_id = v2_ids(account)[-1]
    source = V2Source(shared_http)
    first = source.fetch_batch(batch_id, Parts())
    again = source.fetch_batch(batch_id, Parts(), unchanged=lambda sha: sha == first.content_sha256)
    assert again.parsed is None
    call = account.v2.batches[batch_id].calls[-1]  # queued: its detail is in the hash
    call["summary"] = "changed"
    changed = source.fetch_batch(
        batch_id, Parts(), unchanged=lambda sha: sha == first.content_sha256
    )
    assert changed.parsed is not None


def test_auto_source_is_a_batch_source(shared_http: BlandHttp) -> None:
    """Both of AutoSource's sources read through the one client it was built with."""
    source = build_source(shared_http)
    assert isinstance(source, AutoSource)
    assert isinstance(source.v1, V1Source)
    assert source.v1.http is shared_http
    assert source.v2.http is shared_http


def test_example_fixture_files_are_left_unchanged_by_parsing() -> None:
    """Parsing does not modify the raw payloads it is given."""
    parts = example()
    before = copy.deepcopy(parts)
    parse_v2_batch(**parts, batch_id=BATCH_ID)
    assert parts == before


def test_v1_call_detail_for_another_call_fails_the_batch() -> None:
    """--call-details: a detail answering for another call is refused, naming the call."""
    from batchsync.bland.v2 import with_detail

    call = parse().calls[0]
    detail = fixture("call-detail.json") | {"call_id": "someone-else", "c_id": "someone-else"}
    with pytest.raises(PayloadError, match="another call") as caught:
        with_detail(call, detail, batch_id=BATCH_ID, details_synced_at=SYNCED)
    assert caught.value.field == f"call {call.call_id}"


def test_v1_call_detail_fills_only_the_detail_columns() -> None:
    """--call-details keeps the batch's own values and adds price, summary and the rest."""
    from batchsync.bland.v2 import with_detail

    call = parse(details=None).calls[0]._replace(answered_by="voicemail")
    enriched = with_detail(
        call, fixture("call-detail.json"), batch_id=BATCH_ID, details_synced_at=SYNCED
    )
    assert enriched.answered_by == "voicemail"  # the batch's value, not the detail's
    assert enriched.price == 0.068
    assert enriched.pathway_tags == [{"name": "Greeting", "color": "#3b82f6"}]
    assert enriched.details_synced_at == SYNCED


def test_a_full_page_holding_every_call_of_total_count_ends_the_calls_list(
    account: Emulator, shared_http: BlandHttp
) -> None:
    """Pages of 5 for 5 calls with total_count 5: one calls request, not a second empty one."""
    batch_id = v2_ids(account)[0]
    source = V2Source(shared_http, call_details=False, calls_page_size=5)
    fetched = source.fetch_batch(batch_id, Parts())
    assert fetched.parsed is not None
    assert len(fetched.parsed.calls) == 5
    assert paths(account).count("/v1/calls") == 1


def test_without_total_count_a_full_page_asks_for_the_next(
    account: Emulator, shared_http: BlandHttp
) -> None:
    """Batch 1 sends no total_count: a full page of 5 is followed by an empty one."""
    batch_id = v2_ids(account)[1]
    source = V2Source(shared_http, call_details=False, calls_page_size=5)
    source.fetch_batch(batch_id, Parts())
    assert paths(account).count("/v1/calls") == 2


def test_v1_call_detail_puts_its_fields_without_a_column_in_extra() -> None:
    """--call-details: the detail's is_canary, record, pathway_version, transferred_at go
    into the v1 call's extra beside the call's own keys, which win where both have one."""
    from batchsync.bland.v2 import with_detail

    call = parse(details=None).calls[0]._replace(extra={"voice": "maya", "record": False})
    enriched = with_detail(
        call, fixture("call-detail.json"), batch_id=BATCH_ID, details_synced_at=SYNCED
    )
    assert enriched.extra is not None
    assert enriched.extra["voice"] == "maya"
    assert enriched.extra["record"] is False  # the batch's own value
    assert {"is_canary", "pathway_version", "transferred_at"} <= enriched.extra.keys()
    assert "concatenated_transcript" not in enriched.extra


def test_v1_call_written_without_its_detail_keeps_the_details_extra_fields() -> None:
    """A v1 call written without --call-details keeps its stored detail's fields without
    a column (in extra), with the call's own extra keys over them."""
    from batchsync.bland.v2 import carry_stored_details, v1_carried_columns, with_detail
    from batchsync.records import StoredCalls

    call = parse(details=None).calls[0]._replace(extra={"voice": "maya"})
    stored = with_detail(
        call, fixture("call-detail.json"), batch_id=BATCH_ID, details_synced_at=SYNCED
    )._replace(extra={"voice": "maya", "is_canary": False})
    fresh = call._replace(extra={"voice": "josh"})
    (written,) = carry_stored_details(
        [fresh], [fresh], v1_carried_columns([fresh]), StoredCalls({call.call_id: stored}, {})
    )
    assert written.extra == {"voice": "josh", "is_canary": False}
    assert written.price == stored.price
    assert written.details_synced_at == SYNCED
