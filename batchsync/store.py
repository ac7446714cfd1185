"""Writing one parsed batch into the database, inside the caller's transaction.

Contract: :func:`write_batch` runs inside one transaction that the caller opens and commits
(``with engine.begin() as connection``), so a batch lands whole or not at all. It is
idempotent: rows are upserted by primary key and rewritten only when a value differs, and
the child rows of the batch that vanished from the response are deleted, so a re-sync
converges to exactly what the API returned. Child rows follow their parent: a call that
moved here from another batch keeps only the transcript lines of this response. Parts the
response did not include at all (``None`` in :class:`~batchsync.payload.ParsedBatch`) are
left as they are.

Two write paths share that contract. PostgreSQL streams rows with binary ``COPY`` into a
temporary staging table, then applies one ``INSERT ... SELECT ... ON CONFLICT DO UPDATE
... WHERE <row differs>`` and one ``DELETE ... WHERE NOT EXISTS`` per table. SQLite runs
``executemany`` upserts through the driver. On both, a table that holds no row of the
batch yet (a first load) takes plain inserts (``COPY`` straight into the table, a plain
``INSERT``); a key found under another batch (a call that moved) undoes that statement
and its rows go the upsert way. A batch's calls can come in chunks (:class:`BatchWriter`),
so a batch of any size is written without holding all its records at once.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple

import psycopg
from psycopg.types.json import set_json_dumps
from sqlalchemy import Column, Connection, Engine, Table, and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from batchsync.db import reading
from batchsync.encoded import (
    COPY_SIGNATURE,
    COPY_TRAILER,
    FIELDS,
    Dialect,
    EncodedRows,
    RowSpec,
    copy_stamp,
    sqlite_timestamp,
    sqlite_values,
)
from batchsync.jsontext import jsonb_dumps
from batchsync.models import (
    Base,
    Batch,
    BatchError,
    BatchLog,
    Call,
    CallTranscript,
    QueueStatusCount,
)
from batchsync.payload import (
    AnalysisRecord,
    BatchLogRecord,
    CallRecord,
    ErrorRecord,
    ParsedBatch,
    QueueStatusCountRecord,
    StoredCalls,
    TranscriptLineRecord,
)
from batchsync.records import V2_FINAL_BATCH_STATUSES

# Columns every data table carries after the record's own fields.
_BOOKKEEPING = ("synced_at", "sync_run_id")
_ANALYSIS_COLUMNS = AnalysisRecord._fields


@dataclass
class TableChanges:
    """Rows a write inserted, updated (a value differed) and deleted in one table."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    def __iadd__(self, other: TableChanges) -> TableChanges:
        self.inserted += other.inserted
        self.updated += other.updated
        self.deleted += other.deleted
        return self

    @property
    def total(self) -> int:
        return self.inserted + self.updated + self.deleted


BatchChanges = dict[str, TableChanges]

# A table's rows to write: records, or the rows a parser process made of them.
Records = Sequence[tuple[Any, ...]] | EncodedRows


@dataclass(frozen=True)
class _ChildTable:
    """A table whose rows belong to one batch and are replaced as a set."""

    table: Table
    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return str(self.table.name)  # a plain str: Table.name is a str subclass

    @property
    def columns(self) -> list[Column[Any]]:
        return list(self.table.columns)

    @property
    def compared(self) -> list[str]:
        """Columns whose change makes an update; bookkeeping alone does not."""
        return [c.name for c in self.table.columns if c.name not in (*self.keys, *_BOOKKEEPING)]


def _child(model: Any, record: type[tuple[Any, ...]], keys: tuple[str, ...]) -> _ChildTable:
    table: Table = model.__table__
    names = tuple(c.name for c in table.columns)
    fields: tuple[str, ...] = record._fields  # type: ignore[attr-defined]
    # Records are written positionally: their fields must be the table's columns, in order.
    assert names == (*fields, *_BOOKKEEPING), f"{record.__name__} does not match {table.name}"
    # The SQLite writer tells inserted rows by their rowid: a key that is the rowid itself
    # (a lone INTEGER primary key) would defeat it.
    assert len(keys) > 1 or table.c[keys[0]].type.python_type is not int, table.name
    return _ChildTable(table, keys)


