"""Bland's v2 batches and the calls API: list, fetch, and parse into the v1 records.

A v2 batch is read from four endpoints: ``GET /v2/batches/{id}`` (metadata, no status),
``GET /v2/batches/{id}/logs`` (its status, from lifecycle and complete events),
``GET /v1/calls?batch_id=`` (the calls, 1,000 a page) and ``GET /v1/calls/{call_id}`` (one
call's detail: transcript, price, summary, recording). Everything goes through the one
:class:`~batchsync.bland.http.BlandHttp`, so retries, the rate cap, fault handling and the
redaction of API text are those of v1.

The ``parse_*`` functions are pure: raw JSON in, records out, PayloadError naming the batch
and the field for what cannot be understood. :class:`V2Source` does the requests.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batchsync.bland.http import BlandHttp, batch_path_segment
from batchsync.bland.source import (
    BatchSource,
    FetchedBatch,
    ListPage,
    Parts,
    SpooledBody,
    Unchanged,
    page_through,
)
from batchsync.config import echoes_secret, redact
from batchsync.encoded import decoded
from batchsync.errors import BatchNotFound, HttpStatusError, PayloadError

# The v1 parser's value coercions, so that a value means the same from either API.
from batchsync.payload import (
    QUEUE_STATUS_ALIASES,
    CallsSink,
    InvalidValue,
    coerce_boolean,
    coerce_integer,
    coerce_number,
    coerce_text,
    coerce_timestamp,
    decode_json_body,
    parse_call,
    parse_transcript_line,
    payload_error,
    type_name,
)
from batchsync.records import (
    AnalysisRecord,
    BatchLogRecord,
    BatchRecord,
    BatchSummary,
    CallRecord,
    ErrorRecord,
    JsonObject,
    ParsedBatch,
    QueueStatusCountRecord,
    StoredCalls,
    TranscriptLineRecord,
)

log = logging.getLogger(__name__)

V2_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
CALLS_PAGE_MAX = 1000  # the calls list's maximum limit since July 2025
# Log entries asked for a page (``take``); the server may answer fewer on any page.
LOGS_PAGE_SIZE = 100
# Queue statuses after which a call changes no more (besides its detail being filled in).
FINAL_QUEUE_STATUSES = frozenset(
    {"complete", "pre_queue_error", "queue_error", "call_error", "complete_error"}
)
IN_PROGRESS_QUEUE_STATUSES = frozenset({"new", "queued", "allocated", "started"})
# Call details fetched at once within one batch (each batch in flight has its own).
DETAIL_CONCURRENCY = 4

# Detail fields with a column of their own; the call's other fields go through the v1 call
# parser (its columns, then extra).
_DETAIL_KEYS = frozenset(
    {"price", "summary", "recording_url", "started_at", "inbound", "call_ended_by",
     "pathway_id", "disposition_tag", "transferred_to", "variables", "metadata",
     "pathway_tags", "analysis", "transcripts"}
)  # fmt: skip
# Not stored: the transcript joined into one text (call_transcripts holds its lines).
_DROPPED_CALL_KEYS = frozenset({"concatenated_transcript"})
# Not stored: a preview of the calls (with phone numbers) that the calls table holds in full.
_BATCH_KEYS = frozenset({"id", "user_id", "base_prompt", "created_at", "description"})
_DROPPED_BATCH_KEYS = frozenset({"call_objects"})


def is_v2_id(batch_id: str) -> bool:
    """Whether the id looks like a v2 batch's (a UUID); v1 ids look like ``...-gen-batch``."""
    return V2_ID.match(batch_id) is not None


# -- parsing: pure functions ----------------------------------------------------------------


def parse_envelope(raw: Any, *, batch_id: str | None, what: str) -> Any:
    """The ``data`` of a v2 ``{data, errors}`` envelope, or PayloadError."""
    if not isinstance(raw, Mapping):
        raise PayloadError(
            f"expected a JSON object, got {type_name(raw)}", batch_id=batch_id, field=what
        )
    errors = raw.get("errors")
    if raw.get("data") is None and isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], Mapping) else {}
        message = redact(str(first.get("message") or first.get("error") or "no message"))
        raise PayloadError(f"the API answered with an error ({message})", batch_id=batch_id,
                           field=what)  # fmt: skip
    if "data" not in raw:
        raise PayloadError("missing (not a v2 envelope)", batch_id=batch_id, field=f"{what}.data")
    return raw["data"]


