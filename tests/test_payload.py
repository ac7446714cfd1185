"""The payload parser: API quirks, absent parts, rejections naming the field, duplicates."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from batchsync.errors import PayloadError
from batchsync.payload import (
    AnalysisRecord,
    BatchSummary,
    CallDataRepeated,
    ErrorRecord,
    ParsedBatch,
    QueueStatusCountRecord,
    TranscriptLineRecord,
    parse_batch,
    parse_batch_body,
    parse_batch_list,
    parse_batch_stream,
)

BATCH = "b1"


def minimal_payload() -> dict[str, Any]:
    """A small valid batch detail body, fresh on every call so tests can modify it."""
    return {
        "status": "completed",
        "batch_params": {
            "id": BATCH,
            "created_at": "2023-12-07T20:43:44.544773+00:00",
            "label": "Follow-up",
            "base_prompt": "You are calling {{name}}.",
            "endpoint_code": "api",
            "campaign_id": None,
            "call_params": {"voice_id": 0, "max_duration": 10},
        },
        "analysis": {
            "total_calls": 1,
            "completed_calls": 1,
            "in_progress_calls": 0,
            "queue_statuses": {"complete": 1},
            "call_lengths": {"average": 0.2, "average_nonzero": 0.2, "summary": {"0-5": 1}},
            "call_ids": ["c1"],
            "error_messages": [],
            "endpoints": {"api.bland.ai": 1},
        },
        "call_data": [
            {
                "call_id": "c1",
                "created_at": "2023-12-16T00:17:22.383682+00:00",
                "to": "1112223333",
                "from": "+17473423273",
                "completed": True,
                "call_length": 0.2,
                "answered_by": "voicemail",
                "status": "completed",
                "queue_status": "complete",
                "error_message": None,
                "corrected_duration": "12",
                "end_at": "2023-12-16T00:17:38.000Z",
                "endpoint_url": "api.bland.ai",
                "max_duration": 30,
                "request_data": {"phone_number": "1112223333"},
                "transcripts": [
                    {
                        "id": 1,
                        "created_at": "2023-12-16T00:17:30.46833+00:00",
                        "text": "Hi, this is a message for Alex.",
                        "user": "assistant",
                        "c_id": "c1",
                    }
                ],
            }
        ],
    }


def call(**fields: Any) -> dict[str, Any]:
    """A call object with an id, plus the given fields."""
    return {"call_id": "c1", **fields}


def with_calls(*calls: Any) -> dict[str, Any]:
    """The minimal payload with its call_data replaced."""
    raw = minimal_payload()
    raw["call_data"] = list(calls)
    return raw


def parse(raw: Any, **kwargs: Any) -> ParsedBatch:
    return parse_batch(raw, batch_id=BATCH, **kwargs)


def only_call(raw: dict[str, Any]) -> Any:
    parsed = parse(raw)
    assert parsed.calls is not None
    assert len(parsed.calls) == 1
    return parsed.calls[0]


def rejection(raw: Any, field: str, **kwargs: Any) -> PayloadError:
    """Parse a body that must be rejected; check the message names the batch and the field."""
    with pytest.raises(PayloadError) as info:
        parse(raw, **kwargs)
    error = info.value
    assert error.batch_id == BATCH
    assert error.field == field
    assert str(error).startswith(f"batch {BATCH}, field {field}: ")
    return error


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- the whole batch, as the documented example shapes it -------------------------------------


def test_minimal_payload_parses_into_every_record_kind() -> None:
    """A complete, well-formed body yields the batch, analysis, counts, errors, calls and lines."""
    parsed = parse(minimal_payload())

    assert parsed.batch.batch_id == BATCH
    assert parsed.batch.status == "completed"
    assert parsed.batch.label == "Follow-up"
    assert parsed.batch.base_prompt == "You are calling {{name}}."
    assert parsed.batch.endpoint_code == "api"
    assert parsed.batch.campaign_id is None
    assert parsed.batch.created_at == utc(2023, 12, 7, 20, 43, 44, 544773)
    assert parsed.batch.call_params == {"voice_id": 0, "max_duration": 10}
    assert parsed.batch.extra is None
    assert parsed.analysis == AnalysisRecord(
        total_calls=1,
        completed_calls=1,
        in_progress_calls=0,
        call_length_average=0.2,
        call_length_average_nonzero=0.2,
        call_length_summary={"0-5": 1},
        endpoints={"api.bland.ai": 1},
    )
    assert parsed.queue_status_counts == [QueueStatusCountRecord(BATCH, "complete", 1)]
    assert parsed.errors == []
    assert parsed.calls is not None
    [record] = parsed.calls
    assert record.call_id == "c1"
    assert record.batch_id == BATCH
    assert record.to_number == "1112223333"
    assert record.from_number == "+17473423273"
    assert record.completed is True
    assert record.call_length == 0.2
    assert record.answered_by == "voicemail"
    assert record.status == "completed"
    assert record.queue_status == "complete"
    assert record.error_message is None
    assert record.corrected_duration == 12
    assert record.end_at == utc(2023, 12, 16, 0, 17, 38)
    assert record.endpoint_url == "api.bland.ai"
    assert record.max_duration == 30.0
    assert record.request_data == {"phone_number": "1112223333"}
    assert record.extra is None
    assert parsed.transcripts == [
        TranscriptLineRecord(
            call_id="c1",
            line_id=1,
            batch_id=BATCH,
            created_at=utc(2023, 12, 16, 0, 17, 30, 468330),
            speaker="assistant",
            text="Hi, this is a message for Alex.",
        )
    ]


# -- call ids: call_id and the pre-2024 c_id --------------------------------------------------


def test_call_with_only_c_id_takes_its_id_from_c_id() -> None:
    """A call keyed by the pre-2024 ``c_id`` gets that value as its call_id."""
    assert only_call(with_calls({"c_id": "old-1"})).call_id == "old-1"


def test_call_with_empty_call_id_falls_back_to_c_id() -> None:
    """An empty ``call_id`` counts as absent, so ``c_id`` supplies the id."""
    assert only_call(with_calls({"call_id": "", "c_id": "old-1"})).call_id == "old-1"


def test_call_with_both_ids_prefers_call_id() -> None:
    """When both keys are present, the current ``call_id`` wins over ``c_id``."""
    assert only_call(with_calls({"call_id": "new-1", "c_id": "old-1"})).call_id == "new-1"


def test_transcript_lines_belong_to_their_parent_call_whatever_their_c_id() -> None:
    """A line's own ``c_id`` is ignored: lines are filed under the call that holds them."""
    raw = with_calls(
        {"c_id": "old-1", "transcripts": [{"id": 1, "text": "hi", "c_id": "something-else"}]}
    )
    transcripts = parse(raw).transcripts
    assert transcripts is not None
    assert [(line.call_id, line.line_id) for line in transcripts] == [("old-1", 1)]


# -- answered_by ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("human", "human", id="string"),
        pytest.param(["voicemail"], "voicemail", id="one-element-list"),
        pytest.param([], None, id="empty-list"),
        pytest.param(None, None, id="null"),
        pytest.param([None], None, id="list-of-null"),
    ],
)
def test_answered_by_accepts_string_or_single_element_list(value: Any, expected: Any) -> None:
    """``answered_by`` as a string, a one-element list, an empty list or null gives one value."""
    assert only_call(with_calls(call(answered_by=value))).answered_by == expected


def test_answered_by_missing_is_none() -> None:
    """A call without ``answered_by`` (the batch had it disabled) records None."""
    assert only_call(with_calls(call())).answered_by is None


def test_answered_by_with_two_values_is_rejected_naming_the_field() -> None:
    """A two-element ``answered_by`` list is ambiguous and rejected."""
    error = rejection(
        with_calls(call(answered_by=["human", "voicemail"])), "call_data[0].answered_by"
    )
    assert "at most one value" in error.reason