CALLS = _child(Call, CallRecord, ("call_id",))
TRANSCRIPTS = _child(CallTranscript, TranscriptLineRecord, ("call_id", "line_id"))
QUEUE_STATUS_COUNTS = _child(QueueStatusCount, QueueStatusCountRecord, ("batch_id", "queue_status"))
ERRORS = _child(BatchError, ErrorRecord, ("batch_id", "position"))
BATCH_LOGS = _child(BatchLog, BatchLogRecord, ("batch_id", "log_id"))
BATCHES: Table = Batch.__table__  # type: ignore[assignment]


def lock_batch(connection: Connection, batch_id: str) -> None:
    """Serialise writers of the same batch until the transaction ends (PostgreSQL only).

    SQLite needs nothing more: a write transaction there holds the whole database.
    """
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))",
            {"key": f"batchsync:batch:{batch_id}"},
        )


# The version of the mapping from a response body to stored rows (the parser and the
# schema). It is folded into every stored fingerprint, so that a release that stores the
# same body differently rewrites each batch on its next fetch instead of skipping it as
# unchanged. Bump it whenever a release stores the same body differently: a new or removed
# column, a value parsed or normalised otherwise, child rows keyed or assigned otherwise.
# 3: v2 batches, call detail columns, batch_logs. 4: an API key quoted in a v2 body or in a
# v1 call's detail is stored as *** (earlier releases stored it in clear there).
MAPPING_VERSION = 4


class Fingerprint(NamedTuple):
    """What a batch was last written from: its content's hash and the settings that shape it.

    ``content_sha256`` holds the body's hash (with the parts requested) keyed by
    :data:`MAPPING_VERSION`, so no column of its own is needed for the version.
    """

    content_sha256: str
    fetched_parts: str
    phone_numbers: str

    @classmethod
    def of(cls, body_sha256: str, fetched_parts: str, phone_numbers: str) -> Fingerprint:
        """The fingerprint of a body (its hash) stored with these settings, by this mapping."""
        keyed = hashlib.sha256(f"mapping {MAPPING_VERSION}\n{body_sha256}".encode()).hexdigest()
        return cls(keyed, fetched_parts, phone_numbers)


def stored_fingerprint(connection: Connection, batch_id: str) -> Fingerprint | None:
    """What the stored batch was last written from; None if it is not stored."""
    c = BATCHES.c
    row = connection.execute(
        select(c.content_sha256, c.fetched_parts, c.phone_numbers).where(c.batch_id == batch_id)
    ).first()
    if row is None:
        return None
    return Fingerprint(row[0] or "", row[1] or "", row[2] or "")


def stored_phone_policies(engine: Engine) -> set[str]:
    """The phone-number policies the stored batches were written under."""
    with engine.connect() as connection:
        rows = connection.execute(select(BATCHES.c.phone_numbers).distinct())
        return {str(tag) for (tag,) in rows if tag}


class StoredBatch(NamedTuple):
    fingerprint: Fingerprint
    complete: bool


def stored_batches(connection: Connection) -> dict[str, StoredBatch]:
    """Every stored batch: what its last write was made from, and whether it is complete.

    Complete means status 'completed'; a v2 batch is final too once 'completed_partial' or
    'failed' (its status comes from its logs, so any other value, NULL included, means the
    logs hold no final event yet). A v1 batch whose old response had no status is complete
    when the API reported no call left in progress; a NULL ``in_progress_calls`` is not
    taken for zero.
    """
    c = BATCHES.c
    is_v2 = c.api_version == "v2"
    # Legacy v1 rows written before api_version existed carry NULL there: they are v1.
    is_v1 = or_(c.api_version.is_(None), c.api_version != "v2")
    complete = or_(
        c.status == "completed",
        and_(is_v1, c.status.is_(None), c.in_progress_calls == 0),
        and_(is_v2, c.status.in_(sorted(V2_FINAL_BATCH_STATUSES))),
    )
    rows = connection.execute(
        select(c.batch_id, c.content_sha256, c.fetched_parts, c.phone_numbers, complete)
    )
    return {
        str(batch_id): StoredBatch(
            Fingerprint(sha or "", parts or "", phones or ""), bool(is_complete)
        )
        for batch_id, sha, parts, phones, is_complete in rows
    }


