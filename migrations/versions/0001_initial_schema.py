"""Initial schema: batches, calls, call_transcripts, queue_status_counts, errors, sync_runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL (comparable, indexable), JSON text on SQLite.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
RUN_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("batch_id", sa.Text(), nullable=False, comment="Bland's batch id."),
        sa.Column(
            "status",
            sa.Text(),
            nullable=True,
            comment="'in-progress' or 'completed'; NULL when the API did not say (before mid-2024).",
        ),
        sa.Column("label", sa.Text(), nullable=True, comment="The batch's label or description."),
        sa.Column(
            "base_prompt", sa.Text(), nullable=True, comment="Base prompt of the batch's calls."
        ),
        sa.Column(
            "endpoint_code", sa.Text(), nullable=True, comment="Endpoint code (API integrations)."
        ),
        sa.Column(
            "campaign_id", sa.Text(), nullable=True, comment="Campaign the batch belongs to."
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the batch was created (UTC).",
        ),
        sa.Column(
            "call_params", JSON, nullable=True, comment="Parameters of the batch's calls (JSON)."
        ),
        sa.Column(
            "total_calls",
            sa.Integer(),
            nullable=True,
            comment="analysis.total_calls: all calls, completed and in progress.",
        ),
        sa.Column(
            "completed_calls", sa.Integer(), nullable=True, comment="analysis.completed_calls."
        ),
        sa.Column(
            "in_progress_calls", sa.Integer(), nullable=True, comment="analysis.in_progress_calls."
        ),
        sa.Column(
            "call_length_average",
            sa.Float(),
            nullable=True,
            comment="Average call length in minutes.",
        ),
        sa.Column(
            "call_length_average_nonzero",
            sa.Float(),
            nullable=True,
            comment="Average call length in minutes, excluding calls under one second.",
        ),
        sa.Column(
            "call_length_summary",
            JSON,
            nullable=True,
            comment="Number of calls per length range, as the API groups them (JSON).",
        ),
        sa.Column(
            "endpoints",
            JSON,
            nullable=True,
            comment="Number of calls sent to each endpoint (JSON, counts as numbers).",
        ),
        sa.Column(
            "extra",
            JSON,
            nullable=True,
            comment="Fields of the response that batchsync does not model, kept as sent (JSON).",
        ),
        sa.Column(
            "content_sha256",
            sa.Text(),
            nullable=True,
            comment="Hash of the batch's normalized content, to skip unchanged re-syncs.",
        ),
        sa.Column(
            "fetched_parts",
            sa.Text(),
            nullable=True,
            comment="Parts of the batch the last write included: calls, transcripts, analysis.",
        ),
        sa.Column(
            "phone_numbers",
            sa.Text(),
            nullable=True,
            comment="How phone numbers were stored by the last write: keep, hash:<key id>, drop.",
        ),
        sa.Column(
            "synced_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When this row's current values were written (UTC).",
        ),
        sa.Column(
            "sync_run_id",
            RUN_ID,
            nullable=False,
            comment="The sync_runs.id of the run that wrote this row.",
        ),
        sa.PrimaryKeyConstraint("batch_id", name=op.f("pk_batches")),
        comment="One row per Bland batch: its settings and aggregate analysis.",
    )
    op.create_table(
        "sync_runs",
        sa.Column("id", RUN_ID, autoincrement=True, nullable=False, comment="Run id."),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When the run started (UTC).",
        ),
        sa.Column(
            "finished_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the run ended (UTC); NULL while running or if the process died.",
        ),
        sa.Column(
            "status",
            sa.Text(),
            nullable=False,
            comment="running, succeeded, partial (some batches failed), failed, interrupted, or abandoned (the process died without recording an outcome).",
        ),
        sa.Column(
            "options", JSON, nullable=False, comment="The run's options (JSON; never the API key)."
        ),
        sa.Column(
            "batches_synced",
            sa.Integer(),
            nullable=False,
            comment="Batches written (changed or new).",
        ),
        sa.Column(
            "batches_unchanged",
            sa.Integer(),
            nullable=False,
            comment="Batches fetched whose content had not changed.",
        ),
        sa.Column(
            "batches_skipped",
            sa.Integer(),
            nullable=False,
            comment="Batches not fetched (completed and already synced).",
        ),
        sa.Column("batches_failed", sa.Integer(), nullable=False, comment="Batches that failed."),
        sa.Column("error", sa.Text(), nullable=True, comment="Why the run failed, if it did."),
        sa.Column("batchsync_version", sa.Text(), nullable=False, comment="Version of batchsync."),
        sa.Column(
            "host", sa.Text(), nullable=True, comment="Host name of the process that ran it."
        ),
        sa.Column("pid", sa.Integer(), nullable=True, comment="Process id of the run on its host."),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
        comment="One row per `batchsync sync` run.",
    )
    op.create_table(
        "calls",
        sa.Column(
            "call_id",
            sa.Text(),
            nullable=False,
            comment="Bland's call id (call_id, or c_id before Feb 2024).",
        ),
        sa.Column("batch_id", sa.Text(), nullable=False, comment="The batch the call belongs to."),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the call was created (UTC).",
        ),
        sa.Column("to_number", sa.Text(), nullable=True, comment="Phone number called."),
        sa.Column("from_number", sa.Text(), nullable=True, comment="Phone number called from."),
        sa.Column("completed", sa.Boolean(), nullable=True, comment="Whether the call completed."),
        sa.Column("call_length", sa.Float(), nullable=True, comment="Duration in minutes."),
        sa.Column(
            "answered_by",
            sa.Text(),
            nullable=True,
            comment="human, voicemail, unknown, no-answer, or NULL (needs answered_by_enabled).",
        ),
        sa.Column("status", sa.Text(), nullable=True, comment="The call's status."),
        sa.Column(
            "queue_status",
            sa.Text(),
            nullable=True,
            comment="Queue status; 'completed' is stored as the documented 'complete'.",
        ),
        sa.Column(
            "error_message", sa.Text(), nullable=True, comment="Why the call failed, if it did."
        ),
        sa.Column(
            "corrected_duration", sa.Integer(), nullable=True, comment="Duration in whole seconds."
        ),
        sa.Column(
            "end_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the call ended (UTC).",
        ),
        sa.Column(
            "endpoint_url", sa.Text(), nullable=True, comment="Endpoint the call was made through."
        ),
        sa.Column(
            "max_duration",
            sa.Float(),
            nullable=True,
            comment="Maximum allowed duration in minutes.",
        ),
        sa.Column(
            "request_data", JSON, nullable=True, comment="Request data sent with the call (JSON)."
        ),
        sa.Column(
            "extra",
            JSON,
            nullable=True,
            comment="Fields of the call that batchsync does not model, kept as sent (JSON).",
        ),
        sa.Column(
            "synced_at",
            sa.DateTime(timezone=True),
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
            name=op.f("fk_calls_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("call_id", name=op.f("pk_calls")),
        comment="One row per call of a batch.",
    )
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_calls_answered_by"), ["answered_by"], unique=False)
        batch_op.create_index(batch_op.f("ix_calls_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_calls_created_at"), ["created_at"], unique=False)

    op.create_table(
        "errors",
        sa.Column("batch_id", sa.Text(), nullable=False, comment="The batch."),
        sa.Column(
            "position",
            sa.Integer(),
            nullable=False,
            comment="Position of the message in the API's list (from 0).",
        ),
        sa.Column(
            "call_id",
            sa.Text(),
            nullable=True,
            comment="The call that failed; NULL when the API sent a bare message.",
        ),
        sa.Column("error_message", sa.Text(), nullable=False, comment="The error message."),
        sa.Column(
            "synced_at",
            sa.DateTime(timezone=True),
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
            name=op.f("fk_errors_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "position", name=op.f("pk_errors")),
        comment="Error messages of a batch's calls (analysis.error_messages).",
    )
    op.create_table(
        "queue_status_counts",
        sa.Column("batch_id", sa.Text(), nullable=False, comment="The batch."),
        sa.Column(
            "queue_status",
            sa.Text(),
            nullable=False,
            comment="Queue status ('completed' folded into 'complete').",
        ),
        sa.Column("count", sa.Integer(), nullable=False, comment="Number of calls in that status."),
        sa.Column(
            "synced_at",
            sa.DateTime(timezone=True),
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
            name=op.f("fk_queue_status_counts_batch_id_batches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "queue_status", name=op.f("pk_queue_status_counts")),
        comment="Number of calls of a batch in each queue status (analysis).",
    )
    op.create_table(
        "sync_run_batches",
        sa.Column("run_id", RUN_ID, nullable=False, comment="The run."),
        sa.Column("batch_id", sa.Text(), nullable=False, comment="The batch."),
        sa.Column(
            "status", sa.Text(), nullable=False, comment="synced, unchanged, skipped or failed."
        ),
        sa.Column("error", sa.Text(), nullable=True, comment="Why the batch failed, if it did."),
        sa.Column("calls", sa.Integer(), nullable=True, comment="Calls in the response."),
        sa.Column(
            "row_changes",
            JSON,
            nullable=True,
            comment="Rows inserted, updated and deleted per table (JSON).",
        ),
        sa.Column(
            "finished_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When the batch's outcome was recorded.",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["sync_runs.id"],
            name=op.f("fk_sync_run_batches_run_id_sync_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "batch_id", name=op.f("pk_sync_run_batches")),
        comment="The outcome of each batch in each run.",
    )
    with op.batch_alter_table("sync_run_batches", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sync_run_batches_batch_id"), ["batch_id"], unique=False
        )

    op.create_table(
        "call_transcripts",
        sa.Column(
            "call_id",
            sa.Text(),
            nullable=False,
            comment="The call the line belongs to (kept consistent by batchsync's writes; not a database foreign key, which would halve the load rate of transcripts).",
        ),
        sa.Column(
            "line_id", sa.BigInteger(), nullable=False, comment="The transcript line's id in Bland."
        ),
        sa.Column(
            "batch_id",
            sa.Text(),
            nullable=False,
            comment="The call's batch (for per-batch queries).",
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the line was spoken (UTC).",
        ),
        sa.Column(
            "speaker",
            sa.Text(),
            nullable=True,
            comment="Who spoke: user, assistant, robot or agent-action.",
        ),
        sa.Column("text", sa.Text(), nullable=True, comment="What was said."),
        sa.Column(
            "synced_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="When this row's current values were written (UTC).",
        ),
        sa.Column(
            "sync_run_id",
            RUN_ID,
            nullable=False,
            comment="The sync_runs.id of the run that wrote this row.",
        ),
        sa.PrimaryKeyConstraint("call_id", "line_id", name=op.f("pk_call_transcripts")),
        comment="One row per transcript line of a call, when transcripts were fetched.",
    )
    with op.batch_alter_table("call_transcripts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_call_transcripts_batch_id"), ["batch_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("call_transcripts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_call_transcripts_batch_id"))

    op.drop_table("call_transcripts")
    with op.batch_alter_table("sync_run_batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sync_run_batches_batch_id"))

    op.drop_table("sync_run_batches")
    op.drop_table("queue_status_counts")
    op.drop_table("errors")
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_calls_created_at"))
        batch_op.drop_index(batch_op.f("ix_calls_batch_id"))
        batch_op.drop_index(batch_op.f("ix_calls_answered_by"))

    op.drop_table("calls")
    op.drop_table("sync_runs")
    op.drop_table("batches")