# -- counts and numbers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(20, id="int"),
        pytest.param("20", id="numeric-string"),
        pytest.param("20.0", id="decimal-string"),
        pytest.param(20.0, id="whole-float"),
    ],
)
def test_counts_in_any_whole_number_form_become_ints(value: Any) -> None:
    """Analysis counts, queue status counts and corrected_duration accept 20, "20", "20.0", 20.0."""
    raw = minimal_payload()
    analysis = raw["analysis"]
    analysis["total_calls"] = value
    analysis["completed_calls"] = value
    analysis["in_progress_calls"] = value
    analysis["queue_statuses"] = {"queued": value}
    raw["call_data"][0]["corrected_duration"] = value

    parsed = parse(raw)

    assert parsed.analysis is not None
    counts = (
        parsed.analysis.total_calls,
        parsed.analysis.completed_calls,
        parsed.analysis.in_progress_calls,
    )
    assert counts == (20, 20, 20)
    assert all(type(count) is int for count in counts)
    assert parsed.queue_status_counts == [QueueStatusCountRecord(BATCH, "queued", 20)]
    assert parsed.calls is not None
    assert parsed.calls[0].corrected_duration == 20
    assert type(parsed.calls[0].corrected_duration) is int


def test_corrected_duration_string_of_seconds_becomes_int() -> None:
    """``corrected_duration`` arrives as a string of seconds ("12") and is stored as 12."""
    record = only_call(with_calls(call(corrected_duration="12")))
    assert record.corrected_duration == 12


@pytest.mark.parametrize("value", ["20.5", 20.5, "twenty", True, [20]])
def test_count_that_is_not_a_whole_number_is_rejected_naming_the_field(value: Any) -> None:
    """A fractional, wordy, boolean or list count is rejected at its own field."""
    raw = minimal_payload()
    raw["analysis"]["total_calls"] = value
    rejection(raw, "analysis.total_calls")


def test_count_beyond_any_column_range_is_rejected_naming_the_field() -> None:
    """A count too large for a database integer is rejected rather than passed on."""
    raw = minimal_payload()
    raw["analysis"]["queue_statuses"] = {"queued": 2**63}
    rejection(raw, "analysis.queue_statuses.queued")


def test_endpoint_counts_given_as_strings_become_ints() -> None:
    """Endpoint counts sent as strings ({"API": "3"}) are stored as numbers; others are kept."""
    raw = minimal_payload()
    raw["analysis"]["endpoints"] = {"API": "3", "web": 2, "odd": "n/a"}
    analysis = parse(raw).analysis
    assert analysis is not None
    assert analysis.endpoints == {"API": 3, "web": 2, "odd": "n/a"}


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0.0), (0.2, 0.2), ("1.5", 1.5), ("", None), (None, None)]
)
def test_call_length_accepts_numbers_and_numeric_strings(value: Any, expected: Any) -> None:
    """``call_length`` is a float from a number or a numeric string; empty means unknown."""
    assert only_call(with_calls(call(call_length=value))).call_length == expected


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_call_length_string_that_is_not_finite_is_rejected(value: str) -> None:
    """Strings that float() accepts but that are no length ("nan", "inf") are rejected."""
    rejection(with_calls(call(call_length=value)), "call_data[0].call_length")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), ("true", True), ("False", False), (1, True), (0, False)],
)
def test_completed_accepts_booleans_and_their_spellings(value: Any, expected: bool) -> None:
    """``completed`` accepts JSON booleans, "true"/"false" and 1/0."""
    assert only_call(with_calls(call(completed=value))).completed is expected


# -- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "2023-12-16T00:17:22.383682+00:00", utc(2023, 12, 16, 0, 17, 22, 383682), id="micro"
        ),
        pytest.param(
            "2023-12-16T00:18:02.96630+00:00", utc(2023, 12, 16, 0, 18, 2, 966300), id="five-digit"
        ),
        pytest.param(
            "2023-12-16T00:18:02.9663+00:00", utc(2023, 12, 16, 0, 18, 2, 966300), id="four-digit"
        ),
        pytest.param("2023-12-16T00:17:38.000Z", utc(2023, 12, 16, 0, 17, 38), id="zulu"),
        pytest.param(
            "2023-12-15T19:17:22.383682-05:00",
            utc(2023, 12, 16, 0, 17, 22, 383682),
            id="minus-five",
        ),
        pytest.param("2023-12-16T00:17:22", utc(2023, 12, 16, 0, 17, 22), id="naive"),
        pytest.param(1702685842, utc(2023, 12, 16, 0, 17, 22), id="epoch-seconds"),
        pytest.param(1702685842.5, utc(2023, 12, 16, 0, 17, 22, 500000), id="epoch-float"),
        pytest.param(1702685842383, utc(2023, 12, 16, 0, 17, 22, 383000), id="epoch-millis"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="null"),
    ],
)
def test_timestamp_formats_are_normalised_to_utc(value: Any, expected: datetime | None) -> None:
    """Every timestamp shape the API sends comes out as the same instant, aware and in UTC."""
    record = only_call(with_calls(call(created_at=value)))
    assert record.created_at == expected
    if expected is not None:
        assert record.created_at.tzinfo is UTC


def test_timestamp_with_offset_is_converted_not_relabelled() -> None:
    """A ``-05:00`` time becomes the UTC instant five hours later, not the same wall clock."""
    record = only_call(with_calls(call(end_at="2023-12-16T01:00:00-05:00")))
    assert record.end_at == utc(2023, 12, 16, 6, 0)
    assert record.end_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("where", "field"),
    [
        pytest.param(("call", "created_at"), "call_data[0].created_at", id="call-created_at"),
        pytest.param(("call", "end_at"), "call_data[0].end_at", id="call-end_at"),
        pytest.param(("params", "created_at"), "batch_params.created_at", id="batch-created_at"),
        pytest.param(("line", "created_at"), "call_data[0].transcripts[0].created_at", id="line"),
    ],
)
@pytest.mark.parametrize("value", ["yesterday", "2023-13-45T00:00:00", {"at": 1}, True])
def test_garbage_timestamp_is_rejected_naming_the_field(
    where: tuple[str, str], field: str, value: Any
) -> None:
    """A timestamp that is no date at all is rejected at the field that holds it."""
    raw = minimal_payload()
    holder = {
        "call": raw["call_data"][0],
        "params": raw["batch_params"],
        "line": raw["call_data"][0]["transcripts"][0],
    }[where[0]]
    holder[where[1]] = value
    rejection(raw, field)


def test_epoch_timestamp_out_of_range_is_rejected_naming_the_field() -> None:
    """An epoch number no datetime can hold is rejected, not raised as OverflowError."""
    rejection(with_calls(call(created_at=1e30)), "call_data[0].created_at")


def test_epoch_integer_beyond_float_range_is_rejected_naming_the_field() -> None:
    """An epoch integer too large for a float is a PayloadError like any out-of-range epoch."""
    rejection(with_calls(call(created_at=10**400)), "call_data[0].created_at")


# -- error_messages ---------------------------------------------------------------------------


def test_error_messages_as_objects_and_strings_are_numbered_from_zero() -> None:
    """Objects (call_id or c_id, error_message or message) and bare strings all become rows."""
    raw = minimal_payload()
    raw["analysis"]["error_messages"] = [
        {"call_id": "c1", "error_message": "Cannot transfer"},
        {"c_id": "c2", "message": "Busy"},
        "Rate limited",
        {"error_message": "No call id"},
    ]
    assert parse(raw).errors == [
        ErrorRecord(BATCH, 0, "c1", "Cannot transfer"),
        ErrorRecord(BATCH, 1, "c2", "Busy"),
        ErrorRecord(BATCH, 2, None, "Rate limited"),
        ErrorRecord(BATCH, 3, None, "No call id"),
    ]


def test_error_messages_not_a_list_is_rejected_naming_the_field() -> None:
    """``error_messages`` given as an object is rejected at analysis.error_messages."""
    raw = minimal_payload()
    raw["analysis"]["error_messages"] = {"c1": "Cannot transfer"}
    rejection(raw, "analysis.error_messages")


def test_error_message_item_that_is_a_number_is_rejected_naming_its_position() -> None:
    """An error entry that is neither an object nor a string is rejected at its index."""
    raw = minimal_payload()
    raw["analysis"]["error_messages"] = ["fine", 42]
    rejection(raw, "analysis.error_messages[1]")


def test_error_message_call_id_given_an_object_names_the_call_id_field() -> None:
    """An error entry whose call_id is an object is rejected at that call_id."""
    raw = minimal_payload()
    raw["analysis"]["error_messages"] = [{"call_id": {"id": "c1"}, "error_message": "x"}]
    rejection(raw, "analysis.error_messages[0].call_id")