def stored_calls(engine: Engine, batch_id: str) -> StoredCalls:
    """The batch's calls and transcript lines as stored, read in a transaction of their own."""
    with reading(engine) as connection:
        return read_stored_calls(connection, batch_id)


def has_call_details(connection: Connection, batch_id: str) -> bool:
    """Whether a stored call of the batch has its detail (``details_synced_at`` set)."""
    c = CALLS.table.c
    query = select(c.call_id).where(c.batch_id == batch_id, c.details_synced_at.is_not(None))
    return connection.execute(query.limit(1)).first() is not None


def read_stored_calls(
    connection: Connection, batch_id: str, *, lines: bool = True, detailed_only: bool = False
) -> StoredCalls:
    """The batch's calls (and, with ``lines``, transcript lines) as stored, read in the
    caller's transaction; with ``detailed_only``, only the calls that have their detail
    (``details_synced_at`` set): all a carried-over detail needs, and none for most batches."""
    calls_table, lines_table = CALLS.table, TRANSCRIPTS.table
    call_columns = [calls_table.c[name] for name in CallRecord._fields]
    line_columns = [lines_table.c[name] for name in TranscriptLineRecord._fields]
    query = select(*call_columns).where(calls_table.c.batch_id == batch_id)
    if detailed_only:
        query = query.where(calls_table.c.details_synced_at.is_not(None))
    calls = {str(row[0]): CallRecord(*row) for row in connection.execute(query)}
    by_call: dict[str, list[TranscriptLineRecord]] = {}
    if lines:
        for row in connection.execute(
            select(*line_columns)
            .where(lines_table.c.batch_id == batch_id)
            .order_by(lines_table.c.call_id, lines_table.c.line_id)
        ):
            by_call.setdefault(str(row[0]), []).append(TranscriptLineRecord(*row))
    return StoredCalls(calls, by_call)


def write_batch(
    connection: Connection,
    parsed: ParsedBatch,
    *,
    run_id: int,
    synced_at: datetime,
    fingerprint: Fingerprint | None = None,
) -> BatchChanges:
    """Upsert one batch and replace its child rows; returns the row changes per table.

    Runs in the caller's transaction; call :func:`lock_batch` first in the same transaction.
    """
    writer = BatchWriter(connection, parsed.batch.batch_id, run_id=run_id, synced_at=synced_at)
    return writer.finish(parsed, fingerprint)


class BatchWriter:
    """Writes one batch in the caller's transaction, its calls in as many chunks as come.

    :meth:`write_calls` takes the calls (and their lines) a chunk at a time, so a batch of
    any size never has to be held whole; :meth:`finish` then writes the batch row and the
    rest of the response and deletes what vanished. Nothing is committed here: a batch
    whose parse fails after some chunks is rolled back whole by the caller's transaction.
    """

    def __init__(
        self, connection: Connection, batch_id: str, *, run_id: int, synced_at: datetime
    ) -> None:
        self.connection = connection
        self.batch_id = batch_id
        self.rows = _RowWriter.for_connection(connection, run_id=run_id, synced_at=synced_at)
        self._batch_existed: bool | None = None  # known once the batch row is made sure of
        self._calls = TableChanges()
        self._lines = TableChanges()

    def write_calls(
        self,
        calls: Sequence[CallRecord] | EncodedRows,
        lines: Sequence[TranscriptLineRecord] | EncodedRows | None,
        *,
        again: Collection[str] = (),
    ) -> None:
        """Upsert a chunk of calls and, when transcripts were requested, all their lines.

        ``again`` names calls an earlier chunk of this batch already wrote: the later copy
        wins, so their lines written before are deleted first.
        """
        if self._batch_existed is None:
            self._batch_existed = _ensure_batch_row(self.connection, self.batch_id, self.rows)
        if again and lines is not None:
            self._lines.deleted += self.rows.forget(TRANSCRIPTS, self.batch_id, again)
        # Parents before children.
        self._calls += self.rows.upsert(CALLS, calls, self.batch_id)
        if lines is not None:
            self._lines += self.rows.upsert(TRANSCRIPTS, lines, self.batch_id)

    def finish(self, parsed: ParsedBatch, fingerprint: Fingerprint | None) -> BatchChanges:
        """Write the batch row, its other child rows and ``parsed``'s calls (the last chunk),
        then delete the rows that vanished; returns the row changes per table."""
        batch_id = self.batch_id
        rows = self.rows
        changes: BatchChanges = {
            "batches": _upsert_batch(
                self.connection, parsed, rows.stamp, fingerprint, existed=self._batch_existed
            )
        }
        self._batch_existed = True
        for child, records in (
            (QUEUE_STATUS_COUNTS, parsed.queue_status_counts),
            (ERRORS, parsed.errors),
            (BATCH_LOGS, parsed.logs),
        ):
            if records is not None:
                changes[child.name] = rows.upsert(child, records, batch_id)
                changes[child.name].deleted = rows.delete_missing(child, batch_id)
        encoded = parsed.encoded
        if encoded is not None:
            self.write_calls(encoded.calls, encoded.transcripts)
            with_lines = encoded.transcripts is not None
        elif parsed.calls is not None:
            self.write_calls(parsed.calls, parsed.transcripts)
            with_lines = parsed.transcripts is not None
        else:
            return changes
        changes[CALLS.name] = calls = self._calls
        changes[TRANSCRIPTS.name] = lines = self._lines
        # Children before parents on the way out.
        if with_lines:
            lines.deleted += rows.delete_missing(TRANSCRIPTS, batch_id)
        else:
            # Transcripts were not fetched: keep them, but not those of calls that vanished.
            lines.deleted += rows.delete_missing(TRANSCRIPTS, batch_id, present=CALLS)
        # A call that moved here from another batch keeps none of the lines stored with it
        # there. Calls that all went in as plain inserts were stored nowhere before.
        if rows.upserted(CALLS):
            lines.deleted += _delete_lines_left_elsewhere(self.connection, batch_id)
        calls.deleted += rows.delete_missing(CALLS, batch_id)
        return changes


