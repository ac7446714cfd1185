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
records are still needed (:func:`decoded`). The stamp's two fields are fixed in size in
binary ``COPY`` (8-byte timestamp, 8-byte integer), so each row is made with a
placeholder stamp whose place is kept in :attr:`EncodedRows.stamp_offsets`.

This module imports neither SQLAlchemy nor, until it formats ``COPY`` rows, psycopg: a
parser process starts with the parser alone. What the columns are comes from the writer
(:func:`batchsync.store.row_spec`) as a :class:`RowSpec`.
"""

from __future__ import annotations

import pickle
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from batchsync.jsontext import json_dumps, jsonb_dumps
from batchsync.payload import parse_batch_body

if TYPE_CHECKING:
    from batchsync.records import ParsedBatch

Dialect = Literal["postgresql", "sqlite"]

# The ParsedBatch fields encoded as rows: their calls and their transcript lines.
FIELDS: Final = ("calls", "transcripts")

_PLACEHOLDER: Final = (datetime(2000, 1, 1, tzinfo=UTC), 0)
# Bytes of the stamp's two fields in a binary COPY row: (4 + 8) + (4 + 8).
STAMP_BYTES: Final = 24
STAMP_TYPES: Final = ("timestamptz", "int8")

# Binary COPY framing (PostgreSQL's "COPY" reference, binary format).
COPY_SIGNATURE: Final = b"PGCOPY\n\xff\r\n\0" + b"\0\0\0\0" + b"\0\0\0\0"
COPY_TRAILER: Final = b"\xff\xff"


@dataclass(frozen=True)
class RowSpec:
    """What an :class:`Encoder` needs to know of the tables: the database, and for each of
    :data:`FIELDS` the binary COPY type name (``text``, ``int8``, ``timestamptz``,
    ``jsonb``...) of each column, the stamp's two included, in the table's order."""

    dialect: Dialect
    types: Mapping[str, tuple[str, ...]]


def _row_formatter() -> Callable[[Sequence[Any], Any, bytearray], None] | None:
    """psycopg's C row formatter, the one its ``Copy.write_row`` uses (None if a psycopg
    release moved it: the writer then formats the records itself)."""
    try:
        from psycopg._copy_base import format_row_binary
    except ImportError:
        return None
    return format_row_binary  # type: ignore[no-any-return]


def available(dialect: str) -> bool:
    """Whether rows for ``dialect`` can be encoded in a parser process."""
    if dialect == "postgresql":
        return _row_formatter() is not None
    return dialect == "sqlite"


def sqlite_timestamp(value: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime reads back; values are UTC already."""
    # isoformat is several times cheaper than strftime; [:26] drops the "+00:00".
    return value.isoformat(" ", "microseconds")[:26]


def sqlite_values(
    records: Iterable[tuple[Any, ...]], types: Sequence[str]
) -> Iterator[tuple[Any, ...]]:
    """``records`` (whose fields have the COPY type names ``types``) as SQLite parameters,
    one at a time: timestamps and JSON as the text SQLAlchemy reads back, the rest as is."""
    converters = [
        (index, sqlite_timestamp if kind == "timestamptz" else json_dumps)
        for index, kind in enumerate(types)
        if kind in ("timestamptz", "jsonb")
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


@dataclass(frozen=True, slots=True)
class EncodedRows:
    """One batch's rows of one table, as its driver takes them, without their stamp.

    ``count`` rows. PostgreSQL: ``data`` is binary COPY rows (no signature, no trailer),
    each ending with a placeholder stamp of :data:`STAMP_BYTES` bytes that starts at the
    matching entry of ``stamp_offsets``. SQLite: ``data`` is the pickle of a list of
    parameter tuples, the table's columns but the stamp's, timestamps and JSON as the text
    SQLAlchemy reads: a batch waiting for the writer holds a third of what the tuples take.
    """

    dialect: Dialect
    count: int
    data: bytearray | bytes
    stamp_offsets: array[int] | None = None

    def __len__(self) -> int:
        return self.count

    def stamped(self, stamp: bytes) -> bytearray:
        """The binary COPY rows (no signature, no trailer: :data:`COPY_SIGNATURE`,
        :data:`COPY_TRAILER`) with ``stamp`` (from :func:`copy_stamp`) in place of every
        placeholder: written into the rows themselves, not into a copy of them."""
        assert isinstance(self.data, bytearray)
        assert self.stamp_offsets is not None
        rows = self.data
        width = len(stamp)
        for offset in self.stamp_offsets:
            rows[offset : offset + width] = stamp
        return rows

    def sqlite_rows(self) -> list[tuple[Any, ...]]:
        """The parameter tuples, without the stamp's two columns."""
        assert self.dialect == "sqlite"
        rows: list[tuple[Any, ...]] = pickle.loads(self.data)  # noqa: S301 - made by Encoder
        return rows


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
    """Encodes records as :class:`EncodedRows` for the tables ``spec`` describes; one per
    parser process (it caches psycopg's transformers, which are not picklable)."""

    def __init__(self, spec: RowSpec) -> None:
        if not available(spec.dialect):
            raise ValueError(f"rows for {spec.dialect} cannot be encoded here")
        self.spec = spec
        self._transformers: dict[str, Any] = {}

    def encode(self, field: str, records: Sequence[tuple[Any, ...]]) -> EncodedRows:
        """``records`` of the ParsedBatch field ``field`` (one of :data:`FIELDS`)."""
        types = self.spec.types[field]
        if self.spec.dialect == "postgresql":
            return self._copy_rows(field, types, records)
        rows = list(sqlite_values(records, types[: -len(STAMP_TYPES)]))
        return EncodedRows("sqlite", len(records), pickle.dumps(rows, pickle.HIGHEST_PROTOCOL))

    def _copy_rows(
        self, field: str, types: Sequence[str], records: Sequence[tuple[Any, ...]]
    ) -> EncodedRows:
        format_row = _row_formatter()
        assert format_row is not None
        transformer = self._transformers.get(field)
        if transformer is None:
            transformer = self._transformers[field] = copy_transformer(types)
        out = bytearray()
        offsets = array("q")
        placeholder = _PLACEHOLDER
        for record in records:
            format_row(record + placeholder, transformer, out)
            offsets.append(len(out) - STAMP_BYTES)
        return EncodedRows("postgresql", len(records), out, offsets)


def copy_transformer(types: Sequence[str]) -> Any:
    """A psycopg transformer that dumps rows of ``types`` (COPY type names) in binary, JSON
    through :func:`~batchsync.jsontext.jsonb_dumps`, with no connection."""
    from psycopg import adapt, postgres, pq
    from psycopg.types.json import set_json_dumps

    adapters = adapt.AdaptersMap(postgres.adapters)
    set_json_dumps(jsonb_dumps, context=adapters)
    transformer = adapt.Transformer(adapters)
    transformer.set_dumper_types([postgres.types[t].oid for t in types], pq.Format.BINARY)
    return transformer


def copy_stamp(synced_at: datetime, run_id: int) -> bytes:
    """The two stamp fields of a binary COPY row (each a 4-byte length and its value)."""
    global _stamp_transformer
    format_row = _row_formatter()
    assert format_row is not None
    if _stamp_transformer is None:
        _stamp_transformer = copy_transformer(STAMP_TYPES)
    out = bytearray()
    format_row((synced_at, run_id), _stamp_transformer, out)
    stamp = bytes(out[2:])  # past the row's 2-byte field count
    assert len(stamp) == STAMP_BYTES
    return stamp


_stamp_transformer: Any = None
