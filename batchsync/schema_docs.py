"""Render the schema, tables and views with every column described, as Markdown.

``docs/schema.md`` is this module's output (``batchsync db docs > docs/schema.md``); a test
fails when the file and the models disagree.
"""

from __future__ import annotations

from sqlalchemy import Column, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.type_api import TypeEngine

from batchsync.models import VIEWS, Base

_PG = postgresql.dialect()  # type: ignore[no-untyped-call]
_SQLITE = sqlite.dialect()

_INTRO = """# The batchsync schema

Generated from `batchsync/models.py` by `batchsync db docs`; do not edit by hand.
The same descriptions are stored as comments in PostgreSQL (`\\d+ calls` in psql).

Timestamps are UTC: `timestamptz` on PostgreSQL, ISO text (`YYYY-MM-DD HH:MM:SS.ffffff`) on
SQLite. JSON columns are `jsonb` on PostgreSQL and JSON text on SQLite; integers in them keep
every digit, and whole numbers written with an exponent read back as integers on both. The NUL
character and lone UTF-16 surrogates, which PostgreSQL cannot store, are stored as U+FFFD in
every text and JSON column (keys included), on both databases alike. Every data table
carries `synced_at` and `sync_run_id`: when the row's current values were written and by which
run (see `sync_runs`); an unchanged row keeps them across re-syncs.

Batches of both Bland APIs share these tables; `batches.api_version` says which API a batch came
from. Bland's v2 API sends no analysis: for v2 batches the counts and averages in `batches`, the
rows of `queue_status_counts` and those of `errors` are computed from the batch's calls, and the
status comes from its logs (kept in `batch_logs`). The calls' detail columns (`price` to
`details_synced_at`) are filled from `GET /v1/calls/{id}`: for v2 calls unless
`--no-call-details`, for v1 calls with `--call-details` (otherwise they stay NULL). The
detail wins over the calls list for these columns: a fetched detail fills them whatever the
list entry says (the list sends `pathway_tags` as bare names where the detail may send
`{name, color}` objects), a list entry's value for one of them never causes the detail to be
fetched again, and a `--no-call-details` run keeps a stored detail's values. A v2 call whose
detail was never fetched holds the list entry's values for the detail fields the list
carries (such as `pathway_tags`), with `details_synced_at` NULL, until a detail replaces
them. Two v2 fields are not stored: a batch's `call_objects` (a preview of its calls, which
`calls` holds in full) and a call's `concatenated_transcript` (the lines of
`call_transcripts` joined).
"""


def render_schema_markdown() -> str:
    """The whole schema as Markdown: each table and view, its columns, types and meaning."""
    parts = [_INTRO, "## Tables\n"]
    parts += [_render(table, view=False) for table in Base.metadata.sorted_tables]
    parts.append("## Views\n")
    parts += [_render(view, view=True) for view in VIEWS.tables.values()]
    return "\n".join(parts).rstrip() + "\n"


def _render(table: Table, *, view: bool) -> str:
    lines = [f"### `{table.name}`{' (view)' if view else ''}", "", table.comment or "", ""]
    if not view:
        keys = ", ".join(f"`{c.name}`" for c in table.primary_key.columns)
        lines += [f"Primary key: {keys}.", ""]
        references = _references(table)
        lines += references
        if references:
            lines.append("")
        indexed = sorted(", ".join(c.name for c in ix.columns) for ix in table.indexes)
        if indexed:
            lines += ["Indexed: " + "; ".join(f"`{cols}`" for cols in indexed) + ".", ""]
    lines += ["| column | PostgreSQL | SQLite | null | meaning |", "|---|---|---|---|---|"]
    for column in table.columns:
        lines.append(
            f"| `{column.name}` | {_type(column.type, _PG)} | {_type(column.type, _SQLITE)} "
            f"| {_nullable(column, view)} | {_escape(column.comment or '')} |"
        )
    return "\n".join(lines) + "\n"


def _references(table: Table) -> list[str]:
    """One sentence per column that refers to another table's key, in column order: the
    database's foreign keys, and the references batchsync keeps itself (a column's
    ``info["references"]``, "table.column")."""
    lines = []
    for column in table.columns:
        for fk in sorted(column.foreign_keys, key=lambda fk: fk.target_fullname):
            lines.append(
                f"`{column.name}` references `{fk.target_fullname}` "
                "(deleting the parent deletes these rows)."
            )
        kept = column.info.get("references")
        if kept:
            lines.append(
                f"`{column.name}` references `{kept}`, kept by batchsync's writes, not a "
                "database constraint (batchsync deletes these rows with their parent)."
            )
    return lines


# Names PostgreSQL gives the types SQLAlchemy's DDL asks for: FLOAT without a precision is
# stored, and shown by \d and information_schema, as double precision.
_PG_NAMES = {"float": "double precision"}


def _type(column_type: TypeEngine[object], dialect: object) -> str:
    """The column's type as the database itself reports it."""
    name = column_type.compile(dialect=dialect).lower()  # type: ignore[arg-type]
    return _PG_NAMES.get(name, name) if dialect is _PG else name


def _nullable(column: Column[object], view: bool) -> str:
    if view:
        return ""
    return "yes" if column.nullable and not column.primary_key else "no"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")