def _ensure_batch_row(connection: Connection, batch_id: str, rows: _RowWriter) -> bool:
    """Make sure the batch has a row before its calls are written; returns whether it had one.

    calls.batch_id is no database foreign key: this is what keeps every call's batch stored,
    in the same transaction. A new row holds only the id until the batch is finished.
    """
    c = BATCHES.c
    if connection.execute(select(c.batch_id).where(c.batch_id == batch_id)).first() is not None:
        return True
    synced_at, run_id = rows.stamp
    connection.execute(
        BATCHES.insert().values(batch_id=batch_id, synced_at=synced_at, sync_run_id=run_id)
    )
    return False


def _delete_lines_left_elsewhere(connection: Connection, batch_id: str) -> int:
    """Delete the transcript lines of this batch's calls that are stored under another batch.

    Every line this write keeps is stamped with this batch's id (an upsert moves it), so a
    line of one of its calls under another id came with the call from its old batch.
    """
    lines, calls = TRANSCRIPTS.table, CALLS.table
    result = connection.execute(
        delete(lines).where(
            lines.c.batch_id != batch_id,
            lines.c.call_id.in_(select(calls.c.call_id).where(calls.c.batch_id == batch_id)),
        )
    )
    return max(int(result.rowcount), 0)


def _upsert_batch(
    connection: Connection,
    parsed: ParsedBatch,
    stamp: tuple[datetime, int],
    fingerprint: Fingerprint | None,
    *,
    existed: bool | None,
) -> TableChanges:
    """Upsert the batch row; ``existed`` says whether it existed before this write, when a
    row was already made for its calls (None: look it up here)."""
    values: dict[str, Any] = parsed.batch._asdict()
    if parsed.analysis is not None:
        values.update(parsed.analysis._asdict())
    if fingerprint is not None:
        values.update(fingerprint._asdict())
    compared = [name for name in values if name != "batch_id"]
    values["synced_at"], values["sync_run_id"] = stamp
    if existed is None:
        existed = (
            connection.execute(
                select(BATCHES.c.batch_id).where(BATCHES.c.batch_id == parsed.batch.batch_id)
            ).first()
            is not None
        )
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = insert(BATCHES).values(values)
    differs = _differs([BATCHES.c[name] for name in compared], statement.excluded)
    statement = statement.on_conflict_do_update(
        index_elements=[BATCHES.c.batch_id],
        set_={name: statement.excluded[name] for name in values if name != "batch_id"},
        where=differs,
    )
    # RETURNING yields a row only when the row was inserted or really updated.
    written = connection.execute(statement.returning(BATCHES.c.batch_id)).first()
    if not existed:
        return TableChanges(inserted=1)
    return TableChanges(updated=0 if written is None else 1)


