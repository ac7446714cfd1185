"""calls.batch_id without a database foreign key: batchsync's writes keep it.

The foreign key made the database check every inserted call against batches (a trigger per
row on PostgreSQL), about 9% of a first load; a batch's row and its calls are written in one
transaction and ``purge`` deletes calls explicitly, as call_transcripts.call_id already is.

Downgrade restores the foreign key (ON DELETE CASCADE). It refuses, changing nothing, while
calls whose batch has no row exist: the constraint could not hold, and deleting calls is a
decision for a person (the message says which statement would do it).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEY = "fk_calls_batch_id_batches"
ORPHANS = "FROM calls WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.batch_id = calls.batch_id)"
COMMENT = "The batch the call belongs to."
COMMENT_WITHOUT_KEY = (
    "The batch the call belongs to (kept consistent by batchsync's writes; "
    "not a database foreign key, which would slow every load)."
)


def _comment(text: str, before: str) -> None:
    # Only PostgreSQL stores comments; on SQLite an altered column would copy the table.
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column(
        "calls",
        "batch_id",
        existing_type=sa.Text(),
        existing_nullable=False,
        comment=text,
        existing_comment=before,
    )


def _saved_sqlite_views() -> list[str]:
    """Drop every view on SQLite and return the statements that recreate them.

    SQLite copies a table to change its constraints, and renaming the copy fails while a
    view names the table; the views come back unchanged once the copy is in place.
    """
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return []
    views = bind.execute(
        sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'view' ORDER BY rowid")
    ).all()
    for name, _ in views:
        op.execute(f'DROP VIEW "{name}"')
    return [sql for _, sql in views]


def _restore_sqlite_views(statements: list[str]) -> None:
    for sql in statements:
        op.get_bind().exec_driver_sql(sql)  # as stored: no text() reading ':x' as a parameter


def upgrade() -> None:
    views = _saved_sqlite_views()
    # On PostgreSQL this is one ALTER TABLE; on SQLite a copy of calls that keeps its
    # primary key and indexes (batch mode reflects and recreates them).
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_constraint(FOREIGN_KEY, type_="foreignkey")
    _restore_sqlite_views(views)
    _comment(COMMENT_WITHOUT_KEY, before=COMMENT)


def downgrade() -> None:
    orphans = op.get_bind().execute(sa.text(f"SELECT count(*) {ORPHANS}")).scalar_one()
    if orphans:
        raise CommandError(
            "cannot restore the foreign key from calls.batch_id to batches while calls "
            f"without a stored batch remain ({orphans}); delete them first (DELETE FROM "
            f"call_transcripts WHERE call_id IN (SELECT call_id {ORPHANS}); DELETE {ORPHANS}) "
            "or stay at 0004"
        )
    _comment(COMMENT, before=COMMENT_WITHOUT_KEY)
    views = _saved_sqlite_views()
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.create_foreign_key(
            FOREIGN_KEY, "batches", ["batch_id"], ["batch_id"], ondelete="CASCADE"
        )
    _restore_sqlite_views(views)
