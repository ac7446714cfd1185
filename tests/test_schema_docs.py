"""docs/schema.md is generated from the models and must not drift from them."""

from __future__ import annotations

from pathlib import Path

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