def _differs(columns: Sequence[Column[Any]], excluded: Any) -> Any:
    return or_(*(column.is_distinct_from(excluded[column.name]) for column in columns))


class _RowWriter:
    """Writes the child rows of one batch; one subclass per dialect.

    ``upsert`` writes rows of a table, as often as chunks come, and remembers their keys;
    ``delete_missing`` then deletes the batch's rows whose key none of them had. A table
    that held no row of the batch when its first rows came is loaded by plain inserts
    (a first load): nothing of it can then be missing, and no key is remembered. A plain
    insert that meets a key stored under another batch (a call that moved) is undone
    and its rows go the upsert way.
    """

    def __init__(self, connection: Connection, *, run_id: int, synced_at: datetime) -> None:
        self.connection = connection
        self.stamp = (synced_at, run_id)
        # Per table written: True when the batch had no rows there before (a first load).
        self._first_load: dict[str, bool] = {}
        self._upserted: set[str] = set()  # tables some of whose rows were upserted

    @staticmethod
    def for_connection(connection: Connection, *, run_id: int, synced_at: datetime) -> _RowWriter:
        if connection.dialect.name == "postgresql":
            return _PostgresRowWriter(connection, run_id=run_id, synced_at=synced_at)
        return _SqliteRowWriter(connection, run_id=run_id, synced_at=synced_at)

    def upsert(self, child: _ChildTable, records: Records, batch_id: str) -> TableChanges:
        """Insert new rows and update rows where a value differs."""
        first_load = self._first_load.get(child.name)
        if first_load is None:
            first_load = self._first_load[child.name] = not self._has_rows(child, batch_id)
            self._start(child, first_load)
        if not records:
            return TableChanges()
        if first_load and self._insert(child, records):
            return TableChanges(inserted=len(records))
        self._upserted.add(child.name)
        return self._upsert(child, records, batch_id, remember=not first_load)

    def upserted(self, child: _ChildTable) -> bool:
        """Whether some of ``child``'s rows went the upsert way (not all plain inserts)."""
        return child.name in self._upserted

    def delete_missing(
        self, child: _ChildTable, batch_id: str, *, present: _ChildTable | None = None
    ) -> int:
        """Delete the batch's rows of ``child`` whose key ``present`` (default: ``child``)'s
        upserts did not write; the key is ``present``'s primary key."""
        present = present or child
        if self._first_load.get(present.name, False):
            return 0  # the batch had no rows there before this write: nothing can be missing
        if present.name not in self._first_load:
            self._start(present, False)  # nothing written: every row of the batch is missing
        return self._delete_missing(child, batch_id, present)

    def forget(self, child: _ChildTable, batch_id: str, call_ids: Collection[str]) -> int:
        """Delete the batch's rows of ``child`` for these calls, written earlier in this
        write, and forget their keys; returns the rows deleted."""
        table = child.table
        result = self.connection.execute(
            delete(table).where(table.c.batch_id == batch_id, table.c.call_id.in_(list(call_ids)))
        )
        self._forget_keys(child, call_ids)
        return max(int(result.rowcount), 0)

    def _has_rows(self, child: _ChildTable, batch_id: str) -> bool:
        table = child.table
        query = select(table.c.batch_id).where(table.c.batch_id == batch_id).limit(1)
        return self.connection.execute(query).first() is not None

    def _start(self, child: _ChildTable, first_load: bool) -> None:
        """Get ready to write ``child``'s rows of one batch."""

    def _insert(self, child: _ChildTable, records: Records) -> bool:
        """Insert ``records`` as new rows; False (and nothing written) if a key exists."""
        raise NotImplementedError

    def _upsert(
        self,
        child: _ChildTable,
        records: Records,
        batch_id: str,
        *,
        remember: bool,
    ) -> TableChanges:
        raise NotImplementedError

    def _delete_missing(self, child: _ChildTable, batch_id: str, present: _ChildTable) -> int:
        raise NotImplementedError

    def _forget_keys(self, child: _ChildTable, call_ids: Collection[str]) -> None:
        raise NotImplementedError


