"""docs/schema.md is generated from the models and must not drift from them."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import Engine, inspect

from batchsync.models import VIEWS, Base
from batchsync.schema_docs import render_schema_markdown

SCHEMA_DOC = Path(__file__).resolve().parent.parent / "docs" / "schema.md"


def test_schema_doc_is_up_to_date() -> None:
    """docs/schema.md equals `batchsync db docs`; regenerate it when the models change."""
    assert SCHEMA_DOC.read_text() == render_schema_markdown(), (
        "docs/schema.md is out of date: run `batchsync db docs > docs/schema.md`"
    )


def test_every_table_view_and_column_is_described() -> None:
    """No table, view or column goes without a description."""
    for table in [*Base.metadata.tables.values(), *VIEWS.tables.values()]:
        assert table.comment, table.name
        for column in table.columns:
            assert column.comment, f"{table.name}.{column.name}"
    rendered = render_schema_markdown()
    for name in [*Base.metadata.tables, *VIEWS.tables]:
        assert f"### `{name}`" in rendered


def documented_types(markdown: str, column: int) -> dict[tuple[str, str], str]:
    """(table, column) -> the type in the given column of each table's Markdown table."""
    types: dict[tuple[str, str], str] = {}
    for section in markdown.split("\n### `")[1:]:
        table = section.split("`", 1)[0]
        for row in re.findall(r"^\| `(\w+)` \|(.*)$", section, re.MULTILINE):
            types[(table, row[0])] = row[1].split("|")[column].strip()
    return types


def test_documented_types_are_what_each_database_reports(engine: Engine) -> None:
    """docs/schema.md gives, per database, the type the migrated database reports per column."""
    column = 0 if engine.dialect.name == "postgresql" else 1
    documented = documented_types(SCHEMA_DOC.read_text(), column)
    inspector = inspect(engine)
    # SQLite reports no type for a view's computed columns: its views are checked on
    # PostgreSQL only.
    views = list(VIEWS.tables) if engine.dialect.name == "postgresql" else []
    for table in [*Base.metadata.tables, *views]:
        for found in inspector.get_columns(table):
            reported = found["type"].compile(dialect=engine.dialect).lower()
            assert documented[(table, found["name"])] == reported, (table, found["name"])