def parse_v2_list(raw: Any) -> tuple[list[BatchSummary], list[PayloadError]]:
    """One page of ``GET /v2/batches/list``: its batches (``description`` as the label), and
    the errors of its bad entries in order, as :func:`~batchsync.payload.parse_batch_list_entries`
    gives them for v1.

    One bad entry never spoils the page. An entry whose ``created_at`` or ``description``
    cannot be read keeps its id and carries the reason in ``error`` (its error, with
    ``batch_id`` set, is in the second list too); an entry with no usable id (not an object,
    ``id`` missing, empty or not a string: v2 ids are UUID strings) is left out, its error
    (``batch_id`` None) naming ``data[i]`` and the field in the second list. PayloadError
    only when the page itself is not a v2 envelope whose ``data`` is a list.
    """
    items = parse_envelope(raw, batch_id=None, what="(v2 batch list)")
    if not isinstance(items, list):
        raise PayloadError(f"expected a list, got {type_name(items)}", field="data")
    summaries: list[BatchSummary] = []
    problems: list[PayloadError] = []
    for index, item in enumerate(items):
        where = f"data[{index}]"
        if not isinstance(item, Mapping):
            problems.append(PayloadError(f"expected an object, got {type_name(item)}", field=where))
            continue
        raw_id = item.get("id")
        if raw_id is None or raw_id == "":
            problems.append(PayloadError("missing or empty", field=f"{where}.id"))
            continue
        if not isinstance(raw_id, str):
            problems.append(
                PayloadError(f"expected a string, got {type_name(raw_id)}", field=f"{where}.id")
            )
            continue
        try:
            summaries.append(
                BatchSummary(
                    batch_id=raw_id,
                    created_at=coerce_timestamp(item.get("created_at"), "created_at"),
                    campaign_id=None,
                    label=coerce_text(item.get("description"), "description"),
                )
            )
        except InvalidValue as exc:
            error = payload_error(exc, raw_id, where)
            problems.append(error)
            summaries.append(BatchSummary(raw_id, None, None, None, error=str(error)))
    return summaries, problems


def parse_calls_page(raw: Any, *, batch_id: str) -> tuple[list[Mapping[str, Any]], int | None]:
    """One page of ``GET /v1/calls``: its raw call entries and ``total_count`` (None if absent)."""
    if not isinstance(raw, Mapping):
        raise PayloadError(
            f"expected a JSON object, got {type_name(raw)}", batch_id=batch_id, field="(calls)"
        )
    calls = raw.get("calls")
    if not isinstance(calls, list):
        raise PayloadError(
            f"expected a list, got {type_name(calls)}", batch_id=batch_id, field="calls"
        )
    try:
        total = coerce_integer(raw.get("total_count"), "total_count", limit=2**63)
    except InvalidValue as exc:
        raise payload_error(exc, batch_id) from None
    for index, item in enumerate(calls):
        if not isinstance(item, Mapping):
            raise PayloadError(
                f"expected an object, got {type_name(item)}",
                batch_id=batch_id,
                field=f"calls[{index}]",
            )
    return calls, total


def parse_base_prompt(value: Any) -> tuple[str | None, Any]:
    """(base_prompt, call_params) from v2's ``base_prompt``: a JSON-encoded string of the
    batch's global call properties. ``task`` is the prompt, the rest the call parameters;
    text that is not a JSON object is kept as the prompt, with no parameters."""
    if value is None:
        return None, None
    properties: Any = value
    if isinstance(value, str):
        try:
            properties = decode_json_body(value.encode("utf-8", "surrogatepass"), batch_id=None)
        except PayloadError:
            return value, None
    if not isinstance(properties, Mapping):
        return (value if isinstance(value, str) else coerce_text(value, "base_prompt")), None
    task = properties.get("task")
    params = {k: v for k, v in properties.items() if k != "task"}
    prompt = (
        task if isinstance(task, str) or task is None else coerce_text(task, "base_prompt.task")
    )
    return prompt, params


def batch_status(logs: Sequence[BatchLogRecord]) -> tuple[str | None, int | None, int | None]:
    """(status, calls_successful, calls_failed) from a batch's logs, in any order.

    ``completed`` once a complete entry exists (with its figures), else the newest
    lifecycle ``state_change`` as Bland spells it; None with neither.
    """
    ordered = sorted(enumerate(logs), key=lambda item: (_sort_time(item[1].timestamp), item[0]))
    complete = [entry for _, entry in ordered if entry.event_type == "complete"]
    if complete:
        payload = complete[-1].payload if isinstance(complete[-1].payload, Mapping) else {}
        return (
            "completed",
            coerce_integer(payload.get("calls_successful"), "calls_successful"),
            coerce_integer(payload.get("calls_failed"), "calls_failed"),
        )
    for _, entry in reversed(ordered):
        if entry.event_type == "lifecycle" and isinstance(entry.payload, Mapping):
            state = entry.payload.get("state_change")
            if state is not None:
                return coerce_text(state, "state_change"), None, None
    return None, None, None


def _sort_time(moment: datetime | None) -> datetime:
    return moment or datetime.min.replace(tzinfo=UTC)