# PostgreSQL COPY type of each column type, as compiled for PostgreSQL.
_COPY_TYPES = {
    "TEXT": "text",
    "INTEGER": "int4",
    "BIGINT": "int8",
    "FLOAT": "float8",
    "BOOLEAN": "bool",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "JSONB": "jsonb",
}
_POSTGRESQL = postgresql.dialect()  # type: ignore[no-untyped-call]


@cache
def copy_types(child: _ChildTable) -> tuple[str, ...]:
    """The binary COPY type name of each of ``child``'s columns (``text``, ``jsonb``...)."""
    return tuple(_COPY_TYPES[c.type.compile(dialect=_POSTGRESQL)] for c in child.columns)


def row_spec(dialect: Dialect) -> RowSpec:
    """The columns of calls and call_transcripts, for encoding their rows elsewhere (a
    parser process: see :mod:`batchsync.encoded`)."""
    tables = dict(zip(FIELDS, (CALLS, TRANSCRIPTS), strict=True))
    return RowSpec(dialect, {field: copy_types(child) for field, child in tables.items()})


class _PostgresRowWriter(_RowWriter):
    """COPY into a staging table, then one upsert per chunk and one delete per table.

    A first load COPYs straight into the table under a savepoint: twice as fast. The keys
    of the rows staged are kept in a second temporary table for the delete.
    """

    @staticmethod
    def _stage_name(child: _ChildTable) -> str:
        return f"batchsync_stage_{child.name}"

    @staticmethod
    def _keys_name(child: _ChildTable) -> str:
        return f"batchsync_keys_{child.name}"

    def _start(self, child: _ChildTable, first_load: bool) -> None:
        if first_load:
            return
        # Session temp tables, created once per connection and emptied at every commit.
        keys = ", ".join(child.keys)
        self.connection.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {self._keys_name(child)} ON COMMIT DELETE ROWS"
            f" AS SELECT {keys} FROM {child.name} WITH NO DATA"
        )
        self.connection.exec_driver_sql(f"TRUNCATE {self._keys_name(child)}")

    def _insert(self, child: _ChildTable, records: Records) -> bool:
        savepoint = self.connection.begin_nested()
        try:
            self._copy(child.name, child, records)
        except psycopg.errors.UniqueViolation:
            savepoint.rollback()
            return False
        savepoint.commit()
        return True

    def _upsert(
        self,
        child: _ChildTable,
        records: Records,
        batch_id: str,
        *,
        remember: bool,
    ) -> TableChanges:
        stage = self._stage_name(child)
        names = [c.name for c in child.columns]
        cols = ", ".join(names)
        self.connection.exec_driver_sql(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS"
            f" AS SELECT {cols} FROM {child.name} WITH NO DATA"
        )
        self.connection.exec_driver_sql(f"TRUNCATE {stage}")
        self._copy(stage, child, records)

        keys = ", ".join(child.keys)
        if remember:
            self.connection.exec_driver_sql(
                f"INSERT INTO {self._keys_name(child)} ({keys}) SELECT {keys} FROM {stage}"
            )
        updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n not in child.keys)
        target = ", ".join(f"t.{n}" for n in child.compared)
        excluded = ", ".join(f"EXCLUDED.{n}" for n in child.compared)
        inserted, updated = self.connection.exec_driver_sql(
            f"WITH written AS ("
            f" INSERT INTO {child.name} AS t ({cols}) SELECT {cols} FROM {stage}"
            f" ON CONFLICT ({keys}) DO UPDATE SET {updates}"
            f" WHERE ({target}) IS DISTINCT FROM ({excluded})"
            f" RETURNING (xmax = 0) AS inserted)"
            f" SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted)"
            f" FROM written"
        ).one()
        return TableChanges(inserted=inserted, updated=updated)

    def _copy(self, target: str, child: _ChildTable, records: Records) -> None:
        """Stream ``records`` (stamped) into ``target`` with binary COPY."""
        driver = self.connection.connection.driver_connection
        assert driver is not None
        cols = ", ".join(c.name for c in child.columns)
        stamp = self.stamp
        with driver.cursor() as cursor:
            set_json_dumps(jsonb_dumps, context=cursor)
            with cursor.copy(f"COPY {target} ({cols}) FROM STDIN (FORMAT BINARY)") as copy:
                if isinstance(records, EncodedRows):  # formatted by a parser process
                    copy.write(COPY_SIGNATURE)
                    copy.write(records.stamped(copy_stamp(*stamp)))
                    copy.write(COPY_TRAILER)
                    return
                copy.set_types(list(copy_types(child)))
                for record in records:
                    copy.write_row(record + stamp)

    def _delete_missing(self, child: _ChildTable, batch_id: str, present: _ChildTable) -> int:
        match = " AND ".join(f"s.{k} = t.{k}" for k in present.keys)
        result = self.connection.exec_driver_sql(
            f"DELETE FROM {child.name} AS t WHERE t.batch_id = %(batch_id)s"
            f" AND NOT EXISTS (SELECT 1 FROM {self._keys_name(present)} AS s WHERE {match})",
            {"batch_id": batch_id},
        )
        return result.rowcount

    def _forget_keys(self, child: _ChildTable, call_ids: Collection[str]) -> None:
        if not self._first_load.get(child.name, False):
            self.connection.exec_driver_sql(
                f"DELETE FROM {self._keys_name(child)} WHERE call_id = ANY(%(ids)s)",
                {"ids": list(call_ids)},
            )


