"""The typed records: the one contract between the sources of batches and the store.

Every source (the v1 batches API, the v2 batches and calls API) parses its payloads into
these records; :mod:`batchsync.store` writes them. They are plain named tuples in
table-column order, so the store can hand them to the database driver without another copy.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from batchsync.encoded import EncodedBatch

JsonObject = dict[str, Any]


# The statuses of a v2 batch after which it changes no more: its newest lifecycle state, or
# "completed" once its logs hold a complete event (Bland v2 notes, GET /v2/batches/{id}/logs).
V2_FINAL_BATCH_STATUSES = frozenset({"completed", "completed_partial", "failed"})


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
    # The API the batch came from; the v2 fields are NULL for v1 batches.
    api_version: str = "v1"
    org_id: str | None = None
    calls_successful: int | None = None
    calls_failed: int | None = None


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
    # Per-call detail (GET /v1/calls/{id}); None until the detail is fetched.
    price: float | None = None
    summary: str | None = None
    recording_url: str | None = None
    started_at: datetime | None = None
    inbound: bool | None = None
    call_ended_by: str | None = None
    pathway_id: str | None = None
    disposition_tag: str | None = None
    transferred_to: str | None = None
    variables: Any = None
    metadata: Any = None
    pathway_tags: Any = None
    analysis: Any = None
    details_synced_at: datetime | None = None


class BatchLogRecord(NamedTuple):
    """One entry of a v2 batch's logs."""

    batch_id: str
    log_id: str
    event_type: str | None
    timestamp: datetime | None
    payload: Any


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
    logs: list[BatchLogRecord] | None = None  # v2 batches only
    # Calls whose detail was not fetched this time (call id -> column names): those columns
    # keep their stored values where the stored call has a detail (``details_synced_at``).
    # Merged as the batch is written, after the phone-number policy, since the stored row
    # is already under it.
    carried: dict[str, frozenset[str]] | None = None
    # Set by a parser process that encoded the calls and lines as driver rows
    # (batchsync.encoded): ``calls`` and ``transcripts`` are then None, and this holds them.
    encoded: EncodedBatch | None = None


class StoredCalls(NamedTuple):
    """A batch's stored calls and their transcript lines, as the records they were written from."""

    calls: dict[str, CallRecord]
    lines: dict[str, list[TranscriptLineRecord]]


class BatchSummary(NamedTuple):
    """One entry of the batch list (discovery)."""

    batch_id: str
    created_at: datetime | None
    campaign_id: str | None
    label: str | None
    # Why the entry cannot be used (a created_at or label that cannot be read): the batch
    # is then recorded as failed with this reason, without being fetched.
    error: str | None = None
