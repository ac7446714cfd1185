"""The peer a user would pick: dlt loading the same batches' calls into the same PostgreSQL.

Runs in a virtualenv of its own (``dlt[postgres]``, ``httpx``; see bench/README.md), as a
subprocess of ``bench/run.py``. It imports nothing from batchsync and uses argparse rather
than click so that it needs no more than dlt and httpx.

What it loads: one dlt resource, ``calls``, yielding the ``call_data`` items of every
batch (``c_id`` renamed ``call_id``, ``batch_id`` added), with ``write_disposition="merge"``
and primary key ``call_id``. dlt's defaults do the rest: nested dicts are flattened into
columns and each call's ``transcripts`` list becomes the child table ``calls__transcripts``.
Batches are fetched over HTTP from the same emulator, ``--concurrency`` at a time, as
batchsync fetches them.

Prints one JSON object on stdout: the wall time of each step and the rows per table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from itertools import islice
from typing import Any

# Before dlt is imported: no anonymous usage reports; the benchmark talks to loopback only.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

import dlt
import httpx

PAGE_SIZE = 1000
FULL_DETAIL = {"include_calls": "true", "include_transcripts": "true", "include_analysis": "true"}


def iter_batch_ids(client: httpx.Client) -> Iterator[str]:
    """Every batch id, oldest first, page by page."""
    start = 0
    while True:
        params = {"from": start, "to": start + PAGE_SIZE, "limit": PAGE_SIZE, "ascending": "true"}
        response = client.get("/v1/batches", params=params)
        response.raise_for_status()
        page = response.json()["batches"]
        for entry in page:
            yield entry["batch_id"]
        if len(page) < PAGE_SIZE:
            return
        start += PAGE_SIZE


def fetch_calls(client: httpx.Client, batch_id: str) -> list[dict[str, Any]]:
    """One batch's calls, keyed by ``call_id`` whichever spelling the payload used."""
    response = client.get(f"/v1/batches/{batch_id}", params=FULL_DETAIL)
    response.raise_for_status()
    calls: list[dict[str, Any]] = response.json().get("call_data") or []
    for call in calls:
        if "call_id" not in call:
            call["call_id"] = call.pop("c_id")
        call["batch_id"] = batch_id
    return calls


def iter_batches_calls(
    base_url: str, api_key: str, concurrency: int
) -> Iterator[list[dict[str, Any]]]:
    """Each batch's calls, fetched ``concurrency`` at a time, at most that many held."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with (
        httpx.Client(
            base_url=base_url, headers={"authorization": api_key}, timeout=60, limits=limits
        ) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        pending = iter(list(iter_batch_ids(client)))
        in_flight: set[Future[list[dict[str, Any]]]] = {
            pool.submit(fetch_calls, client, batch_id) for batch_id in islice(pending, concurrency)
        }
        while in_flight:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                in_flight |= {pool.submit(fetch_calls, client, b) for b in islice(pending, 1)}
                yield future.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True, help="The emulator's URL (loopback).")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--postgres-url", required=True, help="postgresql://user@host/db")
    parser.add_argument("--dataset", default="dlt_bench", help="Schema dlt loads into.")
    parser.add_argument("--pipelines-dir", help="dlt's working directory (default: a temp dir).")
    parser.add_argument("--concurrency", type=int, default=4, help="Batch requests in flight.")
    args = parser.parse_args()

    pipelines_dir = args.pipelines_dir or tempfile.mkdtemp(prefix="bench-dlt-")

    @dlt.resource(name="calls", primary_key="call_id", write_disposition="merge")
    def calls() -> Iterator[list[dict[str, Any]]]:
        yield from iter_batches_calls(args.base_url, args.api_key, args.concurrency)

    pipeline = dlt.pipeline(
        pipeline_name="bench_bland_calls",
        destination=dlt.destinations.postgres(credentials=args.postgres_url),
        dataset_name=args.dataset,
        pipelines_dir=pipelines_dir,
    )
    started = time.perf_counter()
    pipeline.extract(calls())
    extracted = time.perf_counter()
    normalize_info = pipeline.normalize()
    normalized = time.perf_counter()
    pipeline.load()
    loaded = time.perf_counter()

    row_counts = {
        table: count
        for table, count in normalize_info.row_counts.items()
        if not table.startswith("_dlt")
    }
    json.dump(
        {
            "dlt_version": dlt.__version__,
            "rows": row_counts,
            "calls": row_counts.get("calls", 0),
            "seconds": {
                "extract": round(extracted - started, 3),
                "normalize": round(normalized - extracted, 3),
                "load": round(loaded - normalized, 3),
                "total": round(loaded - started, 3),
            },
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