# -- status and queue_status ------------------------------------------------------------------


def test_missing_top_level_status_is_none() -> None:
    """Responses from before the ``status`` field existed parse with status None."""
    raw = minimal_payload()
    del raw["status"]
    assert parse(raw).batch.status is None


def test_call_queue_status_completed_is_folded_into_complete() -> None:
    """The ``completed`` spelling of queue_status is stored as the documented ``complete``."""
    assert only_call(with_calls(call(queue_status="completed"))).queue_status == "complete"


def test_queue_status_counts_fold_completed_into_complete_and_sum() -> None:
    """Counts under ``completed`` and ``complete`` are added together under ``complete``."""
    raw = minimal_payload()
    raw["analysis"]["queue_statuses"] = {"complete": 5, "completed": "2", "queued": 1}
    counts = parse(raw).queue_status_counts
    assert counts is not None
    assert sorted(counts) == [
        QueueStatusCountRecord(BATCH, "complete", 7),
        QueueStatusCountRecord(BATCH, "queued", 1),
    ]


def test_queue_status_count_of_null_is_skipped() -> None:
    """A status whose count is null contributes no row."""
    raw = minimal_payload()
    raw["analysis"]["queue_statuses"] = {"complete": 3, "queued": None}
    assert parse(raw).queue_status_counts == [QueueStatusCountRecord(BATCH, "complete", 3)]


# -- unknown fields are kept ------------------------------------------------------------------


def test_unknown_call_fields_are_kept_in_call_extra() -> None:
    """Fields a call carries beyond the modelled ones land in CallRecord.extra."""
    record = only_call(with_calls(call(summary="left a message", price=0.09)))
    assert record.extra == {"summary": "left a message", "price": 0.09}


def test_unknown_batch_params_are_kept_in_batch_extra() -> None:
    """Unmodelled batch_params keys are kept under extra["batch_params"]."""
    raw = minimal_payload()
    raw["batch_params"]["voice"] = "maya"
    assert parse(raw).batch.extra == {"batch_params": {"voice": "maya"}}


def test_unknown_top_level_keys_are_kept_under_extra_response() -> None:
    """Unmodelled top-level keys are kept under extra["response"]."""
    raw = minimal_payload()
    raw["errors"] = None
    raw["page"] = 2
    assert parse(raw).batch.extra == {"response": {"errors": None, "page": 2}}


def test_unknown_analysis_keys_are_kept_under_extra_analysis() -> None:
    """Unmodelled analysis keys are kept under extra["analysis"], beside other extras."""
    raw = minimal_payload()
    raw["batch_params"]["voice"] = "maya"
    raw["analysis"]["sentiment"] = {"positive": 3}
    assert parse(raw).batch.extra == {
        "batch_params": {"voice": "maya"},
        "analysis": {"sentiment": {"positive": 3}},
    }


def test_unknown_keys_from_different_places_never_collide() -> None:
    """A batch_params key named like a group ("response", "analysis") loses nothing."""
    raw = minimal_payload()
    raw["batch_params"]["response"] = "kept"
    raw["batch_params"]["analysis"] = "kept too"
    raw["page"] = 2
    raw["analysis"]["sentiment"] = 1
    assert parse(raw).batch.extra == {
        "batch_params": {"response": "kept", "analysis": "kept too"},
        "response": {"page": 2},
        "analysis": {"sentiment": 1},
    }


def test_extra_is_none_when_nothing_is_unknown() -> None:
    """With only modelled fields, both the batch and the call have extra None (not {})."""
    parsed = parse(minimal_payload())
    assert parsed.batch.extra is None
    assert parsed.calls is not None
    assert parsed.calls[0].extra is None


# -- parts absent from the response -----------------------------------------------------------


def test_missing_analysis_leaves_analysis_counts_and_errors_none() -> None:
    """Without ``analysis`` the stored analysis, counts and errors are left alone (None)."""
    raw = minimal_payload()
    del raw["analysis"]
    parsed = parse(raw)
    assert parsed.analysis is None
    assert parsed.queue_status_counts is None
    assert parsed.errors is None
    assert parsed.calls is not None


def test_null_analysis_counts_as_missing() -> None:
    """``"analysis": null`` means the same as no analysis key."""
    raw = minimal_payload()
    raw["analysis"] = None
    parsed = parse(raw)
    assert (parsed.analysis, parsed.queue_status_counts, parsed.errors) == (None, None, None)


def test_missing_call_data_leaves_calls_and_transcripts_none() -> None:
    """Without ``call_data`` (include_calls=false) calls and transcripts are None."""
    raw = minimal_payload()
    del raw["call_data"]
    parsed = parse(raw)
    assert parsed.calls is None
    assert parsed.transcripts is None
    assert parsed.analysis is not None


def test_empty_call_data_gives_empty_lists() -> None:
    """An empty ``call_data`` list is a batch with no calls: empty lists, not None."""
    parsed = parse(with_calls())
    assert parsed.calls == []
    assert parsed.transcripts == []


def test_transcripts_not_requested_are_none_even_when_present() -> None:
    """With transcripts_requested=False the transcripts part is None whatever the calls hold."""
    parsed = parse(minimal_payload(), transcripts_requested=False)
    assert parsed.transcripts is None
    assert parsed.calls is not None
    assert parsed.calls[0].extra is None


def test_transcripts_not_requested_ignores_malformed_transcripts() -> None:
    """Transcripts nobody asked for are not inspected, so a malformed one cannot fail the batch."""
    parsed = parse(with_calls(call(transcripts="garbage")), transcripts_requested=False)
    assert parsed.transcripts is None


def test_requested_transcripts_missing_from_a_call_give_no_lines_for_it() -> None:
    """When requested, a call without ``transcripts`` adds no lines; the part is still a list."""
    raw = with_calls(
        {"call_id": "c1"},
        {"call_id": "c2", "transcripts": [{"id": 7, "text": "hello"}]},
        {"call_id": "c3", "transcripts": None},
    )
    transcripts = parse(raw).transcripts
    assert transcripts is not None
    assert [(line.call_id, line.line_id) for line in transcripts] == [("c2", 7)]


def test_requested_transcripts_with_no_call_having_any_give_empty_list() -> None:
    """When requested and no call has lines, transcripts is [] (clear stored lines), not None."""
    assert parse(with_calls(call())).transcripts == []


# -- rejections: whole body and batch_params --------------------------------------------------


@pytest.mark.parametrize(("body", "kind"), [([], "a list"), ("ok", "a string"), (None, "null")])
def test_body_that_is_not_an_object_is_rejected(body: Any, kind: str) -> None:
    """A body that is a list, a string or null is rejected at (body), saying what it was."""
    error = rejection(body, "(body)")
    assert str(error) == f"batch {BATCH}, field (body): expected a JSON object, got {kind}"


@pytest.mark.parametrize(
    "params",
    [
        pytest.param(None, id="missing"),
        pytest.param("b1", id="string"),
        pytest.param([], id="list"),
    ],
)
def test_batch_params_missing_or_not_an_object_is_rejected(params: Any) -> None:
    """``batch_params`` absent, a string or a list is rejected at batch_params."""
    raw = minimal_payload()
    if params is None:
        del raw["batch_params"]
    else:
        raw["batch_params"] = params
    rejection(raw, "batch_params")


@pytest.mark.parametrize("key", ["id", "batch_id"])
def test_batch_params_of_another_batch_is_rejected(key: str) -> None:
    """A response whose batch_params id is another batch's is refused, without quoting it."""
    raw = minimal_payload()
    del raw["batch_params"]["id"]
    raw["batch_params"][key] = "b2"
    error = rejection(raw, "batch_params.id")
    assert "another batch" in error.reason
    assert "b2" not in str(error)


def test_batch_params_without_id_takes_the_requested_id() -> None:
    """With no id in batch_params the batch is recorded under the id that was requested."""
    raw = minimal_payload()
    del raw["batch_params"]["id"]
    assert parse(raw).batch.batch_id == BATCH


