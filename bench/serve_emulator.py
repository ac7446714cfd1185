"""The benchmarks' Bland API: the package's emulator in a process of its own, on loopback.

A separate process so that generating and serving payloads is not charged to the process
being measured (on a 2-core machine it still competes for the same cores; the benchmark
reports how much CPU it used).

Two modes:

- ``replay`` (default): every batch's detail response, as requested with all parts, is
  generated once before the server reports ready, and then served from memory. The bytes
  are exactly those the emulator would generate on each request (the emulator is a pure
  function of seed, batch and revision), but serving them costs next to no CPU, so the
  measurement is of the client, not of the fake API. For v2 batches (``--v2-batches``),
  every answer a first load asks for (the v2 list, each batch, its logs, its calls pages
  and each call's detail) is recorded up front by running batchsync's own v2 source
  against the emulator in this process, so the replayed requests are exactly those the
  client sends; any other request is answered live.
- ``live``: the emulator generates each payload on each request, as ``batchsync emulator``
  does (about 0.35 s of CPU per 10,000-call batch).

Run by :class:`EmulatorProcess` (``python bench/serve_emulator.py --batches ... --port 0``):
it prints one JSON line (``url``, ``pid``, ``prepare_seconds``, ``payload_bytes``) on stdout
once it serves, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import click
import httpx

from batchsync.bland.http import BlandHttp
from batchsync.bland.source import Parts
from batchsync.bland.v2 import V2Source
from batchsync.config import load_api
from batchsync.emulator import Emulator

API_KEY = "emulator-key"
Mode = Literal["replay", "live"]
# The query batchsync sends for a full batch (calls, transcripts and analysis), as a key.
FULL_DETAIL_QUERY = (
    ("include_analysis", "true"),
    ("include_calls", "true"),
    ("include_transcripts", "true"),
)
# A replayed answer's key: the URL path and the query's (name, value) pairs, sorted.
ReplyKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Workload:
    """What the emulator serves: the arguments of :class:`~batchsync.emulator.Emulator`.

    ``batches`` x ``calls`` v1 batches and ``v2_batches`` x ``v2_calls`` v2 batches (the
    v2 revision does not change: revisions move v1 calls only).
    """

    batches: int
    calls: int
    transcript_ratio: float = 0.5
    revision: int = 0
    changed_fraction: float = 0.1
    seed: int = 0
    v2_batches: int = 0
    v2_calls: int = 0

    def emulator(self) -> Emulator:
        return Emulator(**self._arguments())

    def _arguments(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batches": self.batches,
            "calls_per_batch": self.calls,
            "api_key": API_KEY,
            "transcript_ratio": self.transcript_ratio,
            "revision": self.revision,
            "changed_fraction": self.changed_fraction,
            "v2_batches": self.v2_batches,
            "v2_calls_per_batch": self.v2_calls,
        }

    def args(self) -> list[str]:
        return [
            f"--batches={self.batches}",
            f"--calls={self.calls}",
            f"--transcript-ratio={self.transcript_ratio}",
            f"--revision={self.revision}",
            f"--changed-fraction={self.changed_fraction}",
            f"--seed={self.seed}",
            f"--v2-batches={self.v2_batches}",
            f"--v2-calls={self.v2_calls}",
        ]


def reply_key(request: httpx.Request) -> ReplyKey:
    """The key a request's replayed answer is found under."""
    return request.url.path, tuple(sorted(request.url.params.multi_items()))


def _detail_request(batch_id: str) -> httpx.Request:
    return httpx.Request(
        "GET",
        f"http://bland-emulator.local/v1/batches/{batch_id}",
        params=dict(FULL_DETAIL_QUERY),
        headers={"authorization": API_KEY},
    )


def _generate(workload: Workload, batch_ids: list[str]) -> list[tuple[str, bytes, str]]:
    """Full detail responses of some batches: (batch_id, body, content type)."""
    emu = workload.emulator()
    replies = []
    for batch_id in batch_ids:
        response = emu.handle(_detail_request(batch_id))
        if response.status_code != 200:
            raise RuntimeError(f"emulator answered {response.status_code} for {batch_id}")
        replies.append((batch_id, response.content, response.headers["content-type"]))
    return replies