def parse_logs(raw_entries: Sequence[Any], *, batch_id: str) -> list[BatchLogRecord]:
    """The batch's log entries as records, one per id (the later copy wins)."""
    records: dict[str, BatchLogRecord] = {}
    for index, item in enumerate(raw_entries):
        try:
            if not isinstance(item, Mapping):
                raise InvalidValue("", f"expected an object, got {type_name(item)}")
            raw_id = item.get("id")
            if raw_id is None or raw_id == "":
                raise InvalidValue("id", "missing")
            log_id = coerce_text(raw_id, "id") or ""
            records[log_id] = BatchLogRecord(
                batch_id,
                log_id,
                coerce_text(item.get("event_type"), "event_type"),
                coerce_timestamp(item.get("timestamp"), "timestamp"),
                item.get("payload"),
            )
        except InvalidValue as exc:
            raise payload_error(exc, batch_id, f"logs[{index}]") from None
    return list(records.values())


def parse_v2_batch(
    raw_batch: Any,
    raw_logs: Sequence[Any],
    raw_calls: Sequence[Mapping[str, Any]] | None,
    details: Mapping[str, Any] | None,
    *,
    batch_id: str,
    transcripts: bool = True,
    details_synced_at: datetime | None = None,
    kept: Mapping[str, tuple[CallRecord, list[TranscriptLineRecord]]] | None = None,
) -> ParsedBatch:
    """A v2 batch as the records v1 batches give, or PayloadError.

    ``raw_batch`` is the ``data`` of ``GET /v2/batches/{id}``; ``raw_calls`` the calls list's
    entries (None: calls not fetched); ``details`` each fetched call's detail by call id
    (None: no detail fetched). ``kept``: calls whose stored record and transcript lines
    stand in for a detail not fetched again. Counts, queue statuses and errors are derived
    from the calls.
    """
    if not isinstance(raw_batch, Mapping):
        raise PayloadError(
            f"expected an object, got {type_name(raw_batch)}", batch_id=batch_id, field="data"
        )
    found_id = raw_batch.get("id")
    if found_id is not None and str(found_id) != batch_id:
        raise PayloadError(
            "the response is for another batch than the one requested",
            batch_id=batch_id,
            field="data.id",
        )
    logs = parse_logs(raw_logs, batch_id=batch_id)
    try:
        status, successful, failed = batch_status(logs)
    except InvalidValue as exc:
        raise payload_error(exc, batch_id, "logs.complete.payload") from None
    try:
        prompt, params = parse_base_prompt(raw_batch.get("base_prompt"))
        unknown = {
            k: v
            for k, v in raw_batch.items()
            if k not in _BATCH_KEYS and k not in _DROPPED_BATCH_KEYS
        }
        batch = BatchRecord(
            batch_id=batch_id,
            status=status,
            label=coerce_text(raw_batch.get("description"), "description"),
            base_prompt=prompt,
            endpoint_code=None,
            campaign_id=None,
            created_at=coerce_timestamp(raw_batch.get("created_at"), "created_at"),
            call_params=params,
            extra={"batch": unknown} if unknown else None,
            api_version="v2",
            org_id=coerce_text(raw_batch.get("user_id"), "user_id"),
            calls_successful=successful,
            calls_failed=failed,
        )
    except InvalidValue as exc:
        raise payload_error(exc, batch_id, "data") from None
    if raw_calls is None:
        return ParsedBatch(batch, None, None, None, None, None, logs)
    calls: dict[str, CallRecord] = {}
    lines: dict[str, dict[int, TranscriptLineRecord]] = {}
    for index, entry in enumerate(raw_calls):
        call_id = _call_id(entry)
        if kept and call_id is not None and call_id in kept:
            call, stored_lines = kept[call_id]
            calls[call_id] = call
            lines[call_id] = {line.line_id: line for line in stored_lines}
            continue
        detail = details.get(call_id) if details is not None and call_id else None
        where = f"calls[{index}]" if detail is None else f"call {call_id}"
        try:
            call, call_lines = _parse_v2_call(
                entry, detail, batch_id, transcripts, details_synced_at
            )
        except InvalidValue as exc:
            raise payload_error(exc, batch_id, where) from None
        calls[call.call_id] = call
        if call_lines is not None:
            lines[call.call_id] = call_lines
    records = list(calls.values())
    analysis, counts, errors = _derived(records, batch_id)
    all_lines = None
    if details is not None and transcripts:
        all_lines = [line for by_id in lines.values() for line in by_id.values()]
    return ParsedBatch(batch, analysis, counts, errors, records, all_lines, logs)


# List entry keys and the call columns they fill: a kept detail needs them all unchanged.
# No detail field is among them (_DETAIL_KEYS): a list row may carry one (``pathway_tags``,
# in another shape than the detail's), but a detail field's column is the detail's, so its
# list value neither asks for the detail again nor replaces a stored detail's value.
_LIST_FIELDS = {"created_at": "created_at", "call_length": "call_length", "to": "to_number",
                "from": "from_number", "completed": "completed", "queue_status": "queue_status",
                "error_message": "error_message", "answered_by": "answered_by",
                "status": "status"}  # fmt: skip
assert not _LIST_FIELDS.keys() & _DETAIL_KEYS


