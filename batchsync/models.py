"""The database schema: SQLAlchemy 2.x tables, the analysts' contract.

Alembic (``migrations/``) owns the schema on disk; these models describe it, and a test
checks that the migrations and the models agree. Every table and column carries a
comment, stored in PostgreSQL and rendered into ``docs/schema.md``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC: timestamptz on PostgreSQL, ISO text on SQLite; read back aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        # SQLite stores the wall-clock text; make it the UTC wall clock and drop the offset.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# none_as_null: Python None is SQL NULL, never the JSON text "null".
JsonColumn = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
RunId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


def _synced_at() -> Mapped[datetime]:
    return mapped_column(
        UTCDateTime(), comment="When this row's current values were written (UTC)."
    )


def _sync_run_id() -> Mapped[int]:
    return mapped_column(RunId, comment="The sync_runs.id of the run that wrote this row.")


class Batch(Base):
    __tablename__ = "batches"
    __table_args__ = {"comment": "One row per Bland batch: its settings and aggregate analysis."}

    batch_id: Mapped[str] = mapped_column(Text, primary_key=True, comment="Bland's batch id.")
    status: Mapped[str | None] = mapped_column(
        Text,
        comment=(
            "v1: 'in-progress' or 'completed', NULL when the API did not say (before "
            "mid-2024). v2: 'completed' once a complete log entry exists, else the newest "
            "lifecycle state as Bland spells it (validating, in_progress, completed_partial, "
            "failed, ...)."
        ),
    )
    label: Mapped[str | None] = mapped_column(
        Text, comment="The batch's label (v1) or description (v2)."
    )
    base_prompt: Mapped[str | None] = mapped_column(
        Text,
        comment=(
            "Base prompt of the batch's calls; v2: the task of its global properties, or the "
            "whole base_prompt text when that is not a JSON object."
        ),
    )
    endpoint_code: Mapped[str | None] = mapped_column(
        Text, comment="Endpoint code (API integrations)."
    )
    campaign_id: Mapped[str | None] = mapped_column(Text, comment="Campaign the batch belongs to.")
    created_at: Mapped[datetime | None] = mapped_column(comment="When the batch was created (UTC).")
    call_params: Mapped[Any | None] = mapped_column(
        JsonColumn,
        comment=(
            "Parameters of the batch's calls (JSON); v2: the global properties without task, "
            "NULL when base_prompt is not a JSON object."
        ),
    )
    total_calls: Mapped[int | None] = mapped_column(
        Integer,
        comment=(
            "analysis.total_calls: all calls, completed and in progress; v2: computed from "
            "the stored calls."
        ),
    )
    completed_calls: Mapped[int | None] = mapped_column(
        Integer, comment="analysis.completed_calls; v2: computed, the calls with completed true."
    )
    in_progress_calls: Mapped[int | None] = mapped_column(
        Integer,
        comment=(
            "analysis.in_progress_calls; v2: computed, the calls queued (new, queued, "
            "allocated, started)."
        ),
    )
    call_length_average: Mapped[float | None] = mapped_column(
        Float, comment="Average call length in minutes (v2: computed from the calls)."
    )
    call_length_average_nonzero: Mapped[float | None] = mapped_column(
        Float,
        comment="Average call length in minutes, excluding calls under one second (v2: computed).",
    )
    call_length_summary: Mapped[Any | None] = mapped_column(
        JsonColumn, comment="Number of calls per length range, as the API groups them (JSON)."
    )
    endpoints: Mapped[Any | None] = mapped_column(
        JsonColumn, comment="Number of calls sent to each endpoint (JSON, counts as numbers)."
    )
    extra: Mapped[Any | None] = mapped_column(
        JsonColumn,
        comment="Fields of the response that batchsync does not model, kept as sent (JSON).",
    )
    content_sha256: Mapped[str | None] = mapped_column(
        Text, comment="Hash of the batch's normalized content, to skip unchanged re-syncs."
    )
    fetched_parts: Mapped[str | None] = mapped_column(
        Text, comment="Parts of the batch the last write included: calls, transcripts, analysis."
    )
    phone_numbers: Mapped[str | None] = mapped_column(
        Text, comment="How phone numbers were stored by the last write: keep, hash:<key id>, drop."
    )
    api_version: Mapped[str | None] = mapped_column(
        Text, comment="The Bland API the batch came from: 'v1' or 'v2'."
    )
    org_id: Mapped[str | None] = mapped_column(
        Text, comment="The organisation that owns the batch (v2 user_id); NULL for v1."
    )
    calls_successful: Mapped[int | None] = mapped_column(
        Integer, comment="Calls that succeeded, from the v2 'complete' log entry; NULL for v1."
    )
    calls_failed: Mapped[int | None] = mapped_column(
        Integer, comment="Calls that failed, from the v2 'complete' log entry; NULL for v1."
    )
    synced_at: Mapped[datetime] = _synced_at()
    sync_run_id: Mapped[int] = _sync_run_id()


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (
        Index(None, "batch_id"),
        Index(None, "created_at"),
        Index(None, "answered_by"),
        {"comment": "One row per call of a batch."},
    )

    call_id: Mapped[str] = mapped_column(
        Text, primary_key=True, comment="Bland's call id (call_id, or c_id before Feb 2024)."
    )
    batch_id: Mapped[str] = mapped_column(
        Text,
        # A batch's row and its calls are written in one transaction, and purge deletes the
        # calls explicitly; a foreign key would check every call on insert (about 9% of a
        # first load on PostgreSQL). Migration 0004 dropped it.
        info={"references": "batches.batch_id"},
        comment="The batch the call belongs to (kept consistent by batchsync's writes; "
        "not a database foreign key, which would slow every load).",
    )
    created_at: Mapped[datetime | None] = mapped_column(comment="When the call was created (UTC).")
    to_number: Mapped[str | None] = mapped_column(Text, comment="Phone number called.")
    from_number: Mapped[str | None] = mapped_column(Text, comment="Phone number called from.")
    completed: Mapped[bool | None] = mapped_column(Boolean, comment="Whether the call completed.")
    call_length: Mapped[float | None] = mapped_column(Float, comment="Duration in minutes.")
    answered_by: Mapped[str | None] = mapped_column(
        Text, comment="human, voicemail, unknown, no-answer, or NULL (needs answered_by_enabled)."
    )
    status: Mapped[str | None] = mapped_column(Text, comment="The call's status.")
    queue_status: Mapped[str | None] = mapped_column(
        Text, comment="Queue status; 'completed' is stored as the documented 'complete'."
    )
    error_message: Mapped[str | None] = mapped_column(
        Text, comment="Why the call failed, if it did."
    )
    corrected_duration: Mapped[int | None] = mapped_column(
        Integer, comment="Duration in whole seconds."
    )
    end_at: Mapped[datetime | None] = mapped_column(comment="When the call ended (UTC).")
    endpoint_url: Mapped[str | None] = mapped_column(
        Text, comment="Endpoint the call was made through."
    )
    max_duration: Mapped[float | None] = mapped_column(
        Float, comment="Maximum allowed duration in minutes."
    )
    request_data: Mapped[Any | None] = mapped_column(
        JsonColumn, comment="Request data sent with the call (JSON)."
    )
    extra: Mapped[Any | None] = mapped_column(
        JsonColumn, comment="Fields of the call that batchsync does not model, kept as sent (JSON)."
    )
    price: Mapped[float | None] = mapped_column(
        Float, comment="Price of the call in USD (call detail; NULL until fetched)."
    )
    summary: Mapped[str | None] = mapped_column(
        Text, comment="Bland's summary of the call (call detail)."
    )
    recording_url: Mapped[str | None] = mapped_column(
        Text, comment="Link to the recording; NULL unless recorded (call detail)."
    )
    started_at: Mapped[datetime | None] = mapped_column(
        comment="When the call started (UTC; call detail)."
    )
    inbound: Mapped[bool | None] = mapped_column(
        Boolean, comment="Whether the call was inbound (call detail)."
    )
    call_ended_by: Mapped[str | None] = mapped_column(
        Text, comment="Who ended the call: ASSISTANT or USER (call detail)."
    )
    pathway_id: Mapped[str | None] = mapped_column(
        Text, comment="The pathway the call followed (call detail)."
    )
    disposition_tag: Mapped[str | None] = mapped_column(
        Text, comment="Disposition such as COMPLETED_ACTION or NO_ANSWER (call detail)."
    )
    transferred_to: Mapped[str | None] = mapped_column(
        Text, comment="Number the call was transferred to (call detail)."
    )
    variables: Mapped[Any | None] = mapped_column(
        JsonColumn, comment="The call's variables (JSON; call detail)."
    )
    call_metadata: Mapped[Any | None] = mapped_column(
        "metadata", JsonColumn, comment="Metadata sent with the call (JSON; call detail)."
    )
    pathway_tags: Mapped[Any | None] = mapped_column(
        JsonColumn,
        comment="Pathway tags as sent: strings or {name, color} objects (JSON; call detail).",
    )
    analysis: Mapped[Any | None] = mapped_column(
        JsonColumn, comment="Post-call analysis (JSON; call detail)."
    )
    details_synced_at: Mapped[datetime | None] = mapped_column(
        comment="When the call's detail was fetched (UTC); NULL when it never was."
    )
    synced_at: Mapped[datetime] = _synced_at()
    sync_run_id: Mapped[int] = _sync_run_id()


class CallTranscript(Base):
    __tablename__ = "call_transcripts"
    __table_args__ = (
        Index(None, "batch_id"),
        {"comment": "One row per transcript line of a call, when transcripts were fetched."},
    )

    call_id: Mapped[str] = mapped_column(
        Text,
        primary_key=True,
        # batchsync deletes the lines of a call whenever it deletes the call; a foreign key
        # would check every line on insert and halve the load rate of transcripts.
        info={"references": "calls.call_id"},
        comment="The call the line belongs to (kept consistent by batchsync's writes; "
        "not a database foreign key, which would halve the load rate of transcripts).",
    )
    line_id: Mapped[int] = mapped_column(
        BigInteger, primary_key=True, comment="The transcript line's id in Bland."
    )
    batch_id: Mapped[str] = mapped_column(Text, comment="The call's batch (for per-batch queries).")
    created_at: Mapped[datetime | None] = mapped_column(comment="When the line was spoken (UTC).")
    speaker: Mapped[str | None] = mapped_column(
        Text, comment="Who spoke: user, assistant, robot or agent-action."
    )
    text: Mapped[str | None] = mapped_column(Text, comment="What was said.")
    synced_at: Mapped[datetime] = _synced_at()
    sync_run_id: Mapped[int] = _sync_run_id()


class BatchLog(Base):
    __tablename__ = "batch_logs"
    __table_args__ = {"comment": "The log entries of a v2 batch (lifecycle and complete events)."}

    batch_id: Mapped[str] = mapped_column(
        Text,
        ForeignKey("batches.batch_id", ondelete="CASCADE"),
        primary_key=True,
        comment="The batch.",
    )
    log_id: Mapped[str] = mapped_column(Text, primary_key=True, comment="The entry's id in Bland.")
    event_type: Mapped[str | None] = mapped_column(
        Text, comment="lifecycle or complete (others kept as sent)."
    )
    timestamp: Mapped[datetime | None] = mapped_column(comment="When the event happened (UTC).")
    payload: Mapped[Any | None] = mapped_column(
        JsonColumn,
        comment="The event as sent (JSON): message and state_change, or the call counts.",
    )
    synced_at: Mapped[datetime] = _synced_at()
    sync_run_id: Mapped[int] = _sync_run_id()


class QueueStatusCount(Base):
    __tablename__ = "queue_status_counts"
    __table_args__ = {
        "comment": (
            "Number of calls of a batch in each queue status (v1: analysis; v2: derived from "
            "the calls)."
        )
    }

    batch_id: Mapped[str] = mapped_column(
        Text,
        ForeignKey("batches.batch_id", ondelete="CASCADE"),
        primary_key=True,
        comment="The batch.",
    )
    queue_status: Mapped[str] = mapped_column(
        Text, primary_key=True, comment="Queue status ('completed' folded into 'complete')."
    )
    count: Mapped[int] = mapped_column(Integer, comment="Number of calls in that status.")
    synced_at: Mapped[datetime] = _synced_at()
    sync_run_id: Mapped[int] = _sync_run_id()


class BatchError(Base):
    __tablename__ = "errors"
    __table_args__ = {
        "comment": (
            "Error messages of a batch's calls (v1: analysis.error_messages; v2: one row per "
            "call with an error_message)."
        )
    }

    batch_id: Mapped[str] = mapped_column(
        Text,
        ForeignKey("batches.batch_id", ondelete="CASCADE"),
        primary_key=True,
        comment="The batch.",
    )
    position: Mapped[int] = mapped_column(
        Integer, primary_key=True, comment="Position of the message in the API's list (from 0)."
    )
    call_id: Mapped[str | None] = mapped_column(
        Text, comment="The call that failed; NULL when the API sent a bare message."
    )
    error_message: Mapped[str] = mapped_column(Text, comment="The error message.")
    synced_at: Mapped[datetime] = _synced_at()
    sync_run_id: Mapped[int] = _sync_run_id()


class SyncRun(Base):
    __tablename__ = "sync_runs"
    __table_args__ = {"comment": "One row per `batchsync sync` run."}

    id: Mapped[int] = mapped_column(RunId, primary_key=True, autoincrement=True, comment="Run id.")
    started_at: Mapped[datetime] = mapped_column(comment="When the run started (UTC).")
    finished_at: Mapped[datetime | None] = mapped_column(
        comment="When the run ended (UTC); NULL while running or if the process died."
    )
    status: Mapped[str] = mapped_column(
        Text,
        comment="running, succeeded, partial (some batches failed), failed, interrupted, "
        "or abandoned (the process died without recording an outcome).",
    )
    options: Mapped[Any] = mapped_column(
        JsonColumn, comment="The run's options (JSON; never the API key)."
    )
    batches_synced: Mapped[int] = mapped_column(
        Integer, default=0, comment="Batches written (changed or new)."
    )
    batches_unchanged: Mapped[int] = mapped_column(
        Integer, default=0, comment="Batches fetched whose content had not changed."
    )
    batches_skipped: Mapped[int] = mapped_column(
        Integer, default=0, comment="Batches not fetched (completed and already synced)."
    )
    batches_failed: Mapped[int] = mapped_column(Integer, default=0, comment="Batches that failed.")
    error: Mapped[str | None] = mapped_column(Text, comment="Why the run failed, if it did.")
    batchsync_version: Mapped[str] = mapped_column(Text, comment="Version of batchsync.")
    host: Mapped[str | None] = mapped_column(Text, comment="Host name of the process that ran it.")
    pid: Mapped[int | None] = mapped_column(Integer, comment="Process id of the run on its host.")


class SyncRunBatch(Base):
    __tablename__ = "sync_run_batches"
    __table_args__ = (
        Index(None, "batch_id"),
        {"comment": "The outcome of each batch in each run."},
    )

    run_id: Mapped[int] = mapped_column(
        RunId,
        ForeignKey("sync_runs.id", ondelete="CASCADE"),
        primary_key=True,
        comment="The run.",
    )
    batch_id: Mapped[str] = mapped_column(Text, primary_key=True, comment="The batch.")
    status: Mapped[str] = mapped_column(Text, comment="synced, unchanged, skipped or failed.")
    error: Mapped[str | None] = mapped_column(Text, comment="Why the batch failed, if it did.")
    calls: Mapped[int | None] = mapped_column(Integer, comment="Calls in the response.")
    row_changes: Mapped[Any | None] = mapped_column(
        JsonColumn, comment="Rows inserted, updated and deleted per table (JSON)."
    )
    finished_at: Mapped[datetime] = mapped_column(comment="When the batch's outcome was recorded.")


# -- views ------------------------------------------------------------------------------------
# The analyst views are created by migrations (0002; 0003 adds api_version); they are
# described here, outside the tables' metadata, so the schema documentation covers them and a
# test can check that the database's views have exactly these columns.

VIEWS = MetaData()

_COUNT_COMMENTS = {
    "calls": "Calls stored.",
    "completed_calls": "Calls that completed.",
    "answered_human": "Calls answered by a person (answered_by = 'human').",
    "answered_voicemail": "Calls answered by voicemail.",
    "no_answer": "Calls not answered (answered_by = 'no-answer').",
    "answered_unknown": "Calls whose answerer is unknown or was not detected (NULL).",
    "failed_calls": "Calls with an error message.",
    "completion_rate": "completed_calls / calls (0 to 1); NULL without calls.",
    "total_minutes": "Sum of call lengths, in minutes.",
    "average_minutes": "Average call length, in minutes; NULL without calls.",
}


# count(*) and sum() of counts are bigint on PostgreSQL.
ViewCount = BigInteger().with_variant(Integer(), "sqlite")


def _outcome_columns() -> list[Column[Any]]:
    types: dict[str, Any] = {"completion_rate": Float, "total_minutes": Float}
    types["average_minutes"] = Float
    return [
        Column(name, types.get(name, ViewCount), comment=comment)
        for name, comment in _COUNT_COMMENTS.items()
    ]


Table(
    "batch_outcomes",
    VIEWS,
    Column("batch_id", Text, comment="The batch."),
    Column("label", Text, comment="The batch's label."),
    Column("campaign_id", Text, comment="The batch's campaign."),
    Column("status", Text, comment="The batch's status."),
    Column("api_version", Text, comment="The API the batch came from: 'v1' or 'v2'."),
    Column("created_at", UTCDateTime(), comment="When the batch was created (UTC)."),
    *_outcome_columns(),
    Column("error_messages", ViewCount, comment="Rows of the batch in errors."),
    comment="One row per batch: how its calls went (answered by whom, completion, minutes).",
)

Table(
    "daily_call_outcomes",
    VIEWS,
    Column("day", Date, comment="Day the calls were created (UTC)."),
    *_outcome_columns(),
    comment="One row per day (UTC, by call created_at): how that day's calls went.",
)

Table(
    "calls_with_batch",
    VIEWS,
    Column("call_id", Text, comment="The call."),
    Column("batch_id", Text, comment="Its batch."),
    Column("batch_label", Text, comment="The batch's label."),
    Column("campaign_id", Text, comment="The batch's campaign."),
    Column("batch_status", Text, comment="The batch's status."),
    Column("api_version", Text, comment="The API the batch came from: 'v1' or 'v2'."),
    Column("batch_created_at", UTCDateTime(), comment="When the batch was created (UTC)."),
    Column("created_at", UTCDateTime(), comment="When the call was created (UTC)."),
    Column("to_number", Text, comment="Phone number called."),
    Column("from_number", Text, comment="Phone number called from."),
    Column("completed", Boolean, comment="Whether the call completed."),
    Column("call_length", Float, comment="Duration in minutes."),
    Column("answered_by", Text, comment="human, voicemail, unknown, no-answer, or NULL."),
    Column("status", Text, comment="The call's status."),
    Column("queue_status", Text, comment="The call's queue status."),
    Column("error_message", Text, comment="Why the call failed, if it did."),
    Column("corrected_duration", Integer, comment="Duration in whole seconds."),
    Column("end_at", UTCDateTime(), comment="When the call ended (UTC)."),
    Column("endpoint_url", Text, comment="Endpoint the call was made through."),
    comment="Every call with its batch's label, campaign and status: the usual join, ready.",
)
