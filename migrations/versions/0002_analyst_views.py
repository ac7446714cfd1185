"""Analyst views: batch_outcomes, daily_call_outcomes, calls_with_batch.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _outcomes(calls: str) -> str:
    """The outcome columns shared by the per-batch and per-day views."""
    c = calls
    return f"""
        count({c}.call_id) AS calls,
        coalesce(sum(CASE WHEN {c}.completed THEN 1 ELSE 0 END), 0) AS completed_calls,
        coalesce(sum(CASE WHEN {c}.answered_by = 'human' THEN 1 ELSE 0 END), 0)
            AS answered_human,
        coalesce(sum(CASE WHEN {c}.answered_by = 'voicemail' THEN 1 ELSE 0 END), 0)
            AS answered_voicemail,
        coalesce(sum(CASE WHEN {c}.answered_by = 'no-answer' THEN 1 ELSE 0 END), 0)
            AS no_answer,
        coalesce(sum(CASE WHEN {c}.call_id IS NOT NULL
                           AND ({c}.answered_by = 'unknown' OR {c}.answered_by IS NULL)
                          THEN 1 ELSE 0 END), 0) AS answered_unknown,
        coalesce(sum(CASE WHEN {c}.error_message IS NOT NULL THEN 1 ELSE 0 END), 0)
            AS failed_calls,
        CAST(sum(CASE WHEN {c}.completed THEN 1 ELSE 0 END) AS FLOAT)
            / NULLIF(count({c}.call_id), 0) AS completion_rate,
        CAST(coalesce(sum({c}.call_length), 0) AS FLOAT) AS total_minutes,
        CAST(avg({c}.call_length) AS FLOAT) AS average_minutes"""


def _day(column: str) -> str:
    if op.get_bind().dialect.name == "postgresql":
        return f"CAST({column} AT TIME ZONE 'UTC' AS DATE)"
    return f"date({column})"  # SQLite stores UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'


VIEW_COMMENTS = {
    "batch_outcomes": "One row per batch: how its calls went (answered by whom, completion, "
    "minutes).",
    "daily_call_outcomes": "One row per day (UTC, by call created_at): how that day's calls went.",
    "calls_with_batch": "Every call with its batch's label, campaign and status: the usual "
    "join, ready.",
}

COLUMN_COMMENTS = {
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

OTHER_COLUMN_COMMENTS = {
    "batch_outcomes": {
        "batch_id": "The batch.",
        "label": "The batch's label.",
        "campaign_id": "The batch's campaign.",
        "status": "The batch's status.",
        "created_at": "When the batch was created (UTC).",
        "error_messages": "Rows of the batch in errors.",
    },
    "daily_call_outcomes": {"day": "Day the calls were created (UTC)."},
    "calls_with_batch": {
        "call_id": "The call.",
        "batch_id": "Its batch.",
        "batch_label": "The batch's label.",
        "campaign_id": "The batch's campaign.",
        "batch_status": "The batch's status.",
        "batch_created_at": "When the batch was created (UTC).",
        "created_at": "When the call was created (UTC).",
        "to_number": "Phone number called.",
        "from_number": "Phone number called from.",
        "completed": "Whether the call completed.",
        "call_length": "Duration in minutes.",
        "answered_by": "human, voicemail, unknown, no-answer, or NULL.",
        "status": "The call's status.",
        "queue_status": "The call's queue status.",
        "error_message": "Why the call failed, if it did.",
        "corrected_duration": "Duration in whole seconds.",
        "end_at": "When the call ended (UTC).",
        "endpoint_url": "Endpoint the call was made through.",
    },
}


def upgrade() -> None:
    op.execute(
        f"""
        CREATE VIEW batch_outcomes AS
        SELECT b.batch_id, b.label, b.campaign_id, b.status, b.created_at,
               {_outcomes("c")},
               (SELECT count(*) FROM errors e WHERE e.batch_id = b.batch_id) AS error_messages
        FROM batches b
        LEFT JOIN calls c ON c.batch_id = b.batch_id
        GROUP BY b.batch_id, b.label, b.campaign_id, b.status, b.created_at
        """
    )
    op.execute(
        f"""
        CREATE VIEW daily_call_outcomes AS
        SELECT {_day("c.created_at")} AS day,
               {_outcomes("c")}
        FROM calls c
        WHERE c.created_at IS NOT NULL
        GROUP BY {_day("c.created_at")}
        """
    )
    op.execute(
        """
        CREATE VIEW calls_with_batch AS
        SELECT c.call_id, c.batch_id, b.label AS batch_label, b.campaign_id,
               b.status AS batch_status, b.created_at AS batch_created_at,
               c.created_at, c.to_number, c.from_number, c.completed, c.call_length,
               c.answered_by, c.status, c.queue_status, c.error_message,
               c.corrected_duration, c.end_at, c.endpoint_url
        FROM calls c
        JOIN batches b ON b.batch_id = c.batch_id
        """
    )
    if op.get_bind().dialect.name == "postgresql":
        for view, comment in VIEW_COMMENTS.items():
            op.execute(f"COMMENT ON VIEW {view} IS {_literal(comment)}")
            columns = dict(OTHER_COLUMN_COMMENTS[view])
            if view != "calls_with_batch":
                columns.update(COLUMN_COMMENTS)
            for column, text in columns.items():
                op.execute(f"COMMENT ON COLUMN {view}.{column} IS {_literal(text)}")


def downgrade() -> None:
    for view in ("calls_with_batch", "daily_call_outcomes", "batch_outcomes"):
        op.execute(f"DROP VIEW IF EXISTS {view}")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
