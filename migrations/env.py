"""Alembic environment for batchsync.

Uses, in order: an engine or connection handed in by the application or a test
(``config.attributes``), the ``sqlalchemy.url`` of alembic.ini or ``-x url=...``, then
BATCHSYNC_DATABASE_URL (default: a SQLite file in the working directory).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from batchsync.config import load_database
from batchsync.db import create_db_engine
from batchsync.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only alter tables by copying them
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def _url() -> str | None:
    return context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )


def run_offline() -> None:
    _configure(url=load_database(_url()).url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = config.attributes.get("engine") or create_db_engine(load_database(_url()))
    with engine.connect() as connection:
        _run(connection)
        connection.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
