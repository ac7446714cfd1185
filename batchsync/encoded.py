"""A batch's calls and transcript lines as driver rows, made in a parser process.

The writer's own share of a first load was mostly moving records between processes and
formatting them for the driver: pickling a batch's records in the parser process,
unpickling and rebuilding them in the sync process, then formatting every row for
``COPY`` or ``executemany`` there, on the core that also feeds the database. A parser
process that knows which database the run writes to (:mod:`batchsync.parse_pool`) does the
formatting itself and hands back :class:`EncodedRows`: for PostgreSQL the binary ``COPY``
rows, made by psycopg's own row formatter with the types the writer would set; for SQLite
the parameter tuples the writer would pass to ``executemany``. The writer then only puts
the two bookkeeping values in (``synced_at`` and ``sync_run_id``, known when the batch is
written) and streams the rows.

Only rows written exactly as parsed are encoded: under a phone-number policy other than
``keep``, with transcript redaction, or for a body that may quote the API key, the
records are still needed and the pool hands them back instead. The stamp's two fields are
fixed in size in binary ``COPY`` (8-byte timestamp, 8-byte integer), so each row is made
with a placeholder stamp whose place is kept in :attr:`EncodedRows.stamp_offsets`.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

import orjson
from psycopg import adapt, postgres, pq
from psycopg.types.json import set_json_dumps
from sqlalchemy import Column
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import JSON, DateTime

from batchsync.db import json_dumps
from batchsync.models import Base
from batchsync.payload import parse_batch_body

if TYPE_CHECKING:
    from batchsync.records import ParsedBatch

try:  # psycopg's C row formatter, the one its Copy.write_row uses
    from psycopg._copy_base import format_row_binary as _format_row_binary
except ImportError:  # a psycopg that moved it: the writer formats the records itself
    _format_row_binary = None

Dialect = Literal["postgresql", "sqlite"]

# The table each encoded list of records goes to, by ParsedBatch field.
TABLES: Final = {
    "calls": Base.metadata.tables["calls"],
    "transcripts": Base.metadata.tables["call_transcripts"],
}

# Columns every table carries after the record's own fields (store._BOOKKEEPING).
STAMP_COLUMNS: Final = ("synced_at", "sync_run_id")
_PLACEHOLDER: Final = (datetime(2000, 1, 1, tzinfo=UTC), 0)

# PostgreSQL COPY type of each SQLAlchemy type, as compiled for PostgreSQL.
COPY_TYPES: Final = {
    "TEXT": "text",
    "INTEGER": "int4",
    "BIGINT": "int8",
    "FLOAT": "float8",
    "BOOLEAN": "bool",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "JSONB": "jsonb",
}

# Binary COPY framing (PostgreSQL's "COPY" reference, binary format).
COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\0" + b"\0\0\0\0" + b"\0\0\0\0"
COPY_TRAILER: Final = b"\xff\xff"


def available(dialect: str) -> bool:
    """Whether rows for ``dialect`` can be encoded in a parser process."""
    if dialect == "postgresql":
        return _format_row_binary is not None
    return dialect == "sqlite"


def jsonb_dumps(value: Any) -> bytes:
    """JSON column text for binary COPY: orjson (psycopg's default is the slower json
    module), with every digit of integers beyond 64 bits, as :func:`json_dumps` writes."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return json_dumps(value).encode()


def copy_type(column: Column[Any]) -> str:
    """The binary COPY type name of ``column`` on PostgreSQL (``text``, ``jsonb``...)."""
    return COPY_TYPES[column.type.compile(dialect=_POSTGRESQL)]


_POSTGRESQL: Final = postgresql.dialect()  # type: ignore[no-untyped-call]