def test_analysis_not_an_object_is_rejected() -> None:
    """``analysis`` given as a list is rejected at analysis."""
    raw = minimal_payload()
    raw["analysis"] = [1, 2]
    rejection(raw, "analysis")


def test_queue_statuses_as_a_list_is_rejected() -> None:
    """``queue_statuses`` given as a list is rejected at analysis.queue_statuses."""
    raw = minimal_payload()
    raw["analysis"]["queue_statuses"] = [{"complete": 1}]
    rejection(raw, "analysis.queue_statuses")


def test_call_lengths_not_an_object_is_rejected() -> None:
    """``call_lengths`` given as a list is rejected at analysis.call_lengths."""
    raw = minimal_payload()
    raw["analysis"]["call_lengths"] = [1, 2]
    rejection(raw, "analysis.call_lengths")


# -- rejections: calls and transcripts --------------------------------------------------------


@pytest.mark.parametrize("value", [{"c1": {}}, "c1", 3])
def test_call_data_not_a_list_is_rejected(value: Any) -> None:
    """``call_data`` that is an object, a string or a number is rejected at call_data."""
    raw = minimal_payload()
    raw["call_data"] = value
    rejection(raw, "call_data")


@pytest.mark.parametrize("item", ["c1", None, ["c1"], 5])
def test_call_that_is_not_an_object_is_rejected_naming_its_index(item: Any) -> None:
    """A call entry that is not an object is rejected at call_data[i]."""
    rejection(with_calls(call(), item), "call_data[1]")


@pytest.mark.parametrize(
    "item",
    [
        pytest.param({"to": "+1"}, id="both-missing"),
        pytest.param({"call_id": "", "c_id": ""}, id="both-empty"),
        pytest.param({"call_id": None, "c_id": None}, id="both-null"),
        pytest.param({"call_id": "", "to": "+1"}, id="empty-call_id-no-c_id"),
    ],
)
def test_call_without_any_id_is_rejected_naming_call_id(item: dict[str, Any]) -> None:
    """A call with neither a call_id nor a c_id is rejected at call_data[i].call_id."""
    error = rejection(with_calls(call(), item), "call_data[1].call_id")
    assert "c_id" in error.reason


def test_call_id_given_an_object_is_rejected_naming_call_id() -> None:
    """A call id that is an object cannot be an id and is rejected at call_id."""
    rejection(with_calls({"call_id": {"id": "c1"}}), "call_data[0].call_id")


def test_call_length_not_a_number_is_rejected_with_the_documented_message() -> None:
    """``call_length`` "abc" gives the message naming the batch, the path and the value."""
    raw = with_calls(call(), {"call_id": "c2"}, {"call_id": "c3"}, call(call_id="c4"))
    raw["call_data"][3]["call_length"] = "abc"
    error = rejection(raw, "call_data[3].call_length")
    assert str(error) == (
        "batch b1, field call_data[3].call_length: expected a number, got text that is not one"
    )


def test_completed_not_a_boolean_is_rejected() -> None:
    """``completed`` "maybe" is rejected at call_data[i].completed, without quoting it."""
    error = rejection(with_calls(call(completed="maybe")), "call_data[0].completed")
    assert "expected a boolean" in error.reason
    assert "maybe" not in str(error)


@pytest.mark.parametrize("value", [{"id": 1}, "hello", 3])
def test_transcripts_not_a_list_is_rejected(value: Any) -> None:
    """``transcripts`` that is not a list is rejected at call_data[i].transcripts."""
    rejection(with_calls(call(transcripts=value)), "call_data[0].transcripts")


@pytest.mark.parametrize(
    "line",
    [
        pytest.param({"text": "hi"}, id="missing"),
        pytest.param({"id": None, "text": "hi"}, id="null"),
        pytest.param({"id": "", "text": "hi"}, id="empty"),
    ],
)
def test_transcript_line_without_id_is_rejected(line: dict[str, Any]) -> None:
    """A transcript line with no id is rejected at call_data[i].transcripts[j].id."""
    raw = with_calls(call(transcripts=[{"id": 1, "text": "ok"}, line]))
    rejection(raw, "call_data[0].transcripts[1].id")


def test_transcript_line_not_an_object_is_rejected() -> None:
    """A transcript line that is a bare string is rejected at its index."""
    rejection(with_calls(call(transcripts=["hi"])), "call_data[0].transcripts[0]")


@pytest.mark.parametrize(
    "key", ["to", "from", "status", "error_message", "endpoint_url", "answered_by"]
)
def test_call_text_field_given_an_object_is_rejected_naming_it(key: str) -> None:
    """A call's text field holding an object is rejected at exactly that field."""
    rejection(with_calls(call(**{key: {"value": "x"}})), f"call_data[0].{key}")


def test_call_queue_status_given_an_object_is_rejected_naming_it() -> None:
    """A call's queue_status holding an object is rejected at call_data[i].queue_status."""
    rejection(with_calls(call(queue_status={"value": "x"})), "call_data[0].queue_status")


@pytest.mark.parametrize("key", ["label", "base_prompt", "endpoint_code", "campaign_id"])
def test_batch_text_field_given_an_object_is_rejected_naming_it(key: str) -> None:
    """A batch_params text field holding an object is rejected at exactly that field."""
    raw = minimal_payload()
    raw["batch_params"][key] = {"value": "x"}
    rejection(raw, f"batch_params.{key}")


@pytest.mark.parametrize("key", ["user", "text"])
def test_transcript_text_field_given_a_list_is_rejected_naming_it(key: str) -> None:
    """A transcript line's text field holding a list is rejected at exactly that field."""
    raw = with_calls(call(transcripts=[{"id": 1, key: ["x"]}]))
    rejection(raw, f"call_data[0].transcripts[0].{key}")


def test_top_level_status_given_an_object_is_rejected() -> None:
    """The batch ``status`` holding an object is rejected at status."""
    raw = minimal_payload()
    raw["status"] = {"state": "completed"}
    rejection(raw, "status")


def test_scalar_text_fields_are_stored_as_strings() -> None:
    """Numbers and booleans in text fields are kept as their JSON spelling."""
    record = only_call(with_calls(call(to=15551234567, status=True, call_id=42)))
    assert (record.to_number, record.status, record.call_id) == ("15551234567", "true", "42")


# -- duplicates -------------------------------------------------------------------------------


def test_repeated_call_id_gives_one_record_and_the_later_copy_wins() -> None:
    """The same call sent twice yields one CallRecord holding the later copy's values."""
    raw = with_calls(
        call(to="+1", status="queued"), {"call_id": "c2"}, call(to="+2", status="completed")
    )
    calls = parse(raw).calls
    assert calls is not None
    assert [record.call_id for record in calls].count("c1") == 1
    assert len(calls) == 2
    [record] = [record for record in calls if record.call_id == "c1"]
    assert (record.to_number, record.status) == ("+2", "completed")


def test_call_id_and_c_id_with_the_same_value_are_one_call() -> None:
    """A call sent once under ``c_id`` and once under ``call_id`` is one call."""
    calls = parse(with_calls({"c_id": "c1", "to": "+1"}, {"call_id": "c1", "to": "+2"})).calls
    assert calls is not None
    assert [(record.call_id, record.to_number) for record in calls] == [("c1", "+2")]


def test_repeated_transcript_line_gives_one_line() -> None:
    """A transcript line repeated within a call is kept once, with the later text."""
    raw = with_calls(
        call(
            transcripts=[
                {"id": 1, "text": "first"},
                {"id": 2, "text": "second"},
                {"id": "1", "text": "first, again"},
            ]
        )
    )
    transcripts = parse(raw).transcripts
    assert transcripts is not None
    assert sorted((line.line_id, line.text) for line in transcripts) == [
        (1, "first, again"),
        (2, "second"),
    ]


def test_same_line_id_in_different_calls_gives_two_lines() -> None:
    """Line ids are unique per call: the same id under two calls is two lines."""
    raw = with_calls(
        {"call_id": "c1", "transcripts": [{"id": 1, "text": "a"}]},
        {"call_id": "c2", "transcripts": [{"id": 1, "text": "b"}]},
    )
    transcripts = parse(raw).transcripts
    assert transcripts is not None
    assert sorted((line.call_id, line.text) for line in transcripts) == [("c1", "a"), ("c2", "b")]