class _SqliteRowWriter(_RowWriter):
    """Plain ``executemany`` inserts for a first load, upserts otherwise.

    The keys written are kept in a temporary table, as on PostgreSQL, so that memory does
    not grow with the batch.
    """

    def __init__(self, connection: Connection, *, run_id: int, synced_at: datetime) -> None:
        super().__init__(connection, run_id=run_id, synced_at=synced_at)
        driver = connection.connection.driver_connection
        assert driver is not None
        self._cursor = driver.cursor()

    @staticmethod
    def _keys_name(child: _ChildTable) -> str:
        return f"temp.batchsync_keys_{child.name}"

    def _start(self, child: _ChildTable, first_load: bool) -> None:
        if first_load:
            return
        # Created once per connection; emptied for each batch (SQLite has no ON COMMIT).
        keys = ", ".join(child.keys)
        self._cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {self._keys_name(child)}"
            f" ({keys}, PRIMARY KEY ({keys})) WITHOUT ROWID"
        )
        self._cursor.execute(f"DELETE FROM {self._keys_name(child)}")

    def _insert(self, child: _ChildTable, records: Records) -> bool:
        names = [c.name for c in child.columns]
        # A savepoint, so that a key met under another batch undoes only this statement.
        self._cursor.execute("SAVEPOINT batchsync_insert")
        try:
            self._cursor.executemany(
                f"INSERT INTO {child.name} ({', '.join(names)})"
                f" VALUES ({', '.join('?' * len(names))})",
                self._stamped(self._values(child, records)),
            )
        except sqlite3.IntegrityError:
            self._cursor.execute("ROLLBACK TO batchsync_insert")
            self._cursor.execute("RELEASE batchsync_insert")
            return False
        self._cursor.execute("RELEASE batchsync_insert")
        return True

    def _upsert(
        self,
        child: _ChildTable,
        records: Records,
        batch_id: str,
        *,
        remember: bool,
    ) -> TableChanges:
        values = self._values(child, records)
        if remember:
            positions = [[c.name for c in child.columns].index(k) for k in child.keys]
            # Keys are neither timestamps nor JSON: the same in records and in values.
            keyed = values if isinstance(records, EncodedRows) else records
            self._cursor.executemany(
                f"INSERT OR IGNORE INTO {self._keys_name(child)}"
                f" VALUES ({', '.join('?' * len(child.keys))})",
                (tuple(row[p] for p in positions) for row in keyed),
            )
        # A row the upsert inserts gets a rowid above every one before it; one it updates
        # (a call that moved, or that an earlier chunk of this batch wrote) keeps its own.
        self._cursor.execute(f"SELECT max(rowid) FROM {child.name}")
        last_rowid = self._cursor.fetchone()[0] or 0
        names = [c.name for c in child.columns]
        updates = ", ".join(f"{n} = excluded.{n}" for n in names if n not in child.keys)
        differs = " OR ".join(f"{n} IS NOT excluded.{n}" for n in child.compared)
        self._cursor.executemany(
            f"INSERT INTO {child.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            f" ON CONFLICT ({', '.join(child.keys)}) DO UPDATE SET {updates} WHERE {differs}",
            self._stamped(values),
        )
        # sqlite3 counts inserted rows and the rows an upsert really updated, nothing else.
        written = max(self._cursor.rowcount, 0)
        self._cursor.execute(f"SELECT count(*) FROM {child.name} WHERE rowid > ?", (last_rowid,))
        inserted = int(self._cursor.fetchone()[0])
        return TableChanges(inserted=inserted, updated=written - inserted)

    def _delete_missing(self, child: _ChildTable, batch_id: str, present: _ChildTable) -> int:
        match = " AND ".join(f"k.{k} = {child.name}.{k}" for k in present.keys)
        self._cursor.execute(
            f"DELETE FROM {child.name} WHERE batch_id = ?"
            f" AND NOT EXISTS (SELECT 1 FROM {self._keys_name(present)} AS k WHERE {match})",
            (batch_id,),
        )
        return max(int(self._cursor.rowcount), 0)

    def _forget_keys(self, child: _ChildTable, call_ids: Collection[str]) -> None:
        if self._first_load.get(child.name, False):
            return
        ids = list(call_ids)
        for start in range(0, len(ids), 900):
            chunk = ids[start : start + 900]
            self._cursor.execute(
                f"DELETE FROM {self._keys_name(child)} WHERE call_id IN"
                f" ({', '.join('?' * len(chunk))})",
                chunk,
            )

    @staticmethod
    def _values(child: _ChildTable, records: Records) -> Iterable[tuple[Any, ...]]:
        """Records as driver values without the stamp: timestamps and JSON as the text
        SQLAlchemy reads back. Converted one at a time (a generator, so a batch's rows never
        exist twice in memory); rows a parser process converted are unpickled once."""
        if isinstance(records, EncodedRows):
            return records.sqlite_rows()
        return sqlite_values(records, copy_types(child)[: -len(_BOOKKEEPING)])

    def _stamped(self, values: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
        """``values`` with this write's stamp (synced_at, sync_run_id) after each."""
        stamp = (sqlite_timestamp(self.stamp[0]), self.stamp[1])
        for row in values:
            yield row + stamp


def purge_batches(
    connection: Connection, *, batch_ids: Sequence[str] = (), before: datetime | None = None
) -> dict[str, int]:
    """Delete the named batches, or those created before ``before``, with all their rows.

    Runs in the caller's transaction; returns the rows deleted per table. Every child table
    is deleted from explicitly, children first: calls and call_transcripts have no foreign
    key that would cascade. The run ledger (sync_run_batches) keeps its lines: they hold ids
    and outcomes, no call data.
    """
    c = BATCHES.c
    chosen = select(c.batch_id)
    if batch_ids:
        chosen = chosen.where(c.batch_id.in_(list(batch_ids)))
    if before is not None:
        chosen = chosen.where(c.created_at < before)
    if not batch_ids and before is None:
        raise ValueError("purge needs batch ids or a date")
    deleted = {}
    tables = (TRANSCRIPTS.table, CALLS.table, ERRORS.table, QUEUE_STATUS_COUNTS.table,
              BATCH_LOGS.table, BATCHES)  # fmt: skip
    for table in tables:
        result = connection.execute(delete(table).where(table.c.batch_id.in_(chosen)))
        deleted[str(table.name)] = int(result.rowcount)
    return deleted


def purge(
    engine: Engine,
    *,
    batch_ids: Sequence[str] = (),
    before: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Delete batches as :func:`purge_batches` does, in one transaction of its own; with
    ``dry_run`` the transaction is rolled back, so the counts say what would go."""
    with engine.connect() as connection, connection.begin() as transaction:
        deleted = purge_batches(connection, batch_ids=batch_ids, before=before)
        if dry_run:
            transaction.rollback()
    return deleted


def row_counts(engine: Engine) -> dict[str, int]:
    """The number of rows in each batchsync table, in dependency order."""
    with engine.connect() as connection:
        return {
            str(table.name): int(
                connection.execute(select(func.count()).select_from(table)).scalar_one()
            )
            for table in Base.metadata.sorted_tables
        }
