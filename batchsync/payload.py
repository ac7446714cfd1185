"""Turn one raw Bland batch payload into typed records. Pure functions: no IO, no clock.

The Bland API is loose about types (see the quirks in the API notes): counts arrive as
numbers or numeric strings, ``answered_by`` as a string or a one-element list, call ids
under ``call_id`` or the pre-2024 ``c_id``, timestamps in several ISO formats. Each value
is parsed leniently where its meaning is unambiguous and rejected with a
:class:`~batchsync.errors.PayloadError` naming the batch and the field where it is not.
Fields this module does not model are kept, per record, in an ``extra`` mapping.

The records are plain named tuples in table-column order so the store can hand them to
the database driver without another copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from batchsync.errors import PayloadError

JsonObject = dict[str, Any]


class BatchRecord(NamedTuple):
    batch_id: str
    status: str | None
    label: str | None
    base_prompt: str | None
    endpoint_code: str | None
    campaign_id: str | None
    created_at: datetime | None
    call_params: Any
    extra: JsonObject | None


class AnalysisRecord(NamedTuple):
    total_calls: int | None
    completed_calls: int | None
    in_progress_calls: int | None
    call_length_average: float | None
    call_length_average_nonzero: float | None
    call_length_summary: Any
    endpoints: Any


class QueueStatusCountRecord(NamedTuple):
    batch_id: str
    queue_status: str
    # The column is named count; as a field it shadows tuple.count, which nothing here uses.
    count: int  # type: ignore[assignment]


class ErrorRecord(NamedTuple):
    batch_id: str
    position: int
    call_id: str | None
    error_message: str


class CallRecord(NamedTuple):
    call_id: str
    batch_id: str
    created_at: datetime | None
    to_number: str | None
    from_number: str | None
    completed: bool | None
    call_length: float | None
    answered_by: str | None
    status: str | None
    queue_status: str | None
    error_message: str | None
    corrected_duration: int | None
    end_at: datetime | None
    endpoint_url: str | None
    max_duration: float | None
    request_data: Any
    extra: JsonObject | None


class TranscriptLineRecord(NamedTuple):
    call_id: str
    line_id: int
    batch_id: str
    created_at: datetime | None
    speaker: str | None
    text: str | None


class ParsedBatch(NamedTuple):
    """One batch as records. ``None`` means "not in the response": leave stored rows alone."""

    batch: BatchRecord
    analysis: AnalysisRecord | None
    queue_status_counts: list[QueueStatusCountRecord] | None
    errors: list[ErrorRecord] | None
    calls: list[CallRecord] | None
    transcripts: list[TranscriptLineRecord] | None


class BatchSummary(NamedTuple):
    """One entry of the batch list (discovery)."""

    batch_id: str
    created_at: datetime | None
    campaign_id: str | None
    label: str | None


_BATCH_PARAM_KEYS = frozenset(
    {"id", "batch_id", "created_at", "label", "base_prompt", "endpoint_code", "campaign_id",
     "call_params"}
)  # fmt: skip
_TOP_KEYS = frozenset({"status", "batch_params", "analysis", "call_data"})
_ANALYSIS_KEYS = frozenset(
    {"total_calls", "completed_calls", "in_progress_calls", "queue_statuses", "call_lengths",
     "call_ids", "error_messages", "endpoints"}
)  # fmt: skip
_CALL_KEYS = frozenset(
    {"call_id", "c_id", "batch_id", "created_at", "to", "from", "completed", "call_length",
     "answered_by", "status", "queue_status", "error_message", "corrected_duration", "end_at",
     "endpoint_url", "max_duration", "request_data", "transcripts"}
)  # fmt: skip
# Both spellings occur in real payloads; the documented one is "complete".
_QUEUE_STATUS_ALIASES = {"completed": "complete"}


class _Field:
    """Where a value sits in the payload, for error messages; cheap until an error occurs."""

    __slots__ = ("batch_id", "path")

    def __init__(self, batch_id: str | None, path: str) -> None:
        self.batch_id = batch_id
        self.path = path

    def sub(self, key: str) -> _Field:
        return _Field(self.batch_id, f"{self.path}.{key}")

    def error(self, message: str) -> PayloadError:
        return PayloadError(message, batch_id=self.batch_id, field=self.path)


def parse_batch(raw: Any, *, batch_id: str, transcripts_requested: bool = True) -> ParsedBatch:
    """Parse one ``GET /v1/batches/{id}`` body into records, or raise PayloadError.

    ``transcripts_requested`` says whether the request asked for transcripts: only then does a
    call without a ``transcripts`` list mean "this call has no transcript lines".
    """
    if not isinstance(raw, Mapping):
        raise PayloadError(
            f"expected a JSON object, got {_type_name(raw)}", batch_id=batch_id, field="(body)"
        )
    params = raw.get("batch_params")
    if not isinstance(params, Mapping):
        raise _Field(batch_id, "batch_params").error(
            f"expected an object, got {_type_name(params)}"
        )
    found_id = params.get("id", params.get("batch_id"))
    if found_id is not None and str(found_id) != batch_id:
        raise _Field(batch_id, "batch_params.id").error(
            f"the response is for batch {found_id!r}, not the one requested"
        )
    batch = _parse_batch_record(raw, params, batch_id)

    analysis = queue_counts = errors = None
    raw_analysis = raw.get("analysis")
    if raw_analysis is not None:
        if not isinstance(raw_analysis, Mapping):
            raise _Field(batch_id, "analysis").error(
                f"expected an object, got {_type_name(raw_analysis)}"
            )
        analysis, queue_counts, errors = _parse_analysis(raw_analysis, batch_id)
        extra_analysis = {k: v for k, v in raw_analysis.items() if k not in _ANALYSIS_KEYS}
        if extra_analysis:
            batch = batch._replace(extra={**(batch.extra or {}), "analysis": extra_analysis})

    calls = transcripts = None
    raw_calls = raw.get("call_data")
    if raw_calls is not None:
        if not isinstance(raw_calls, list):
            raise _Field(batch_id, "call_data").error(
                f"expected a list, got {_type_name(raw_calls)}"
            )
        calls, transcripts = _parse_calls(raw_calls, batch_id, transcripts_requested)
    return ParsedBatch(batch, analysis, queue_counts, errors, calls, transcripts)


def parse_batch_list(raw: Any) -> list[BatchSummary]:
    """Parse one page of ``GET /v1/batches``, or raise PayloadError."""
    if not isinstance(raw, Mapping):
        raise PayloadError(f"expected a JSON object, got {_type_name(raw)}", field="(body)")
    items = raw.get("batches")
    if not isinstance(items, list):
        raise PayloadError(f"expected a list, got {_type_name(items)}", field="batches")
    summaries = []
    for index, item in enumerate(items):
        where = _Field(None, f"batches[{index}]")
        if not isinstance(item, Mapping):
            raise where.error(f"expected an object, got {_type_name(item)}")
        raw_id = item.get("batch_id", item.get("id"))
        if raw_id is None or raw_id == "":
            raise _Field(None, f"batches[{index}].batch_id").error("missing")
        batch_id = _text(raw_id, _Field(None, f"batches[{index}].batch_id"))
        assert batch_id is not None
        summaries.append(
            BatchSummary(
                batch_id=batch_id,
                created_at=_timestamp(item.get("created_at"), where),
                campaign_id=_text(item.get("campaign_id"), where),
                label=_text(item.get("label"), where),
            )
        )
    return summaries


def _parse_batch_record(
    raw: Mapping[str, Any], params: Mapping[str, Any], batch_id: str
) -> BatchRecord:
    def at(key: str) -> _Field:
        return _Field(batch_id, f"batch_params.{key}")

    extra: JsonObject = {k: v for k, v in params.items() if k not in _BATCH_PARAM_KEYS}
    top_extra = {k: v for k, v in raw.items() if k not in _TOP_KEYS}
    if top_extra:
        extra["response"] = top_extra
    return BatchRecord(
        batch_id=batch_id,
        status=_text(raw.get("status"), _Field(batch_id, "status")),
        label=_text(params.get("label"), at("label")),
        base_prompt=_text(params.get("base_prompt"), at("base_prompt")),
        endpoint_code=_text(params.get("endpoint_code"), at("endpoint_code")),
        campaign_id=_text(params.get("campaign_id"), at("campaign_id")),
        created_at=_timestamp(params.get("created_at"), at("created_at")),
        call_params=params.get("call_params"),
        extra=extra or None,
    )


def _parse_analysis(
    raw: Mapping[str, Any], batch_id: str
) -> tuple[AnalysisRecord, list[QueueStatusCountRecord], list[ErrorRecord]]:
    def at(key: str) -> _Field:
        return _Field(batch_id, f"analysis.{key}")

    lengths = raw.get("call_lengths")
    if lengths is None:
        lengths = {}
    elif not isinstance(lengths, Mapping):
        raise at("call_lengths").error(f"expected an object, got {_type_name(lengths)}")
    endpoints = raw.get("endpoints")
    if isinstance(endpoints, Mapping):
        endpoints = {str(k): _count_or_value(v) for k, v in endpoints.items()}
    analysis = AnalysisRecord(
        total_calls=_integer(raw.get("total_calls"), at("total_calls")),
        completed_calls=_integer(raw.get("completed_calls"), at("completed_calls")),
        in_progress_calls=_integer(raw.get("in_progress_calls"), at("in_progress_calls")),
        call_length_average=_number(lengths.get("average"), at("call_lengths.average")),
        call_length_average_nonzero=_number(
            lengths.get("average_nonzero"), at("call_lengths.average_nonzero")
        ),
        call_length_summary=lengths.get("summary"),
        endpoints=endpoints,
    )

    statuses = raw.get("queue_statuses")
    counts: dict[str, int] = {}
    if statuses is not None:
        if not isinstance(statuses, Mapping):
            raise at("queue_statuses").error(f"expected an object, got {_type_name(statuses)}")
        for key, value in statuses.items():
            count = _integer(value, at(f"queue_statuses.{key}"))
            if count is None:
                continue
            name = _QUEUE_STATUS_ALIASES.get(str(key), str(key))
            counts[name] = counts.get(name, 0) + count
    queue_counts = [QueueStatusCountRecord(batch_id, k, v) for k, v in counts.items()]

    raw_errors = raw.get("error_messages")
    errors: list[ErrorRecord] = []
    if raw_errors is not None:
        if not isinstance(raw_errors, list):
            raise at("error_messages").error(f"expected a list, got {_type_name(raw_errors)}")
        for position, item in enumerate(raw_errors):
            where = at(f"error_messages[{position}]")
            if isinstance(item, str):
                errors.append(ErrorRecord(batch_id, position, None, item))
            elif isinstance(item, Mapping):
                message = item.get("error_message", item.get("message"))
                errors.append(
                    ErrorRecord(
                        batch_id,
                        position,
                        _text(item.get("call_id", item.get("c_id")), where),
                        _text(message, where) or "",
                    )
                )
            else:
                raise where.error(f"expected an object or a string, got {_type_name(item)}")
    return analysis, queue_counts, errors


def _parse_calls(
    raw_calls: list[Any], batch_id: str, transcripts_requested: bool
) -> tuple[list[CallRecord], list[TranscriptLineRecord] | None]:
    calls: dict[str, CallRecord] = {}
    lines: dict[tuple[str, int], TranscriptLineRecord] | None = (
        {} if transcripts_requested else None
    )
    for index, item in enumerate(raw_calls):
        where = _Field(batch_id, f"call_data[{index}]")
        if not isinstance(item, Mapping):
            raise where.error(f"expected an object, got {_type_name(item)}")
        call = _parse_call(item, batch_id, where)
        # A repeated call id is the same call sent twice; the later copy wins.
        calls[call.call_id] = call
        raw_lines = item.get("transcripts")
        if lines is not None and raw_lines is not None:
            if not isinstance(raw_lines, list):
                raise _Field(batch_id, f"{where.path}.transcripts").error(
                    f"expected a list, got {_type_name(raw_lines)}"
                )
            for line_index, raw_line in enumerate(raw_lines):
                line = _parse_transcript_line(
                    raw_line, call.call_id, batch_id,
                    _Field(batch_id, f"{where.path}.transcripts[{line_index}]"),
                )  # fmt: skip
                lines[(line.call_id, line.line_id)] = line
    return list(calls.values()), None if lines is None else list(lines.values())


def _parse_call(item: Mapping[str, Any], batch_id: str, where: _Field) -> CallRecord:
    raw_id = item.get("call_id")
    if raw_id is None or raw_id == "":
        raw_id = item.get("c_id")
    if raw_id is None or raw_id == "":
        raise _Field(batch_id, f"{where.path}.call_id").error("missing (neither call_id nor c_id)")
    call_id = _text(raw_id, _Field(batch_id, f"{where.path}.call_id"))
    assert call_id is not None
    extra = {k: v for k, v in item.items() if k not in _CALL_KEYS}
    queue_status = _text(item.get("queue_status"), where)
    if queue_status is not None:
        queue_status = _QUEUE_STATUS_ALIASES.get(queue_status, queue_status)
    request_data = item.get("request_data")
    return CallRecord(
        call_id=call_id,
        batch_id=batch_id,
        created_at=_timestamp(item.get("created_at"), where.sub("created_at")),
        to_number=_text(item.get("to"), where.sub("to")),
        from_number=_text(item.get("from"), where.sub("from")),
        completed=_boolean(item.get("completed"), where.sub("completed")),
        call_length=_number(item.get("call_length"), where.sub("call_length")),
        answered_by=_answered_by(item.get("answered_by"), where.sub("answered_by")),
        status=_text(item.get("status"), where.sub("status")),
        queue_status=queue_status,
        error_message=_text(item.get("error_message"), where.sub("error_message")),
        corrected_duration=_integer(
            item.get("corrected_duration"), where.sub("corrected_duration")
        ),
        end_at=_timestamp(item.get("end_at"), where.sub("end_at")),
        endpoint_url=_text(item.get("endpoint_url"), where.sub("endpoint_url")),
        max_duration=_number(item.get("max_duration"), where.sub("max_duration")),
        request_data=request_data,
        extra=extra or None,
    )


def _parse_transcript_line(
    raw: Any, call_id: str, batch_id: str, where: _Field
) -> TranscriptLineRecord:
    if not isinstance(raw, Mapping):
        raise where.error(f"expected an object, got {_type_name(raw)}")
    line_id = _integer(raw.get("id"), where.sub("id"), limit=_INT64)
    if line_id is None:
        raise where.sub("id").error("missing")
    return TranscriptLineRecord(
        call_id=call_id,
        line_id=line_id,
        batch_id=batch_id,
        created_at=_timestamp(raw.get("created_at"), where.sub("created_at")),
        speaker=_text(raw.get("user"), where.sub("user")),
        text=_text(raw.get("text"), where.sub("text")),
    )


# -- scalar coercions -------------------------------------------------------------------------


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _text(value: Any, where: _Field) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise where.error(f"expected a string, got {_type_name(value)}")


_INT32 = 2**31
_INT64 = 2**63


def _integer(value: Any, where: _Field, *, limit: int = _INT32) -> int | None:
    """A whole number from a number or a numeric string, within the column's range."""
    number = _whole(value, where)
    if number is not None and not -limit <= number < limit:
        raise where.error(f"{number} is out of range")
    return number


