"""README's example queries run as written, on the demo database and on PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text

from batchsync.bland.auto import build_source
from batchsync.bland.http import BlandHttp
from batchsync.cli import cli
from batchsync.config import load_api
from batchsync.emulator import Emulator
from batchsync.sync import SyncOptions, run_sync
from tests.conftest import EMULATOR_URL

README = Path(__file__).resolve().parent.parent / "README.md"
QUERIES = re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_example_queries() -> None:
    """The README shows analysts a few queries."""
    assert len(QUERIES) >= 3


@pytest.mark.parametrize("query", QUERIES, ids=[q.splitlines()[0] for q in QUERIES])
def test_readme_query_runs_on_the_demo_database(query: str, tmp_path: Path) -> None:
    """Each README query runs against the database `batchsync demo` leaves, with rows."""
    database = tmp_path / "batchsync-demo.db"
    result = CliRunner().invoke(cli, ["demo", "--database", str(database)])
    assert result.exit_code == 0, result.output
    with sqlite3.connect(database) as connection:
        rows = connection.execute(query).fetchall()
    assert rows


@pytest.mark.parametrize("query", QUERIES, ids=[q.splitlines()[0] for q in QUERIES])
def test_readme_query_runs_on_postgres(query: str, engine: Engine) -> None:
    """Each README query runs on the same data in PostgreSQL (and SQLite through SQLAlchemy)."""
    emulator = Emulator(v2_batches=2)
    with BlandHttp(load_api(EMULATOR_URL, emulator.api_key), transport=emulator.transport()) as c:
        run_sync(engine, build_source(c), SyncOptions(discover=True))
    with engine.connect() as connection:
        assert connection.execute(text(query)).all()


def test_every_package_of_the_source_tree_ships_in_the_wheel() -> None:
    """README's first command installs without -e: each subpackage must be listed in
    pyproject.toml, or `batchsync` fails to import from the installed wheel."""
    root = Path(__file__).resolve().parent.parent
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for init in (root / "batchsync").rglob("__init__.py")
    }
    assert found <= listed