def reusable_details(
    raw_calls: Sequence[Mapping[str, Any]], stored: StoredCalls, batch_id: str
) -> dict[str, tuple[CallRecord, list[TranscriptLineRecord]]]:
    """The calls whose detail need not be fetched again: stored with a detail, in a final
    queue status, and listed now with every list field as stored."""
    kept = {}
    for entry in raw_calls:
        call_id = _call_id(entry)
        old = stored.calls.get(call_id) if call_id else None
        if call_id is None or old is None or old.details_synced_at is None:
            continue
        if old.queue_status not in FINAL_QUEUE_STATUSES:
            continue
        try:
            fresh, _ = _parse_v2_call(entry, None, batch_id, False, None)
        except InvalidValue:
            continue  # fetched again, and reported when parsed
        if all(
            getattr(fresh, name) == getattr(old, name)
            for key, name in _LIST_FIELDS.items()
            if key in entry
        ):
            kept[call_id] = (old, stored.lines.get(call_id, []))
    return kept


_DETAIL_FIELDS = ("price", "summary", "recording_url", "started_at", "inbound", "call_ended_by",
                  "pathway_id", "disposition_tag", "transferred_to", "variables", "metadata",
                  "pathway_tags", "analysis", "details_synced_at")  # fmt: skip


def with_detail(
    call: CallRecord, detail: Any, *, batch_id: str, details_synced_at: datetime | None
) -> CallRecord:
    """A call of another API's batch with the detail columns of its ``GET /v1/calls/{id}``;
    its other columns stay as that batch gave them. The detail's fields with no column
    (``is_canary``, ``record``, ``pathway_version``, unknown ones) go into ``extra``, as a
    v2 call's do, beside the call's own (which win where both name a key)."""
    if not isinstance(detail, Mapping):
        raise PayloadError(
            f"expected an object, got {type_name(detail)}",
            batch_id=batch_id,
            field=f"call {call.call_id}",
        )
    found = _call_id(detail)
    if found is not None and found != call.call_id:
        raise PayloadError(
            "the detail is for another call than the one requested",
            batch_id=batch_id,
            field=f"call {call.call_id}",
        )
    try:
        parsed, _ = _parse_v2_call(
            {"call_id": call.call_id}, detail, batch_id, False, details_synced_at
        )
    except InvalidValue as exc:
        raise payload_error(exc, batch_id, f"call {call.call_id}") from None
    return call._replace(
        extra=merged_extra(parsed.extra, call.extra),
        **{name: getattr(parsed, name) for name in _DETAIL_FIELDS},
    )


def merged_extra(old: JsonObject | None, new: JsonObject | None) -> JsonObject | None:
    """``old``'s keys with ``new``'s over them; None when neither holds any."""
    merged = {**(old or {}), **(new or {})}
    return merged or None


def carried_columns(raw_calls: Sequence[Mapping[str, Any]]) -> dict[str, frozenset[str]]:
    """For calls whose detail is not fetched (--no-call-details): the columns their stored
    detail fills and their list entry does not (the detail columns, end_at, request_data,
    ...), by call id. See ``ParsedBatch.carried``."""
    carried = {}
    for entry in raw_calls:
        call_id = _call_id(entry)
        if call_id is None:
            continue
        listed = {name for key, name in _LIST_FIELDS.items() if key in entry}
        carried[call_id] = _CARRIED_COLUMNS - listed
    return carried


# Every column a stored detail may have filled: all but the keys.
_CARRIED_COLUMNS = frozenset(CallRecord._fields) - {"call_id", "batch_id"}
# A v1 batch's call fills every column but the detail's (parse_call leaves them None): a
# v1 call whose detail is not fetched keeps them from its stored detail, and the detail's
# fields without a column, merged into its extra.
V1_CARRIED_COLUMNS = frozenset({*_DETAIL_FIELDS, "extra"})


def v1_carried_columns(calls: Sequence[CallRecord]) -> dict[str, frozenset[str]]:
    """For the calls of a v1 batch written without their details (--no-call-details): the
    detail columns each keeps from its stored detail, by call id. See ``ParsedBatch.carried``."""
    return dict.fromkeys((call.call_id for call in calls), V1_CARRIED_COLUMNS)


def carry_stored_details(
    written: Sequence[CallRecord],
    parsed: Sequence[CallRecord],
    carried: Mapping[str, frozenset[str]],
    stored: StoredCalls,
) -> list[CallRecord]:
    """The calls to write, with the ``carried`` columns of each call whose detail was not
    fetched taken from its stored row, when that row has a detail (``details_synced_at``);
    a carried ``extra`` is the stored one with the call's own keys over it.

    ``written``: the calls as they are written (under the phone-number policy, secrets
    redacted), in the order of ``parsed``, the same calls as parsed (``carried`` names
    them by the id the API gave). ``stored``: the batch's calls as stored, already under
    the policy: so a stored value is used as it is, never put under the policy again.
    """
    kept = []
    for call, raw in zip(written, parsed, strict=True):
        columns = carried.get(raw.call_id)
        old = stored.calls.get(call.call_id) if columns else None
        if columns and call.details_synced_at is None and old and old.details_synced_at:
            values = {name: getattr(old, name) for name in columns}
            if "extra" in columns:
                # The stored keys (the detail's fields among them), the call's own over them.
                values["extra"] = merged_extra(old.extra, call.extra)
            call = call._replace(**values)
        kept.append(call)
    return kept