# -- parse_batch_list -------------------------------------------------------------------------


def test_batch_list_accepts_batch_id_or_id() -> None:
    """List entries keyed by ``batch_id`` or by ``id`` both give summaries."""
    raw = {
        "status": "success",
        "batches": [
            {
                "batch_id": "b1",
                "created_at": "2023-11-16T22:14:24.9663+00:00",
                "campaign_id": "camp",
                "label": "Renewals",
            },
            {"id": "b2"},
        ],
    }
    assert parse_batch_list(raw) == [
        BatchSummary("b1", utc(2023, 11, 16, 22, 14, 24, 966300), "camp", "Renewals"),
        BatchSummary("b2", None, None, None),
    ]


def test_batch_list_empty_page_gives_no_summaries() -> None:
    """An empty ``batches`` list (the end of paging) parses to []."""
    assert parse_batch_list({"status": "success", "batches": []}) == []


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"label": "x"}, id="missing"),
        pytest.param({"batch_id": ""}, id="empty"),
        pytest.param({"batch_id": None}, id="null"),
    ],
)
def test_batch_list_entry_without_id_is_rejected_naming_batch_id(entry: dict[str, Any]) -> None:
    """A list entry with no usable id is rejected at batches[i].batch_id."""
    with pytest.raises(PayloadError) as info:
        parse_batch_list({"batches": [{"batch_id": "b1"}, entry]})
    assert info.value.field == "batches[1].batch_id"
    assert str(info.value).startswith("field batches[1].batch_id: ")


@pytest.mark.parametrize("batches", [{"b1": {}}, "b1", None])
def test_batch_list_batches_not_a_list_is_rejected(batches: Any) -> None:
    """``batches`` that is an object, a string or null is rejected at batches."""
    with pytest.raises(PayloadError) as info:
        parse_batch_list({"status": "success", "batches": batches})
    assert info.value.field == "batches"


def test_batch_list_body_not_an_object_is_rejected() -> None:
    """A list page whose body is a list is rejected at (body)."""
    with pytest.raises(PayloadError) as info:
        parse_batch_list([{"batch_id": "b1"}])
    assert info.value.field == "(body)"


def test_batch_list_entry_not_an_object_is_rejected() -> None:
    """A list entry that is a bare string is rejected at batches[i]."""
    with pytest.raises(PayloadError) as info:
        parse_batch_list({"batches": ["b1"]})
    assert info.value.field == "batches[0]"


@pytest.mark.parametrize(
    ("key", "value"), [("created_at", "yesterday"), ("label", {"x": 1}), ("campaign_id", [1])]
)
def test_batch_list_bad_field_is_rejected_naming_that_field(key: str, value: Any) -> None:
    """A malformed created_at, label or campaign_id in a list entry is named in the error."""
    with pytest.raises(PayloadError) as info:
        parse_batch_list({"batches": [{"batch_id": "b1", key: value}]})
    assert info.value.field == f"batches[0].{key}"


# -- properties: any JSON in, records or PayloadError out -------------------------------------

KNOWN_KEYS = sorted(
    {
        "status", "batch_params", "analysis", "call_data", "id", "batch_id", "created_at",
        "label", "base_prompt", "endpoint_code", "campaign_id", "call_params", "total_calls",
        "completed_calls", "in_progress_calls", "queue_statuses", "call_lengths", "call_ids",
        "error_messages", "endpoints", "average", "average_nonzero", "summary", "call_id",
        "c_id", "to", "from", "completed", "call_length", "answered_by", "queue_status",
        "error_message", "message", "corrected_duration", "end_at", "endpoint_url",
        "max_duration", "request_data", "transcripts", "text", "user", "batches",
    }
)  # fmt: skip

# Integers span what orjson (the client's decoder) yields as int; larger numbers arrive as
# floats. Past float range, see test_epoch_integer_beyond_float_range_is_rejected_naming_the_field.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(
        ["", "20", "20.0", "b1", "c1", "completed", "2023-12-16T00:17:38.000Z", "nan", "1e400"]
    )
)
json_keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=6)


def json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=5)


json_values = st.recursive(json_scalars, json_containers, max_leaves=20)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)


def assert_well_formed(parsed: ParsedBatch) -> None:
    """The invariants every successful parse keeps, whatever the input."""
    assert isinstance(parsed, ParsedBatch)
    assert parsed.batch.batch_id == BATCH
    stamps = [parsed.batch.created_at]
    counts: list[Any] = []
    if parsed.analysis is not None:
        counts += [
            parsed.analysis.total_calls,
            parsed.analysis.completed_calls,
            parsed.analysis.in_progress_calls,
        ]
    for count in parsed.queue_status_counts or []:
        assert isinstance(count.queue_status, str)
        counts.append(count.count)
    for record in parsed.calls or []:
        assert isinstance(record.call_id, str)
        assert record.call_id
        stamps += [record.created_at, record.end_at]
        counts.append(record.corrected_duration)
    call_ids = {record.call_id for record in parsed.calls or []}
    for line in parsed.transcripts or []:
        assert line.call_id in call_ids
        assert type(line.line_id) is int
        stamps.append(line.created_at)
    for stamp in stamps:
        assert stamp is None or (stamp.tzinfo is UTC and stamp.utcoffset() == timedelta(0))
    for count in counts:
        assert count is None or type(count) is int


def parse_or_error(raw: Any, **kwargs: Any) -> ParsedBatch | PayloadError:
    """The parse result, or the PayloadError it raised; any other exception propagates."""
    try:
        return parse(raw, **kwargs)
    except PayloadError as error:
        return error


def parses_or_rejects(raw: Any) -> None:
    """Parse raw: success must be well formed; the only failure allowed is PayloadError."""
    outcome = parse_or_error(raw)
    if isinstance(outcome, PayloadError):
        event("rejected")
        assert outcome.batch_id == BATCH
        assert outcome.field
    else:
        event("parsed")
        assert_well_formed(outcome)


@PROPERTY_SETTINGS
@given(json_values)
def test_any_json_body_parses_or_raises_payload_error(raw: Any) -> None:
    """An arbitrary JSON value as the whole body never escapes as another exception."""
    parses_or_rejects(raw)


@PROPERTY_SETTINGS
@given(json_values)
def test_any_json_under_valid_batch_params_parses_or_raises_payload_error(raw: Any) -> None:
    """Arbitrary JSON for every part after a valid batch_params is parsed or rejected cleanly."""
    body = dict(raw) if isinstance(raw, dict) else {"call_data": raw}
    body["batch_params"] = {"id": BATCH}
    parses_or_rejects(body)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) to a value inside value, the root excluded."""
    if isinstance(value, dict):
        children: Any = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return []
    found: list[tuple[Any, ...]] = []
    for key, child in children:
        found.append((*prefix, key))
        found += paths(child, (*prefix, key))
    return found


def rich_payload() -> dict[str, Any]:
    """The minimal payload with a second call, error entries and more timestamp shapes."""
    raw = minimal_payload()
    raw["analysis"]["error_messages"] = [{"c_id": "c2", "message": "Busy"}, "plain"]
    raw["analysis"]["endpoints"] = {"API": "3"}
    raw["call_data"].append(
        {
            "c_id": "c2",
            "created_at": 1702685842383,
            "end_at": "2023-12-15T19:17:22.96630-05:00",
            "answered_by": ["human"],
            "queue_status": "completed",
            "corrected_duration": "0",
            "transcripts": [{"id": "5", "user": "user", "text": "hello"}],
            "summary": "extra field",
        }
    )
    return raw


RICH_PATHS = paths(rich_payload())


@PROPERTY_SETTINGS
@given(st.sampled_from(RICH_PATHS), st.none() | json_values, st.booleans())
def test_valid_payload_with_one_value_mutated_parses_or_raises_payload_error(
    path: tuple[Any, ...], replacement: Any, delete: bool
) -> None:
    """Replacing or deleting any one value of a valid payload gives records or a PayloadError."""
    raw = copy.deepcopy(rich_payload())
    holder: Any = raw
    for key in path[:-1]:
        holder = holder[key]
    if delete:
        del holder[path[-1]]
    else:
        holder[path[-1]] = replacement
    parses_or_rejects(raw)


def test_mutation_paths_reach_every_level_of_the_payload() -> None:
    """The mutation property reaches transcript lines and error entries, not just the top."""
    assert ("call_data", 1, "transcripts", 0, "id") in RICH_PATHS
    assert ("analysis", "error_messages", 0, "c_id") in RICH_PATHS
    assert ("batch_params", "id") in RICH_PATHS


small_json_values = json_scalars | json_containers(json_scalars)


def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values that usually fit the field and sometimes are any small JSON value."""
    return st.one_of(valid, valid, valid, small_json_values)


