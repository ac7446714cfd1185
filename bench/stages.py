"""Per-call cost of each stage between a batch body and the rows handed to the driver.

Generates emulator batches (as ``bench/run.py`` serves them), then times, per call, in one
process and with no database: decoding the body (``orjson.loads``), parsing the decoded
body into records (``payload.parse_batch``), both at once as the client does
(``payload.parse_batch_body``), the streaming parser used for large bodies
(``payload.parse_batch_stream``), and formatting the records as the SQLite writer and the
PostgreSQL COPY writer hand them to their drivers, and the trip of the records from a
parser process (``--parse-workers``) to the writer's. Prints microseconds per call, the best
of ``--repeat`` runs; asserts nothing.

Example:

    .venv/bin/python bench/stages.py --batches 4 --calls 10000
"""

from __future__ import annotations

import gc
import pickle
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click
import orjson
import psycopg
from psycopg.types.json import set_json_dumps
from serve_emulator import Workload, _detail_request
from sqlalchemy.dialects import postgresql

from batchsync import store
from batchsync.payload import ParsedBatch, parse_batch, parse_batch_body, parse_batch_stream

try:  # parser processes, in releases that have them
    from batchsync import parse_pool
except ImportError:
    parse_pool = None  # type: ignore[assignment]

try:  # rows encoded in the parser processes, in releases that have them
    from batchsync import encoded
except ImportError:
    encoded = None  # type: ignore[assignment]


def copy_types(child: Any, dialect: Any) -> list[str]:
    """The binary COPY types of a table's columns, wherever this release keeps the rule."""
    if hasattr(store, "copy_types"):
        return list(store.copy_types(child))
    return [store._copy_type(c, dialect) for c in child.columns]  # type: ignore[attr-defined]


# What the PostgreSQL writer sets for jsonb, when this release has one.
JSONB_DUMPS: Callable[[Any], Any] | None = getattr(store, "jsonb_dumps", None)


# Whether the timed stages run with the cyclic collector off, as batchsync runs them in
# releases that pause it (batchsync.gcpause); set by --gc.
GC_PAUSED = True