def _listed_final(entry: Mapping[str, Any]) -> bool:
    status = entry.get("queue_status")
    return isinstance(status, str) and (
        QUEUE_STATUS_ALIASES.get(status, status) in FINAL_QUEUE_STATUSES
    )


def _call_id(entry: Mapping[str, Any]) -> str | None:
    raw_id = entry.get("call_id") or entry.get("c_id")
    return raw_id if isinstance(raw_id, str) else None


def _parse_v2_call(
    entry: Mapping[str, Any],
    detail: Any,
    batch_id: str,
    transcripts: bool,
    details_synced_at: datetime | None,
) -> tuple[CallRecord, dict[int, TranscriptLineRecord] | None]:
    if detail is not None and not isinstance(detail, Mapping):
        raise InvalidValue("", f"expected an object, got {type_name(detail)}")
    merged: dict[str, Any] = dict(entry)
    if detail is not None:
        merged.update(detail)
    common = {
        k: v for k, v in merged.items() if k not in _DETAIL_KEYS and k not in _DROPPED_CALL_KEYS
    }
    # The call belongs to the batch it was listed under, whatever batch_id it carries.
    common.pop("batch_id", None)
    call = parse_call(common, batch_id)
    # The detail columns come from the detail when there is one, never from the list entry
    # (whose pathway_tags, say, differ in shape); without one, from the list entry.
    get = (detail if detail is not None else entry).get
    call = call._replace(
        price=coerce_number(get("price"), "price"),
        summary=coerce_text(get("summary"), "summary"),
        recording_url=coerce_text(get("recording_url"), "recording_url"),
        started_at=coerce_timestamp(get("started_at"), "started_at"),
        inbound=coerce_boolean(get("inbound"), "inbound"),
        call_ended_by=coerce_text(get("call_ended_by"), "call_ended_by"),
        pathway_id=coerce_text(get("pathway_id"), "pathway_id"),
        disposition_tag=coerce_text(get("disposition_tag"), "disposition_tag"),
        transferred_to=coerce_text(get("transferred_to"), "transferred_to"),
        variables=get("variables"),
        metadata=get("metadata"),
        pathway_tags=_pathway_tags(get("pathway_tags")),
        analysis=get("analysis"),
        details_synced_at=details_synced_at if detail is not None else None,
    )
    if detail is None or not transcripts:
        return call, None
    raw_lines = detail.get("transcripts")
    if raw_lines is not None and not isinstance(raw_lines, list):
        raise InvalidValue("transcripts", f"expected a list, got {type_name(raw_lines)}")
    lines: dict[int, TranscriptLineRecord] = {}
    for line_index, raw_line in enumerate(raw_lines or ()):
        try:
            line = parse_transcript_line(raw_line, call.call_id, batch_id)
        except InvalidValue as exc:
            raise exc.within(f"transcripts[{line_index}]") from None
        lines[line.line_id] = line
    return call, lines


def _pathway_tags(value: Any) -> Any:
    """Documented as strings, sent as ``{name, color}`` objects too: kept as sent."""
    if value is None or isinstance(value, list):
        return value
    raise InvalidValue("pathway_tags", f"expected a list, got {type_name(value)}")


def _derived(
    calls: Sequence[CallRecord], batch_id: str
) -> tuple[AnalysisRecord, list[QueueStatusCountRecord], list[ErrorRecord]]:
    """The analysis v1 sends, computed from a v2 batch's calls."""
    lengths = [c.call_length for c in calls if c.call_length is not None]
    nonzero = [length for length in lengths if length >= 1 / 60]
    analysis = AnalysisRecord(
        total_calls=len(calls),
        completed_calls=sum(1 for c in calls if c.completed),
        in_progress_calls=sum(1 for c in calls if c.queue_status in IN_PROGRESS_QUEUE_STATUSES),
        call_length_average=sum(lengths) / len(lengths) if lengths else None,
        call_length_average_nonzero=sum(nonzero) / len(nonzero) if nonzero else None,
        call_length_summary=None,
        endpoints=None,
    )
    counts = Counter(
        QUEUE_STATUS_ALIASES.get(c.queue_status, c.queue_status)
        for c in calls
        if c.queue_status is not None
    )
    queue_counts = [QueueStatusCountRecord(batch_id, s, n) for s, n in sorted(counts.items())]
    failed = [c for c in calls if c.error_message is not None]
    errors = [
        ErrorRecord(batch_id, position, c.call_id, c.error_message or "")
        for position, c in enumerate(failed)
    ]
    return analysis, queue_counts, errors