call_ids = st.sampled_from(["c1", "c2", "c3", ""]) | st.none() | st.integers(0, 3)
timestamps = st.none() | st.sampled_from(
    [
        "2023-12-16T00:17:22.383682+00:00",
        "2023-12-16T00:18:02.96630+00:00",
        "2023-12-16T00:17:38.000Z",
        "2023-12-15T19:17:22.383682-05:00",
        "2023-12-16T00:17:22",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        1702685842,
        1702685842383,
        "",
    ]
)
numbers = (
    st.none() | st.integers(-10, 10**6) | st.floats(-1e6, 1e6) | st.sampled_from(["12", "0.5"])
)
texts = st.none() | st.text(max_size=8)
transcript_lines = st.fixed_dictionaries(
    {"id": st.integers(0, 4) | st.sampled_from(["1", "2.0"])},
    optional={"text": texts, "user": texts, "created_at": timestamps, "c_id": call_ids},
)
call_fields = {
    "c_id": call_ids,
    "created_at": timestamps,
    "end_at": timestamps,
    "to": texts,
    "from": texts,
    "status": texts,
    "error_message": texts,
    "endpoint_url": texts,
    "completed": st.none() | st.booleans() | st.sampled_from(["true", "false", 0, 1]),
    "call_length": numbers,
    "max_duration": numbers,
    "corrected_duration": st.none() | st.integers(0, 3600) | st.sampled_from(["12", "12.0"]),
    "answered_by": st.none()
    | st.sampled_from(["human", "voicemail"])
    | st.lists(st.sampled_from(["human", "voicemail"]), max_size=1),
    "queue_status": st.none() | st.sampled_from(["complete", "completed", "queued"]),
    "request_data": small_json_values,
    "transcripts": st.none() | st.lists(transcript_lines, max_size=3),
    "price": small_json_values,
}
call_shaped = st.fixed_dictionaries(
    {"call_id": mostly(call_ids)},
    optional={key: mostly(values) for key, values in call_fields.items()},
)


@PROPERTY_SETTINGS
@given(st.lists(call_shaped, min_size=1, max_size=2), st.booleans())
def test_call_shaped_dicts_parse_or_raise_payload_error(
    calls: list[dict[str, Any]], transcripts_requested: bool
) -> None:
    """Random call-like objects give well-formed calls, or a PayloadError within call_data."""
    outcome = parse_or_error(with_calls(*calls), transcripts_requested=transcripts_requested)
    if isinstance(outcome, PayloadError):
        event("rejected")
        assert outcome.batch_id == BATCH
        assert outcome.field is not None
        assert outcome.field.startswith("call_data[")
        return
    event("parsed")
    assert_well_formed(outcome)
    assert outcome.calls is not None
    assert len(outcome.calls) <= len(calls)
    assert (outcome.transcripts is None) is not transcripts_requested


def test_analysis_without_queue_statuses_or_errors_leaves_them_unknown() -> None:
    """An analysis lacking queue_statuses / error_messages gives None (keep stored rows)."""
    raw = minimal_payload()
    del raw["analysis"]["queue_statuses"]
    del raw["analysis"]["error_messages"]
    parsed = parse(raw)
    assert parsed.analysis is not None
    assert parsed.queue_status_counts is None
    assert parsed.errors is None


def test_repeated_call_takes_the_later_copys_transcript_lines() -> None:
    """When a call id repeats, the later copy's lines replace the earlier copy's."""
    raw = minimal_payload()
    first = dict(raw["call_data"][0])
    first["transcripts"] = [{"id": 1, "text": "old", "user": "user"}]
    second = dict(first)
    second["transcripts"] = [{"id": 2, "text": "new", "user": "user"}]
    raw["call_data"] = [first, second]
    parsed = parse(raw)
    assert parsed.transcripts is not None
    assert [(line.line_id, line.text) for line in parsed.transcripts] == [(2, "new")]


def test_error_entry_with_null_call_id_falls_back_to_c_id() -> None:
    """An error entry with call_id null and a c_id takes the c_id, as calls do."""
    raw = minimal_payload()
    raw["analysis"]["error_messages"] = [{"call_id": None, "c_id": "x", "error_message": "m"}]
    parsed = parse(raw)
    assert parsed.errors is not None
    assert parsed.errors[0].call_id == "x"


def test_null_batch_params_id_falls_back_to_batch_id() -> None:
    """batch_params {"id": null, "batch_id": other} is still checked against the request."""
    raw = minimal_payload()
    raw["batch_params"]["id"] = None
    raw["batch_params"]["batch_id"] = "someone-else"
    with pytest.raises(PayloadError, match=r"batch_params\.id"):
        parse(raw)


# -- streaming: the same records, call by call ---------------------------------------------