def _whole(value: Any, where: _Field) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise where.error("expected a number, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                if number.is_integer():
                    return int(number)
        raise where.error(f"expected a whole number, got {value!r}")
    raise where.error(f"expected a whole number, got {_type_name(value)}")


def _number(value: Any, where: _Field) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise where.error("expected a number, got a boolean")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            raise where.error(f"{value} is out of range") from None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise where.error(f"expected a number, got {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise where.error(f"expected a finite number, got {value!r}")
        return number
    raise where.error(f"expected a number, got {_type_name(value)}")


def _count_or_value(value: Any) -> Any:
    """Endpoint counts come as 3 or "3": store numbers as numbers, anything else as it came."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


_TRUE = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _boolean(value: Any, where: _Field) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE:
        return _TRUE[value.strip().lower()]
    raise where.error(f"expected a boolean, got {value!r}")


def _answered_by(value: Any, where: _Field) -> str | None:
    """Documented as an array of one string, sent as a plain string: accept both."""
    if isinstance(value, list):
        if not value:
            return None
        if len(value) > 1:
            raise where.error(f"expected at most one value, got {len(value)}")
        value = value[0]
    return _text(value, where)


def _timestamp(value: Any, where: _Field) -> datetime | None:
    """Parse the ISO 8601 variants the API sends; naive times are UTC. Always returns UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise where.error(f"expected an ISO 8601 timestamp, got {value!r}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        # Epoch seconds, or milliseconds when the number is too large to be seconds.
        seconds = value / 1000 if abs(value) > 1e11 else value
        try:
            parsed = datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise where.error(f"timestamp {value!r} is out of range") from None
    else:
        raise where.error(f"expected a timestamp, got {_type_name(value)}")
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise where.error(f"timestamp {value!r} is out of range") from None