# -- the source: requests ---------------------------------------------------------------------


@dataclass
class V2Source:
    """v2 batches through the shared client: the ``BatchSource`` protocol.

    ``call_details``: fetch ``GET /v1/calls/{id}`` for every call (transcripts, price,
    summary, ...), up to ``detail_concurrency`` at once within a batch.
    """

    http: BlandHttp
    call_details: bool = True
    # The batch's calls as stored (None: fetch every detail). A call whose stored detail is
    # final and whose list entry is unchanged keeps its stored detail instead of a request.
    stored_calls: Callable[[str], StoredCalls] | None = None
    # --refresh: fetch every detail again rather than keep stored ones.
    refresh_details: bool = False
    list_page_size: int = 100
    logs_page_size: int = LOGS_PAGE_SIZE
    calls_page_size: int = CALLS_PAGE_MAX
    detail_concurrency: int = DETAIL_CONCURRENCY
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def iter_batches(self, *, campaign_id: str | None = None) -> Iterator[BatchSummary]:
        """Every v2 batch: offset pages until an empty page or one with no new id.

        Entries are read as :func:`parse_v2_list` reads them: one without a usable id is
        left out with a warning, one with an id but another field unreadable is listed with
        its ``error`` (that batch fails in the run, the others sync). Raises ApiError, or
        PayloadError when a page is not a v2 envelope holding a list (discovery fails).
        v2 batches have no campaign: with ``campaign_id`` there is none to list.
        """
        if campaign_id is not None:
            return

        def read_page(skip: int) -> ListPage:
            body = self.http.get_body(
                "/v2/batches/list",
                {"take": self.list_page_size, "skip": skip},
                what="the v2 batch list",
            )
            return parse_v2_list(decode_json_body(body, batch_id=None, what="(v2 batch list)"))

        yield from page_through(read_page, what="the v2 batch list")

    def fetch_batch(
        self, batch_id: str, parts: Parts, *, unchanged: Unchanged | None = None
    ) -> FetchedBatch:
        """One v2 batch from its four endpoints, parsed; raises ApiError or PayloadError.

        BatchNotFound only when the batch itself is unknown; a 404 of its logs, calls or a
        call's detail fails the batch as an unexpected status.
        """
        segment = batch_path_segment(batch_id)
        digest = hashlib.sha256(f"v2 {parts.tag} details={self.call_details}".encode())
        size = 0
        echoed = False  # whether any of the batch's bodies may quote the API key

        def get(path: str, params: dict[str, Any], what: str, *, batch: bool = False) -> Any:
            return record(fetch(path, params, what, batch=batch), what)

        def fetch(path: str, params: dict[str, Any], what: str, *, batch: bool = False) -> bytes:
            try:
                return self.http.get_body(path, params, what=what, batch_id=batch_id)
            except BatchNotFound as exc:
                if batch:
                    raise
                raise HttpStatusError(str(exc), status_code=404) from None

        def record(body: bytes, what: str, *, hashed: bool = True) -> Any:
            """Fold a body into the content hash, in request order, and decode it."""
            nonlocal size, echoed
            if hashed:
                digest.update(len(body).to_bytes(8, "big") + body)
            size += len(body)
            echoed = echoed or echoes_secret(body)
            return decode_json_body(body, batch_id=batch_id, what=f"({what})")

        raw_batch = parse_envelope(
            get(f"/v2/batches/{segment}", {}, f"batch {batch_id}", batch=True),
            batch_id=batch_id,
            what="(batch)",
        )
        raw_logs = self._logs(batch_id, segment, get)
        raw_calls = self._calls(batch_id, get) if parts.calls else None
        details = None
        kept: dict[str, tuple[CallRecord, list[TranscriptLineRecord]]] = {}
        if raw_calls is not None and self.call_details:
            if self.stored_calls is not None and not self.refresh_details:
                kept = reusable_details(raw_calls, self.stored_calls(batch_id), batch_id)
            wanted = [call for call in raw_calls if _call_id(call) not in kept]
            # The detail of a call listed as final is left out of the content hash, whether
            # it was fetched or kept: the hash is then the same on every run that sees the
            # same batch, so an unchanged batch is not rewritten (a final call's detail is
            # not fetched again unless its list entry changes, or under --refresh).
            final = {_call_id(call) for call in raw_calls if _listed_final(call)}
            details = {
                call_id: record(body, f"call {call_id}", hashed=call_id not in final)
                for call_id, body in self._details(batch_id, wanted, fetch).items()
            }
        content_sha256 = digest.hexdigest()
        if unchanged is not None and unchanged(content_sha256):
            return FetchedBatch(None, content_sha256, size)
        parsed = parse_v2_batch(
            raw_batch,
            raw_logs,
            raw_calls,
            details,
            batch_id=batch_id,
            transcripts=parts.transcripts,
            details_synced_at=self.clock(),
            kept=kept,
        )
        if details is None and raw_calls is not None:
            # --no-call-details: a call's stored detail stays; it is not fetched, not gone.
            # Merged when written (see ParsedBatch.carried), after the phone-number policy.
            parsed = parsed._replace(carried=carried_columns(raw_calls))
        return FetchedBatch(parsed, content_sha256, size, echoes_secret=echoed)

    def _logs(self, batch_id: str, segment: str, get: _Get) -> list[Any]:
        """Every log entry, oldest first, page by page (``take``/``skip``), until an empty
        page or a page that brings no entry not seen before.

        The logs endpoint's page size limit is undocumented ("do not assume a page is full",
        bland-api-v2-notes.md): a server may answer fewer than ``take`` entries on a page
        that is not the last, so a short page does not end the paging (its newest entries,
        the ``complete`` event among them, would be lost). A batch therefore costs one
        request more than its pages. A page with no new entry ends the paging too, so an
        API that ignores ``skip`` cannot keep the batch paging forever.
        """
        take = max(1, self.logs_page_size)
        entries: list[Any] = []
        seen: set[str] = set()
        skip = 0
        while True:
            raw = get(
                f"/v2/batches/{segment}/logs",
                {"take": take, "skip": skip, "direction": "asc"},
                f"the logs of batch {batch_id}",
            )
            page = parse_envelope(raw, batch_id=batch_id, what="(logs)")
            if not isinstance(page, list):
                raise PayloadError(
                    f"expected a list, got {type_name(page)}", batch_id=batch_id, field="logs"
                )
            ids = {str(e.get("id")) for e in page if isinstance(e, Mapping)}
            if not page or ids <= seen:
                return entries
            seen |= ids
            entries.extend(page)
            skip += len(page)

    def _calls(self, batch_id: str, get: _Get) -> list[Mapping[str, Any]]:
        """Every call of the batch, ascending, deduplicated by call id; PayloadError when
        fewer arrive than ``total_count`` says (a partial set must not pass for the whole)."""
        limit = max(1, min(self.calls_page_size, CALLS_PAGE_MAX))
        calls: dict[str, Mapping[str, Any]] = {}
        total: int | None = None
        start = 0
        while True:
            raw = get(
                "/v1/calls",
                {"batch_id": batch_id, "ascending": "true", "from": start,
                 "to": start + limit, "limit": limit},
                f"the calls of batch {batch_id}",
            )  # fmt: skip
            page, page_total = parse_calls_page(raw, batch_id=batch_id)
            total = page_total if page_total is not None else total
            new = 0
            for index, entry in enumerate(page):
                call_id = _call_id(entry)
                if call_id is None:
                    raise PayloadError(
                        "missing (neither call_id nor c_id)",
                        batch_id=batch_id,
                        field=f"calls[{start + index}].call_id",
                    )
                new += call_id not in calls
                calls[call_id] = entry
            # A short page ends the list; so does a full one that brought every call the
            # total_count announced (a batch of exactly 1,000 calls is one request).
            if len(page) < limit or new == 0 or (total is not None and len(calls) >= total):
                break
            start += len(page)
        if total is not None and len(calls) < total:
            raise PayloadError(
                f"the calls list gave {len(calls)} calls where its total_count says {total}; "
                "a partial set of calls is not stored",
                batch_id=batch_id,
                field="total_count",
            )
        return list(calls.values())

    def fetch_with_details(
        self,
        source: BatchSource,
        batch_id: str,
        parts: Parts,
        *,
        unchanged: Unchanged | None = None,
    ) -> FetchedBatch:
        """A batch from another source (v1) with each call's detail added (--call-details).

        The batch's own transcripts stay; the detail fills price, summary, recording_url and
        the other detail columns. The content hash covers the batch and every detail. A body
        large enough to be spooled gets its details as the writer parses it, a chunk of
        calls at a time (see :class:`DetailedBody`).
        """
        fetched = source.fetch_batch(batch_id, parts)
        if fetched.body is not None:
            return self._spooled_with_details(fetched, batch_id, unchanged)
        parsed = None if fetched.parsed is None else decoded(fetched.parsed)  # records needed
        if parsed is None or parsed.calls is None:
            return fetched

        def fetch(path: str, params: dict[str, Any], what: str) -> bytes:
            try:
                return self.http.get_body(path, params, what=what, batch_id=batch_id)
            except BatchNotFound as exc:
                raise HttpStatusError(str(exc), status_code=404) from None

        digest = hashlib.sha256(f"details {fetched.content_sha256}".encode())
        size = fetched.size
        echoed = fetched.echoes_secret
        bodies = self._details(batch_id, [{"call_id": c.call_id} for c in parsed.calls], fetch)
        for body in bodies.values():
            digest.update(len(body).to_bytes(8, "big") + body)
            size += len(body)
            echoed = echoed or echoes_secret(body)
        content_sha256 = digest.hexdigest()
        if unchanged is not None and unchanged(content_sha256):
            return FetchedBatch(None, content_sha256, size)
        synced_at = self.clock()
        calls = [
            with_detail(
                call,
                decode_json_body(
                    bodies[call.call_id], batch_id=batch_id, what=f"(call {call.call_id})"
                ),
                batch_id=batch_id,
                details_synced_at=synced_at,
            )
            for call in parsed.calls
        ]
        return FetchedBatch(
            parsed._replace(calls=calls), content_sha256, size, echoes_secret=echoed
        )

    def _spooled_with_details(
        self, fetched: FetchedBatch, batch_id: str, unchanged: Unchanged | None
    ) -> FetchedBatch:
        """A large body saved unparsed, whose calls get their detail as the writer parses
        them, a chunk at a time (each chunk's details fetched concurrently, bounded).

        The details are fetched inside the batch's write, so a failed detail request fails
        the batch whole, as for a small body. The content hash covers the body only (the
        details are not fetched yet when it is judged): an unchanged body leaves the stored
        details as they are, until --refresh.
        """
        assert fetched.body is not None
        digest = hashlib.sha256(f"details spooled {fetched.content_sha256}".encode())
        content_sha256 = digest.hexdigest()
        if unchanged is not None and unchanged(content_sha256):
            fetched.body.close()
            return FetchedBatch(None, content_sha256, fetched.size)

        def fetch(path: str, params: dict[str, Any], what: str) -> bytes:
            try:
                return self.http.get_body(path, params, what=what, batch_id=batch_id)
            except BatchNotFound as exc:
                raise HttpStatusError(str(exc), status_code=404) from None

        def attach(calls: list[CallRecord]) -> tuple[list[CallRecord], bool]:
            bodies = self._details(batch_id, [{"call_id": c.call_id} for c in calls], fetch)
            synced_at = self.clock()
            echoed = any(echoes_secret(body) for body in bodies.values())
            return [
                with_detail(
                    call,
                    decode_json_body(
                        bodies[call.call_id], batch_id=batch_id, what=f"(call {call.call_id})"
                    ),
                    batch_id=batch_id,
                    details_synced_at=synced_at,
                )
                for call in calls
            ], echoed

        body = DetailedBody(fetched.body, attach)
        return fetched._replace(content_sha256=content_sha256, body=body)

    def _details(
        self, batch_id: str, calls: Sequence[Mapping[str, Any]], fetch: _Get
    ) -> dict[str, bytes]:
        """Each call's detail body in the calls' order, fetched concurrently (bounded); the
        first failure fails the batch."""
        ids = [call_id for call in calls if (call_id := _call_id(call)) is not None]

        def one(call_id: str) -> bytes:
            body: bytes = fetch(
                f"/v1/calls/{batch_path_segment(call_id)}",
                {},
                f"call {call_id} of batch {batch_id}",
            )
            return body

        if len(ids) <= 1 or self.detail_concurrency <= 1:
            return {call_id: one(call_id) for call_id in ids}
        with ThreadPoolExecutor(
            min(self.detail_concurrency, len(ids)), thread_name_prefix="batchsync-detail"
        ) as executor:
            futures = [executor.submit(one, call_id) for call_id in ids]
            try:
                return {
                    call_id: future.result() for call_id, future in zip(ids, futures, strict=True)
                }
            finally:
                for future in futures:
                    future.cancel()