def sqlite_timestamp(value: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime reads back; values are UTC already."""
    # isoformat is several times cheaper than strftime; [:26] drops the "+00:00".
    return value.isoformat(" ", "microseconds")[:26]


def is_datetime(column: Column[Any]) -> bool:
    """Whether ``column`` holds timestamps."""
    return isinstance(getattr(column.type, "impl", column.type), DateTime)


@dataclass(frozen=True, slots=True)
class EncodedRows:
    """One batch's rows of one table, as its driver takes them, without their stamp.

    ``count`` rows. PostgreSQL: ``data`` is binary COPY rows (no signature, no trailer),
    each ending with a placeholder stamp of :data:`STAMP_BYTES` bytes that starts at the
    matching entry of ``stamp_offsets``. SQLite: ``data`` is a list of parameter tuples,
    the table's columns but the stamp's, timestamps and JSON as the text SQLAlchemy reads.
    """

    dialect: Dialect
    count: int
    data: bytes | list[tuple[Any, ...]]
    stamp_offsets: array[int] | None = None

    def __len__(self) -> int:
        return self.count

    def copy_data(self, stamp: bytes) -> bytes:
        """The whole binary COPY stream (signature, rows with ``stamp`` in place, trailer);
        ``stamp`` from :func:`copy_stamp`."""
        assert isinstance(self.data, bytes)
        assert self.stamp_offsets is not None
        rows = bytearray(COPY_SIGNATURE)
        start = len(rows)
        rows += self.data
        width = len(stamp)
        for offset in self.stamp_offsets:
            at = start + offset
            rows[at : at + width] = stamp
        rows += COPY_TRAILER
        return bytes(rows)

    def sqlite_rows(self) -> list[tuple[Any, ...]]:
        """The parameter tuples, without the stamp's two columns."""
        assert isinstance(self.data, list)
        return self.data


class EncodedBatch(NamedTuple):
    """A batch's calls and lines as :class:`EncodedRows` (``ParsedBatch.encoded``).

    ``transcripts`` is None where the response had no transcripts. ``body`` is the body
    they were parsed from: :func:`decoded` parses it again where records are needed after
    all (a stored call's detail to carry over).
    """

    calls: EncodedRows
    transcripts: EncodedRows | None
    body: bytes
    batch_id: str
    transcripts_requested: bool


def decoded(parsed: ParsedBatch) -> ParsedBatch:
    """``parsed`` with records in ``calls`` and ``transcripts``: itself unless they were
    encoded, else parsed again from the body (in this process)."""
    encoded = parsed.encoded
    if encoded is None:
        return parsed
    again = parse_batch_body(
        encoded.body,
        batch_id=encoded.batch_id,
        transcripts_requested=encoded.transcripts_requested,
    )
    return parsed._replace(calls=again.calls, transcripts=again.transcripts, encoded=None)


class Encoder:
    """Encodes records for one database; one per parser process (it caches psycopg's
    transformers, which are not picklable)."""

    def __init__(self, dialect: Dialect) -> None:
        if not available(dialect):
            raise ValueError(f"rows for {dialect} cannot be encoded here")
        self.dialect = dialect
        self._transformers: dict[str, Any] = {}

    def encode(self, field: str, records: Sequence[tuple[Any, ...]]) -> EncodedRows:
        """``records`` of the ParsedBatch field ``field`` (``calls`` or ``transcripts``)."""
        if self.dialect == "postgresql":
            return self._copy_rows(field, records)
        return self._sqlite_rows(field, records)

    def _copy_rows(self, field: str, records: Sequence[tuple[Any, ...]]) -> EncodedRows:
        assert _format_row_binary is not None
        transformer = self._transformers.get(field)
        if transformer is None:
            transformer = self._transformers[field] = copy_transformer(
                [copy_type(c) for c in TABLES[field].columns]
            )
        out = bytearray()
        offsets = array("q")
        placeholder = _PLACEHOLDER
        format_row = _format_row_binary
        for record in records:
            format_row(record + placeholder, transformer, out)
            offsets.append(len(out) - STAMP_BYTES)
        return EncodedRows("postgresql", len(records), bytes(out), offsets)

    @staticmethod
    def _sqlite_rows(field: str, records: Sequence[tuple[Any, ...]]) -> EncodedRows:
        columns = list(TABLES[field].columns)[: -len(STAMP_COLUMNS)]
        rows = list(sqlite_values(records, columns))
        return EncodedRows("sqlite", len(records), rows)


def sqlite_values(
    records: Iterable[tuple[Any, ...]], columns: Sequence[Column[Any]]
) -> Iterator[tuple[Any, ...]]:
    """``records`` (of ``columns``) as SQLite parameters, one at a time: timestamps and JSON
    as the text SQLAlchemy reads back, every other value as it is."""
    converters = [
        (index, sqlite_timestamp if is_datetime(column) else json_dumps)
        for index, column in enumerate(columns)
        if is_datetime(column) or isinstance(column.type, JSON)
    ]
    if not converters:
        yield from records
        return
    for record in records:
        row = list(record)
        for index, convert in converters:
            value = row[index]
            if value is not None:
                row[index] = convert(value)
        yield tuple(row)


def copy_transformer(types: Sequence[str]) -> Any:
    """A psycopg transformer that dumps rows of ``types`` (COPY type names) in binary, JSON
    through :func:`jsonb_dumps`, with no connection."""
    adapters = adapt.AdaptersMap(postgres.adapters)
    set_json_dumps(jsonb_dumps, context=adapters)
    transformer = adapt.Transformer(adapters)
    transformer.set_dumper_types([postgres.types[t].oid for t in types], pq.Format.BINARY)
    return transformer


def copy_stamp(synced_at: datetime, run_id: int) -> bytes:
    """The two stamp fields of a binary COPY row (each a 4-byte length and its value)."""
    assert _format_row_binary is not None
    out = bytearray()
    _format_row_binary((synced_at, run_id), _stamp_transformer(), out)
    return bytes(out[2:])  # past the row's 2-byte field count


def _stamp_transformer() -> Any:
    global _stamp_tx
    if _stamp_tx is None:
        _stamp_tx = copy_transformer(["timestamptz", "int8"])
    return _stamp_tx


_stamp_tx: Any = None

# Bytes of the stamp's two fields in a binary COPY row: (4 + 8) + (4 + 8).
STAMP_BYTES: Final = 24