def _chunks(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_streamed_parse_equals_whole_parse_on_emulated_batches(chunk: int) -> None:
    """Parsing a body as it streams gives exactly the records of parsing it whole."""
    from batchsync.emulator import Emulator

    emulator = Emulator(seed=5, batches=3, calls_per_batch=15)
    for batch_id in emulator.batch_ids():
        body = orjson.dumps(emulator.raw_batch(batch_id))
        whole = parse_batch(orjson.loads(body), batch_id=batch_id)
        streamed = parse_batch_stream(_chunks(body, chunk if chunk > 1 else 97), batch_id=batch_id)
        assert streamed == whole


@settings(max_examples=150, deadline=None)
@given(payload=json_values)
def test_streamed_parse_agrees_with_whole_parse_on_any_json(payload: Any) -> None:
    """On any JSON body, streaming parses to the same records or fails with PayloadError too."""
    body = orjson.dumps(payload)
    assert outcome(lambda: parse_batch_body(body, batch_id=BATCH)) == outcome(
        lambda: parse_batch_stream(_chunks(body, 5), batch_id=BATCH)
    )


def outcome(parse: Any) -> Any:
    """What a parse gives: its records, or the message of its PayloadError."""
    try:
        return parse()
    except PayloadError as exc:
        return f"PayloadError: {exc}"


# JSON text written directly, to reach what a decoded value cannot hold: integers beyond 64
# bits, exponents past the float range, NUL and lone surrogate escapes, duplicate keys.
_hex = st.sampled_from("0123456789abcdefABCDEF")
_string_pieces = st.one_of(
    st.text(alphabet=st.characters(exclude_characters='"\\', min_codepoint=0x20), max_size=4),
    st.sampled_from(
        [r"\u0000", r"\ud800", r"\uDBFF", r"\udc00", r"\uDFFF", r"\ud83d\ude00", r"\\",
         r"\\u0000", r"\\\ud800", r"\"", r"\n", r"\u00e9", r"\/", "\u00e9", "\U0001f600"]
    ),
    st.builds(lambda a, b, c: rf"\u{a}{b}{c}0", st.sampled_from("dD"), _hex, _hex),
)  # fmt: skip
json_string_text = st.lists(_string_pieces, max_size=6).map(lambda p: '"' + "".join(p) + '"')
json_number_text = st.one_of(
    st.integers(min_value=-(2**130), max_value=2**130).map(str),
    st.builds(
        lambda sign, whole, frac, exp: f"{sign}{whole}{frac}{exp}",
        st.sampled_from(["", "-"]),
        st.integers(min_value=0, max_value=10**20).map(str),
        st.sampled_from(["", ".0", ".5", ".125", ".1234567890123456789"]),
        st.sampled_from(["", "e5", "E-7", "e+16", "e308", "e309", "e-400", "e400", "E-324"]),
    ),
)
json_scalar_text = st.one_of(
    json_number_text, json_string_text, st.sampled_from(["true", "false", "null"])
)
json_value_text = st.recursive(
    json_scalar_text,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(json_string_text, inner), max_size=4).map(
            lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=12,
)
_call_text = st.builds(
    lambda call_id, text, request, extra: (
        f'{{"call_id": {call_id}, "request_data": {request}, "x": {extra},'
        f' "transcripts": [{{"id": 1, "text": {text}}}]}}'
    ),
    st.one_of(json_string_text, json_number_text),
    json_string_text,
    json_value_text,
    json_value_text,
)
batch_body_text = st.builds(
    lambda label, params, calls, tail: (
        f'{{"batch_params": {{"id": "{BATCH}", "label": {label}, "call_params": {params}}},'
        f' "call_data": [{", ".join(calls)}]{tail}}}'
    ),
    json_string_text,
    json_value_text,
    st.lists(_call_text, max_size=3),
    st.sampled_from(["", ', "call_data": null', ', "call_data": []', ', "status": "x"']),
).map(lambda text: text.encode("utf-8", "surrogatepass"))
_mutation_bytes = st.sampled_from(
    [b"\\", b"\\u", b"\\ud800", b"\x00", b"\xff", b"\xed\xa0\x80", b'"', b"}", b"]", b",",
     b"e999", b"9" * 25, b"\xef\xbb\xbf", b" x", b""]
)  # fmt: skip


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    """A generated batch body, sometimes with a few bytes inserted, removed or cut off."""
    body = draw(batch_body_text)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        at = draw(st.integers(min_value=0, max_value=len(body)))
        cut = draw(st.integers(min_value=0, max_value=2))
        body = body[:at] + draw(_mutation_bytes) + body[at + cut :]
    if draw(st.booleans()) and draw(st.booleans()):
        body = body[: draw(st.integers(min_value=0, max_value=len(body)))]
    return body


@settings(max_examples=300, deadline=None)
@given(body=mutated_bodies(), chunk=st.integers(min_value=1, max_value=40))
def test_whole_and_streamed_parses_agree_on_generated_bodies(body: bytes, chunk: int) -> None:
    """Any body, valid or broken, gives the same records, or the same error message, whether it
    is decoded whole or streamed in chunks of any size."""
    whole = outcome(lambda: parse_batch_body(body, batch_id=BATCH))
    streamed = outcome(lambda: parse_batch_stream(_chunks(body, chunk), batch_id=BATCH))
    event("rejected" if isinstance(whole, str) else "parsed")
    assert streamed == whole


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", r"field \(body\): the response is not valid JSON \(parse error: premature EOF\)"),
        (b"   ", "not valid JSON"),
        (b"[1, 2]", "expected a JSON object, got a list"),
        (b"12", "expected a JSON object, got a number"),
        (b"null", "expected a JSON object, got null"),
        (b'"secret text"', "expected a JSON object, got a string"),
        (b'{"batch_params": {"id": "b1"}} trailing secret', "trailing garbage"),
        (b'{"batch_params": {"id": "b1"}}{}', "trailing garbage"),
        (b'{"batch_params": {"id": "b1"}, "x": "bad \\q secret"}', "not valid JSON"),
        (b'{"batch_params": {"id": "b1"}, "x": "secret \xff"}', "not valid JSON"),
        (b'{"batch_params": {"id": "b1"}, "x": "secret \xed\xa0\x80"}', "not valid JSON"),
        (b'{"batch_params": {"id": "b1"}, "x": "secret\x00"}', "not valid JSON"),
        (b'{"batch_params": {"id": "b1"}, "x": NaN}', "not valid JSON"),
        (b'{"batch_params": {"id": "b1"}, "x": 1e400}', "number in the response is out of range"),
        (b'{"batch_params": {"id": "b1"}, "x": -1.5e99999999999999999999999}', "out of range"),
        (b'{"batch_params": {"id": "b1"}, "x": ' + b"7" * 5000 + b"}", "out of range"),
        (b'{"batch_params": {"id": "b1"}, "x": "' + b"7" * 5000 + b'"}', "out of range"),
        (b'{"batch_params": {"id": "b1"}, "x": 0' + b"7" * 5000 + b"}", "not valid JSON"),
        (b'{"batch_params": {"id": "b1"}, "x": ' + b"[" * 1024 + b"]" * 1024 + b"}",
         "nested deeper than 1024 levels"),
        (b'{"batch_params": {"id": "b1"}, "call_data": [{"c_id": null}], "x": "secret',
         "not valid JSON"),
        (b'{"call_data": [{"c_id": null}], "batch_params": 7}',
         r"field batch_params: expected an object"),
    ],
    ids=["empty", "blank", "list", "number", "null", "string", "trailing-text", "two-objects",
         "invalid-escape", "not-utf8", "encoded-surrogate", "raw-nul", "nan", "huge-exponent",
         "giant-exponent", "5000-digits", "5000-digits-in-text", "5000-digits-leading-zero",
         "too-deep", "bad-call-then-cut", "bad-call-and-bad-params"],
)  # fmt: skip
@pytest.mark.parametrize("path", ["whole", "streamed"])
def test_bad_bodies_fail_alike_on_both_paths_without_quoting_them(
    body: bytes, message: str, path: str
) -> None:
    """Each kind of bad body fails with the same message on both paths, naming the batch and
    the field, and never quoting the body's bytes."""
    parse: Any = parse_batch_body if path == "whole" else parse_batch_stream
    with pytest.raises(PayloadError, match=message) as caught:
        parse(body if path == "whole" else _chunks(body, 3), batch_id=BATCH)
    assert str(caught.value).startswith(f"batch {BATCH}, field ")
    assert "secret" not in str(caught.value)
    assert outcome(lambda: parse_batch_body(body, batch_id=BATCH)) == outcome(
        lambda: parse_batch_stream([body], batch_id=BATCH)
    )


@pytest.mark.parametrize("path", ["whole", "streamed"])
def test_nesting_up_to_the_limit_is_accepted_on_both_paths(path: str) -> None:
    """A value nested exactly MAX_DEPTH levels deep (body included) is parsed on both paths."""
    body = b'{"batch_params": {"id": "b1", "call_params": ' + b"[" * 1022 + b"]" * 1022 + b"}}"
    if path == "whole":
        parsed = parse_batch_body(body, batch_id=BATCH)
    else:
        parsed = parse_batch_stream(_chunks(body, 64), batch_id=BATCH)
    assert isinstance(parsed.batch.call_params, list)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (rb"a\u0000b", "a\ufffdb"),
        (rb"\ud800", "\ufffd"),
        (rb"\uDFFF", "\ufffd"),
        (rb"\ud83d\ude00", "\U0001f600"),
        (rb"\ud800\ud800\udc00", "\ufffd\U00010000"),
        (rb"\udc00\ud800", "\ufffd\ufffd"),
        (rb"\\u0000", "\\u0000"),
        (rb"\\\u0000", "\\\ufffd"),
        (rb"\\\\ud800", "\\\\ud800"),
        (rb"xD800\udc00", "xD800\ufffd"),
        (rb"\\ud800\udc00", "\\ud800\ufffd"),
    ],
    ids=["nul", "lone-high", "lone-low", "pair", "high-then-pair", "low-then-high",
         "escaped-backslash", "backslash-then-nul", "two-escaped-backslashes",
         "low-after-text-like-a-high", "low-after-an-escaped-backslash-and-text-like-a-high"],
)  # fmt: skip
@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_unstorable_escapes_become_replacement_characters(
    text: bytes, expected: str, chunk: int
) -> None:
    """NUL and lone surrogate escapes become U+FFFD in values and keys, whole or streamed in any
    chunking; pairs and escaped backslashes stay as they are."""
    body = b'{"batch_params": {"id": "b1", "label": "' + text + b'", "call_params": {"'
    body += text + b'": 1}}}'
    for parsed in (
        parse_batch_body(body, batch_id=BATCH),
        parse_batch_stream(_chunks(body, chunk), batch_id=BATCH),
    ):
        assert parsed.batch.label == expected
        assert parsed.batch.call_params == {expected: 1}