_Get = Callable[..., Any]


class DetailedBody(SpooledBody):
    """A spooled v1 body whose calls get each call's detail as it is parsed: chunk by chunk
    when parsed into a sink, all at once otherwise.

    ``attach``: the calls with their details, and whether any detail body may quote the
    API key (then ``echoes_secret`` turns true, before the chunk reaches the sink).
    """

    def __init__(
        self,
        body: SpooledBody,
        attach: Callable[[list[CallRecord]], tuple[list[CallRecord], bool]],
    ) -> None:
        # Not SpooledBody.__init__: the file is the wrapped body's, read through it.
        self._body = body
        self._attach_details = attach
        self.batch_id = body.batch_id
        self.transcripts_requested = body.transcripts_requested
        self.chunk_calls = body.chunk_calls

    def chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        return self._body.chunks(size)

    def parse(self, on_calls: CallsSink | None = None) -> ParsedBatch:
        """The body's records, each call with its detail; see :meth:`SpooledBody.parse`."""
        if on_calls is None:
            parsed = self._body.parse(None)
        else:
            sink = on_calls

            def detailed(
                calls: list[CallRecord],
                lines: list[TranscriptLineRecord] | None,
                again: frozenset[str],
            ) -> None:
                sink(self._attach(calls), lines, again)

            parsed = self._body.parse(detailed)
        if parsed.calls:
            parsed = parsed._replace(calls=self._attach(parsed.calls))
        return parsed

    def _attach(self, calls: list[CallRecord]) -> list[CallRecord]:
        detailed, echoed = self._attach_details(calls)
        self.echoes_secret = self.echoes_secret or echoed
        return detailed

    def close(self) -> None:
        self._body.close()
