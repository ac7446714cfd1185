"""v2 batches and per-call detail: batches.api_version and the v2 counts, the calls' detail
columns, and batch_logs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
RUN_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_COLUMNS = [
    ("api_version", sa.Text(), "The Bland API the batch came from: 'v1' or 'v2'."),
    ("org_id", sa.Text(), "The organisation that owns the batch (v2 user_id); NULL for v1."),
    (
        "calls_successful",
        sa.Integer(),
        "Calls that succeeded, from the v2 'complete' log entry; NULL for v1.",
    ),
    (
        "calls_failed",
        sa.Integer(),
        "Calls that failed, from the v2 'complete' log entry; NULL for v1.",
    ),
]

CALL_COLUMNS = [
    ("price", sa.Float(), "Price of the call in USD (call detail; NULL until fetched)."),
    ("summary", sa.Text(), "Bland's summary of the call (call detail)."),
    ("recording_url", sa.Text(), "Link to the recording; NULL unless recorded (call detail)."),
    ("started_at", TIMESTAMP, "When the call started (UTC; call detail)."),
    ("inbound", sa.Boolean(), "Whether the call was inbound (call detail)."),
    ("call_ended_by", sa.Text(), "Who ended the call: ASSISTANT or USER (call detail)."),
    ("pathway_id", sa.Text(), "The pathway the call followed (call detail)."),
    (
        "disposition_tag",
        sa.Text(),
        "Disposition such as COMPLETED_ACTION or NO_ANSWER (call detail).",
    ),
    ("transferred_to", sa.Text(), "Number the call was transferred to (call detail)."),
    ("variables", JSON, "The call's variables (JSON; call detail)."),
    ("metadata", JSON, "Metadata sent with the call (JSON; call detail)."),
    (
        "pathway_tags",
        JSON,
        "Pathway tags as sent: strings or {name, color} objects (JSON; call detail).",
    ),
    ("analysis", JSON, "Post-call analysis (JSON; call detail)."),
    (
        "details_synced_at",
        TIMESTAMP,
        "When the call's detail was fetched (UTC); NULL when it never was.",
    ),
]

# Existing comments that now say what they mean for v2 batches: (column, type, v1 text, text).
COMMENTS = [
    (
        "status",
        sa.Text(),
        "'in-progress' or 'completed'; NULL when the API did not say (before mid-2024).",
        (
            "v1: 'in-progress' or 'completed', NULL when the API did not say (before "
            "mid-2024). v2: 'completed' once a complete log entry exists, else the newest "
            "lifecycle state as Bland spells it (validating, in_progress, completed_partial, "
            "failed, ...)."
        ),
    ),
    (
        "label",
        sa.Text(),
        "The batch's label or description.",
        "The batch's label (v1) or description (v2).",
    ),
    (
        "base_prompt",
        sa.Text(),
        "Base prompt of the batch's calls.",
        (
            "Base prompt of the batch's calls; v2: the task of its global properties, or the "
            "whole base_prompt text when that is not a JSON object."
        ),
    ),
    (
        "call_params",
        JSON,
        "Parameters of the batch's calls (JSON).",
        (
            "Parameters of the batch's calls (JSON); v2: the global properties without task, "
            "NULL when base_prompt is not a JSON object."
        ),
    ),
    (
        "total_calls",
        sa.Integer(),
        "analysis.total_calls: all calls, completed and in progress.",
        (
            "analysis.total_calls: all calls, completed and in progress; v2: computed from "
            "the stored calls."
        ),
    ),
    (
        "completed_calls",
        sa.Integer(),
        "analysis.completed_calls.",
        "analysis.completed_calls; v2: computed, the calls with completed true.",
    ),
    (
        "in_progress_calls",
        sa.Integer(),
        "analysis.in_progress_calls.",
        (
            "analysis.in_progress_calls; v2: computed, the calls queued (new, queued, "
            "allocated, started)."
        ),
    ),
    (
        "call_length_average",
        sa.Float(),
        "Average call length in minutes.",
        "Average call length in minutes (v2: computed from the calls).",
    ),
    (
        "call_length_average_nonzero",
        sa.Float(),
        "Average call length in minutes, excluding calls under one second.",
        "Average call length in minutes, excluding calls under one second (v2: computed).",
    ),
]
TABLE_COMMENTS = [
    (
        "queue_status_counts",
        "Number of calls of a batch in each queue status (analysis).",
        (
            "Number of calls of a batch in each queue status (v1: analysis; v2: derived from "
            "the calls)."
        ),
    ),
    (
        "errors",
        "Error messages of a batch's calls (analysis.error_messages).",
        (
            "Error messages of a batch's calls (v1: analysis.error_messages; v2: one row per "
            "call with an error_message)."
        ),
    ),
]


def _comment(old: bool) -> None:
    # Only PostgreSQL stores comments; on SQLite an altered column would copy the table.
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, type_, before, after in COMMENTS:
        op.alter_column(
            "batches",
            name,
            existing_type=type_,
            existing_nullable=True,
            comment=before if old else after,
            existing_comment=after if old else before,
        )
    for table, before, after in TABLE_COMMENTS:
        op.create_table_comment(table, before if old else after)


API_VERSION_COMMENT = "The API the batch came from: 'v1' or 'v2'."


def _views_0002() -> ModuleType:
    """Revision 0002, for the view definitions and comments this revision extends."""
    path = Path(__file__).with_name("0002_analyst_views.py")
    spec = importlib.util.spec_from_file_location("batchsync_revision_0002", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _create_views_with_api_version() -> None:
    """batch_outcomes and calls_with_batch as in 0002, with the batch's api_version."""
    views = _views_0002()
    op.execute("DROP VIEW IF EXISTS calls_with_batch")
    op.execute("DROP VIEW IF EXISTS batch_outcomes")
    op.execute(
        f"""
        CREATE VIEW batch_outcomes AS
        SELECT b.batch_id, b.label, b.campaign_id, b.status, b.api_version, b.created_at,
               {views._outcomes("c")},
               (SELECT count(*) FROM errors e WHERE e.batch_id = b.batch_id) AS error_messages
        FROM batches b
        LEFT JOIN calls c ON c.batch_id = b.batch_id
        GROUP BY b.batch_id, b.label, b.campaign_id, b.status, b.api_version, b.created_at
        """
    )
    op.execute(
        """
        CREATE VIEW calls_with_batch AS
        SELECT c.call_id, c.batch_id, b.label AS batch_label, b.campaign_id,
               b.status AS batch_status, b.api_version, b.created_at AS batch_created_at,
               c.created_at, c.to_number, c.from_number, c.completed, c.call_length,
               c.answered_by, c.status, c.queue_status, c.error_message,
               c.corrected_duration, c.end_at, c.endpoint_url
        FROM calls c
        JOIN batches b ON b.batch_id = c.batch_id
        """
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    literal = views._literal
    for view in ("batch_outcomes", "calls_with_batch"):
        op.execute(f"COMMENT ON VIEW {view} IS {literal(views.VIEW_COMMENTS[view])}")
        columns = {**views.OTHER_COLUMN_COMMENTS[view], "api_version": API_VERSION_COMMENT}
        if view == "batch_outcomes":
            columns.update(views.COLUMN_COMMENTS)
        for column, text in columns.items():
            op.execute(f"COMMENT ON COLUMN {view}.{column} IS {literal(text)}")


def _restore_views_0002() -> None:
    views = _views_0002()
    views.downgrade()
    views.upgrade()


def upgrade() -> None:
    # Adding nullable columns needs no table copy on SQLite: batch mode emits ALTER TABLE.
    with op.batch_alter_table("batches", schema=None) as batch_op:
        for name, type_, comment in BATCH_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True, comment=comment))
    with op.batch_alter_table("calls", schema=None) as batch_op:
        for name, type_, comment in CALL_COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True, comment=comment))
    op.execute("UPDATE batches SET api_version = 'v1'")
    op.create_table(
        "batch_logs",
        sa.Column("batch_id", sa.Text(), nullable=False, comment="The batch."),
        sa.Column("log_id", sa.Text(), nullable=False, comment="The entry's id in Bland."),
        sa.Column(
            "event_type",
            sa.Text(),
            nullable=True,
            comment="lifecycle or complete (others kept as sent).",
        ),
        sa.Column("timestamp", TIMESTAMP, nullable=True, comment="When the event happened (UTC)."),
        sa.Column(
            "payload",
            JSON,
            nullable=True,
            comment="The event as sent (JSON): message and state_change, or the call counts.",
        ),
        sa.Column(
            "synced_at",
            TIMESTAMP,
            nullable=False,
            comment="When this row's current values were written (UTC).",
        ),
        sa.Column(
            "sync_run_id",
            RUN_ID,
            nullable=False,
            comment="The sync_runs.id of the run that wrote this row.",
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.batch_id"],
            name=op.f("fk_batch_logs_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "log_id", name=op.f("pk_batch_logs")),
        comment="The log entries of a v2 batch (lifecycle and complete events).",
    )
    _comment(old=False)
    _create_views_with_api_version()


def downgrade() -> None:
    _comment(old=True)
    _restore_views_0002()
    op.drop_table("batch_logs")
    # The analyst views read these tables: drop the columns in place (SQLite 3.35+) rather
    # than copy the tables, which a view over them would forbid.
    with op.batch_alter_table("calls", schema=None, recreate="never") as batch_op:
        for name, _, _ in reversed(CALL_COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table("batches", schema=None, recreate="never") as batch_op:
        for name, _, _ in reversed(BATCH_COLUMNS):
            batch_op.drop_column(name)