@pytest.mark.parametrize("path", ["whole", "streamed"])
def test_big_integers_and_edge_floats_keep_their_values(path: str) -> None:
    """Integers beyond 64 bits keep every digit, floats are as orjson reads them, on both paths."""
    body = (
        b'{"batch_params": {"id": "b1", "call_params": [123456789012345678901234567890,'
        b" -9223372036854775809, 18446744073709551615, 1e308, -0.0, 5e-324, 1E2, 1e-400, 0.1]}}"
    )
    if path == "whole":
        parsed = parse_batch_body(body, batch_id=BATCH)
    else:
        parsed = parse_batch_stream(_chunks(body, 4), batch_id=BATCH)
    values = parsed.batch.call_params
    assert values == [123456789012345678901234567890, -(2**63) - 1, 2**64 - 1, 1e308, -0.0,
                      5e-324, 100.0, 0.0, 0.1]  # fmt: skip
    assert [type(v) for v in values] == [int] * 3 + [float] * 6
    assert str(values[4]) == "-0.0"


@pytest.mark.parametrize("path", ["whole", "streamed"])
def test_leading_byte_order_mark_is_ignored(path: str) -> None:
    """A body starting with a UTF-8 byte order mark parses as the same body without it."""
    body = b'\xef\xbb\xbf{"batch_params": {"id": "b1", "label": "x"}}'
    if path == "whole":
        parsed = parse_batch_body(body, batch_id=BATCH)
    else:
        parsed = parse_batch_stream(_chunks(body, 1), batch_id=BATCH)
    assert parsed.batch.label == "x"


def test_duplicate_keys_keep_the_last_value_on_both_paths() -> None:
    """A repeated key counts with its last value, call_data included, on both paths."""
    body = (
        b'{"batch_params": {"id": "b1", "label": "first", "label": "last"},'
        b' "call_data": [{"call_id": "gone"}], "call_data": [{"call_id": "c1", "to": "1",'
        b' "to": "2"}]}'
    )
    whole = parse_batch_body(body, batch_id=BATCH)
    assert parse_batch_stream(_chunks(body, 3), batch_id=BATCH) == whole
    assert whole.batch.label == "last"
    assert [(c.call_id, c.to_number) for c in whole.calls or []] == [("c1", "2")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-12-16 00:17:22 UTC", datetime(2023, 12, 16, 0, 17, 22, tzinfo=UTC)),
        ("2023-12-16T00:17:22GMT", datetime(2023, 12, 16, 0, 17, 22, tzinfo=UTC)),
        ("Sat, 16 Dec 2023 00:17:22 GMT", datetime(2023, 12, 16, 0, 17, 22, tzinfo=UTC)),
        ("1702685842", datetime(2023, 12, 16, 0, 17, 22, tzinfo=UTC)),
        ("1702685842000", datetime(2023, 12, 16, 0, 17, 22, tzinfo=UTC)),
        ("2023-12-16T00:17:22.123456789Z", datetime(2023, 12, 16, 0, 17, 22, 123456, tzinfo=UTC)),
        ("2023-12-16T05:47:22+05:30", datetime(2023, 12, 16, 0, 17, 22, tzinfo=UTC)),
    ],
)
def test_unusual_but_clear_timestamps_are_understood(text: str, expected: datetime) -> None:
    """A trailing UTC, HTTP dates, epoch strings and nanoseconds all become UTC times."""
    raw = minimal_payload()
    raw["batch_params"]["created_at"] = text
    assert parse(raw).batch.created_at == expected


@settings(max_examples=500, deadline=None)
@given(
    pieces=st.lists(
        st.sampled_from([b"\\", b"\\\\", b"u", b"\\u", b"d8", b"D", b"c0", b"0000", b"00", b"ff",
                         b"\\ud800", b"\\udc00", b"\\u0000", b"x", b'"', b"7" * 9]),
        max_size=40,
    ),
    chunk=st.integers(min_value=1, max_value=30),
)  # fmt: skip
def test_replacing_escapes_does_not_depend_on_the_chunking(pieces: list[bytes], chunk: int) -> None:
    """Escapes are replaced in a streamed body exactly as in the whole body, however it is cut."""
    from batchsync.payload import _UNSTORABLE_ESCAPE, _replace_unstorable, _replacement

    body = b"".join(pieces)
    whole = _UNSTORABLE_ESCAPE.sub(_replacement, body)  # what the whole-body path does
    assert b"".join(_replace_unstorable(_chunks(body, chunk))) == whole
    assert len(whole) == len(body)


@settings(max_examples=100, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.sampled_from([b"x", b'"', b"-", b"."]), st.integers(0, 4303)), max_size=4
    ),
    chunk=st.sampled_from([1, 7, 100, 4300, 4301, 65536]),
)
def test_cutting_long_digit_runs_does_not_depend_on_the_chunking(
    runs: list[tuple[bytes, int]], chunk: int
) -> None:
    """Runs of more than 4300 digits are found and cut alike, however the body is cut."""
    from batchsync.payload import _DigitRuns

    body = b"".join(sep + b"7" * length for sep, length in runs)
    whole, streamed = _DigitRuns(), _DigitRuns()
    expected = b"".join(whole.cut([body]))
    assert b"".join(streamed.cut(_chunks(body, chunk))) == expected
    assert streamed.found == whole.found == any(length > 4300 for _, length in runs)


# -- calls handed out in chunks ------------------------------------------------------------------


def chunked(raw: dict[str, Any], size: int) -> tuple[list[tuple[list[str], int, set[str]]], Any]:
    """Parse ``raw`` streamed with a sink: per chunk (call ids, lines, ids sent again), and
    the batch returned."""
    chunks: list[tuple[list[str], int, set[str]]] = []

    def sink(calls: list[Any], lines: list[Any] | None, again: frozenset[str]) -> None:
        chunks.append(([c.call_id for c in calls], len(lines or ()), set(again)))

    body = orjson.dumps(raw)
    parsed = parse_batch_stream(
        [body[i : i + 50] for i in range(0, len(body), 50)],
        batch_id="b1",
        on_calls=sink,
        chunk_size=size,
    )
    return chunks, parsed


def numbered_calls(count: int) -> list[dict[str, Any]]:
    return [
        {"call_id": f"c{i}", "transcripts": [{"id": 1, "text": "hi"}, {"id": 2, "text": "yo"}]}
        for i in range(count)
    ]


def test_streamed_calls_reach_the_sink_in_chunks_of_the_size_asked() -> None:
    """With a sink, calls go out chunk_size at a time with their lines, the last chunk at the
    end, and the batch returned holds none of them."""
    raw = {"batch_params": {"id": "b1"}, "call_data": numbered_calls(12)}
    chunks, parsed = chunked(raw, 5)
    assert [(len(ids), lines) for ids, lines, _ in chunks] == [(5, 10), (5, 10), (2, 4)]
    assert [i for ids, _, _ in chunks for i in ids] == [f"c{i}" for i in range(12)]
    assert (parsed.calls, parsed.transcripts) == ([], [])


def test_call_repeated_in_a_later_chunk_is_sent_again_and_named() -> None:
    """A call id already sent in an earlier chunk comes again in its later chunk, named in
    ``again`` so the writer can replace its lines."""
    raw = {"batch_params": {"id": "b1"}, "call_data": [*numbered_calls(6), {"call_id": "c1"}]}
    chunks, _ = chunked(raw, 3)
    assert [again for _, _, again in chunks] == [set(), set(), {"c1"}]


def test_bad_call_after_chunks_were_sent_still_raises_the_whole_parsers_error() -> None:
    """A call that cannot be parsed after chunks went out raises the same PayloadError as the
    whole parse, and the chunk holding it is never sent."""
    raw = {"batch_params": {"id": "b1"}, "call_data": numbered_calls(9)}
    raw["call_data"][7]["completed"] = "maybe"
    with pytest.raises(PayloadError) as whole:
        parse_batch(raw, batch_id="b1")
    with pytest.raises(PayloadError) as streamed:
        chunked(raw, 3)
    assert str(streamed.value) == str(whole.value)


def test_call_data_repeated_after_a_chunk_was_sent_asks_to_start_over() -> None:
    """A second call_data list after calls of the first were sent raises CallDataRepeated."""
    body = b'{"batch_params": {"id": "b1"}, "call_data": [{"call_id": "a"}, {"call_id": "b"}],'
    body += b' "call_data": []}'
    with pytest.raises(CallDataRepeated):
        parse_batch_stream([body], batch_id="b1", on_calls=lambda *_: None, chunk_size=1)