class ReplayEmulator(Emulator):
    """An emulator that answers the requests of a first load from responses made up front:
    full v1 batch details, and everything batchsync's v2 source asks for."""

    def __init__(self, workload: Workload) -> None:
        super().__init__(**workload._arguments())
        self._workload = workload
        self._replies: dict[ReplyKey, httpx.Response] = {}

    def prepare(self, workers: int) -> int:
        """Generate every answer to replay (v1 details on ``workers`` processes, v2 answers
        in this one); return their bytes."""
        ids = self.batch_ids()
        chunks = [ids[i::workers] for i in range(workers) if ids[i::workers]]
        if chunks:
            with ProcessPoolExecutor(max_workers=len(chunks)) as pool:
                for replies in pool.map(_generate, [self._workload] * len(chunks), chunks):
                    for batch_id, body, content_type in replies:
                        key = (f"/v1/batches/{batch_id}", FULL_DETAIL_QUERY)
                        self._replies[key] = httpx.Response(
                            200, content=body, headers={"content-type": content_type}
                        )
        if self.v2.batches:
            self._record_v2()
        return sum(len(r.content) for r in self._replies.values())

    def _record_v2(self) -> None:
        """Run a first load's fetches of every v2 batch, with call details, against this
        emulator in-process, keeping each successful answer under its request's key."""

        def record(request: httpx.Request) -> httpx.Response:
            response = Emulator.handle(self, request)
            if response.status_code == 200:
                # A copy: the client that reads this answer rebinds its stream.
                self._replies[reply_key(request)] = httpx.Response(
                    200, content=response.content, headers=response.headers
                )
            return response

        api = load_api("http://bland-emulator.local", API_KEY)
        with BlandHttp(api, transport=httpx.MockTransport(record)) as http:
            source = V2Source(http)
            for summary in list(source.iter_batches()):
                source.fetch_batch(summary.batch_id, Parts())

    def replays(self, request: httpx.Request) -> bool:
        """Whether a prepared answer is kept for this request's path and query."""
        return reply_key(request) in self._replies

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Serve a prepared response when auth, path and query match; otherwise answer as usual."""
        if request.method == "GET" and request.headers.get("authorization") == self.api_key:
            reply = self._replies.get(reply_key(request))
            if reply is not None:
                return reply
        return super().handle(request)


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("--batches", type=click.IntRange(min=0), required=True, help="v1 batches.")
@click.option("--calls", type=click.IntRange(min=0), required=True, help="Calls per v1 batch.")
@click.option("--transcript-ratio", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--revision", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--changed-fraction", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mode", type=click.Choice(["replay", "live"]), default="replay", show_default=True)
@click.option("--v2-batches", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--v2-calls", type=click.IntRange(min=0), default=0, show_default=True, help="Per v2 batch."
)
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True)
def main(
    batches: int,
    calls: int,
    transcript_ratio: float,
    revision: int,
    changed_fraction: float,
    seed: int,
    mode: Mode,
    v2_batches: int,
    v2_calls: int,
    port: int,
) -> None:
    """Serve the emulator on 127.0.0.1 until SIGTERM; print a JSON line when ready.

    \b
    Example:
      python bench/serve_emulator.py --batches 10 --calls 1000 --mode live
      python bench/serve_emulator.py --batches 0 --calls 0 --v2-batches 4 --v2-calls 500
    """
    workload = Workload(
        batches, calls, transcript_ratio, revision, changed_fraction, seed, v2_batches, v2_calls
    )
    started = time.perf_counter()
    emu: Emulator
    if mode == "replay":
        replay = ReplayEmulator(workload)
        payload_bytes = replay.prepare(workers=os.cpu_count() or 1)
        emu = replay
    else:
        emu, payload_bytes = workload.emulator(), 0
    prepare_seconds = time.perf_counter() - started
    signal.signal(signal.SIGTERM, _stop)
    with emu.serve("127.0.0.1", port) as server:
        ready = {
            "url": server.url,
            "pid": os.getpid(),
            "mode": mode,
            "prepare_seconds": round(prepare_seconds, 3),
            "payload_bytes": payload_bytes,
        }
        click.echo(json.dumps(ready), nl=True)
        sys.stdout.flush()
        server.serve_forever()


class EmulatorProcess:
    """Start ``serve_emulator.py`` as a subprocess for a workload; a context manager."""

    def __init__(self, workload: Workload, *, mode: Mode = "replay") -> None:
        self.workload = workload
        self.mode = mode
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), f"--mode={mode}", *workload.args()],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self._process.pid
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError(f"the emulator process exited ({self._process.returncode})")
        self.ready: dict[str, Any] = json.loads(line)
        self.url: str = self.ready["url"]
        self.api_key = API_KEY

    def close(self) -> None:
        """Stop the emulator process and wait for it."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