def best(repeat: int, run: Callable[[], Any]) -> float:
    """The shortest of ``repeat`` timed runs, in seconds (the least disturbed by others)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        if GC_PAUSED:
            gc.disable()
        try:
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
    return min(times)


def sqlite_rows(parsed: list[ParsedBatch]) -> None:
    """Records as the SQLite writer turns them into driver rows (timestamps, JSON text)."""
    writer = store._SqliteRowWriter.__new__(store._SqliteRowWriter)
    writer.stamp = (datetime(2026, 1, 1, tzinfo=UTC), 1)
    for batch in parsed:
        for child, records in ((store.CALLS, batch.calls), (store.TRANSCRIPTS, batch.transcripts)):
            if hasattr(writer, "_stamped"):
                rows = writer._stamped(writer._values(child, records or []))
            else:  # releases before driver rows came from the parser processes
                rows = writer._rows(child, records or [])  # type: ignore[attr-defined]
            for _ in rows:
                pass


def copy_rows(parsed: list[ParsedBatch], json_dumps: Callable[[Any], Any] | None) -> None:
    """Records as binary COPY rows, by psycopg's own formatter (what ``Copy.write_row``
    uses), with no server; ``json_dumps`` as set for jsonb (None: psycopg's default)."""
    from psycopg._copy_base import BinaryFormatter

    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    stamp = (datetime(2026, 1, 1, tzinfo=UTC), 1)
    for child, attr in ((store.CALLS, "calls"), (store.TRANSCRIPTS, "transcripts")):
        adapters = psycopg.adapt.AdaptersMap(psycopg.adapters)
        if json_dumps is not None:
            set_json_dumps(json_dumps, context=adapters)
        transformer = psycopg.adapt.Transformer(adapters)
        types = copy_types(child, dialect)
        transformer.set_dumper_types(
            [adapters.types[t].oid for t in types], psycopg.pq.Format.BINARY
        )
        formatter = BinaryFormatter(transformer)
        for batch in parsed:
            for record in getattr(batch, attr) or []:
                formatter.write_row(record + stamp)


@click.command()
@click.option("--batches", default=4, show_default=True)
@click.option("--calls", default=10000, show_default=True, help="Per batch.")
@click.option("--transcript-ratio", default=0.5, show_default=True)
@click.option("--repeat", default=3, show_default=True)
@click.option(
    "--gc",
    "collector",
    type=click.Choice(["paused", "on"]),
    default="paused",
    show_default=True,
    help="paused: the cyclic collector off during each timed stage, as batchsync runs "
    "them; on: Python's default, as releases before the pause ran.",
)
def main(batches: int, calls: int, transcript_ratio: float, repeat: int, collector: str) -> None:
    """Print the per-call microseconds of each stage."""
    global GC_PAUSED
    GC_PAUSED = collector == "paused"
    emulator = Workload(batches, calls, transcript_ratio).emulator()
    bodies = [(b, emulator.handle(_detail_request(b)).content) for b in emulator.batch_ids()]
    total = sum(len(orjson.loads(body).get("call_data") or []) for _, body in bodies)
    decoded = [(b, orjson.loads(body)) for b, body in bodies]
    parsed = [parse_batch_body(body, batch_id=b) for b, body in bodies]
    packed = [
        pickle.dumps(parse_pool._packed(p), pickle.HIGHEST_PROTOCOL)
        for p in (parsed if parse_pool is not None else [])
    ]
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("decode (orjson.loads)", lambda: [orjson.loads(body) for _, body in bodies]),
        ("parse decoded body into records",
         lambda: [parse_batch(r, batch_id=b) for b, r in decoded]),
        ("decode + parse (parse_batch_body)",
         lambda: [parse_batch_body(x, batch_id=b) for b, x in bodies]),
        ("streaming parse (parse_batch_stream)", lambda: [
            parse_batch_stream([x[i : i + 65536] for i in range(0, len(x), 65536)], batch_id=b)
            for b, x in bodies
        ]),
        ("format SQLite rows", lambda: sqlite_rows(parsed)),
        ("format COPY rows, psycopg's json.dumps", lambda: copy_rows(parsed, None)),
        ("format COPY rows, batchsync's jsonb", lambda: copy_rows(parsed, JSONB_DUMPS)),
    ]  # fmt: skip
    if encoded is not None and parse_pool is not None:
        stamp = (datetime(2026, 1, 1, tzinfo=UTC), 1)
        trips = {
            dialect: [
                pickle.dumps(parse_pool._packed(p, encoded.Encoder(store.row_spec(dialect))), 5)
                for p in parsed
            ]
            for dialect in ("postgresql", "sqlite")
        }

        def encode(dialect: encoded.Dialect) -> None:
            encoder = encoded.Encoder(store.row_spec(dialect))
            for p in parsed:
                pickle.dumps(parse_pool._packed(p, encoder), pickle.HIGHEST_PROTOCOL)

        def receive(dialect: encoded.Dialect) -> None:
            for x in trips[dialect]:
                batch = parse_pool._unpacked(pickle.loads(x))  # noqa: S301
                assert batch.encoded is not None
                for rows in (batch.encoded.calls, batch.encoded.transcripts):
                    if rows is None:
                        continue
                    if dialect == "postgresql":
                        rows.stamped(encoded.copy_stamp(*stamp))
                    else:
                        for row in rows.sqlite_rows():
                            row + stamp

        stages += [
            ("encoded COPY rows: encode + pickle", lambda: encode("postgresql")),
            ("encoded COPY rows: unpickle + stamp", lambda: receive("postgresql")),
            ("encoded SQLite rows: encode + pickle", lambda: encode("sqlite")),
            ("encoded SQLite rows: unpickle + stamp", lambda: receive("sqlite")),
        ]
    if parse_pool is not None:
        stages[4:4] = [
            ("pool: pack + pickle (worker)", lambda: [
                pickle.dumps(parse_pool._packed(p), pickle.HIGHEST_PROTOCOL) for p in parsed
            ]),
            # Our own bytes, just pickled: S301 is about untrusted input.
            ("pool: unpickle + rebuild (writer)", lambda: [
                parse_pool._unpacked(pickle.loads(x)) for x in packed  # noqa: S301
            ]),
        ]  # fmt: skip
    click.echo(f"{batches} x {calls} calls ({total} calls), best of {repeat}")
    click.echo(f"{'stage':<40} {'us/call':>8}")
    for name, run in stages:
        click.echo(f"{name:<40} {best(repeat, run) / total * 1e6:>8.2f}")


if __name__ == "__main__":
    main()
