"""Where ``batchsync sync`` spends its time: a py-spy profile of one first load, summarised.

Runs ``batchsync sync --all --migrate --json`` under ``py-spy record --idle --threads``
(wall-clock samples: time spent waiting for the emulator or for PostgreSQL counts too)
into a fresh PostgreSQL database (or, with ``--database sqlite``, a SQLite file), against
the benchmark's emulator subprocess. Then it sorts every sample of each thread into a
stage of the pipeline (HTTP, JSON decoding, parsing, COPY, the upsert statement, ...) by
the innermost batchsync frame of its stack, and prints seconds and shares per stage, plus
the busiest source lines of batchsync.

With ``--concurrency 1`` (the default here) one thread does everything in turn, so the
stages add up to the wall time. With more, the fetch threads and the writer overlap and
are listed apart.

Needs py-spy (``pip install py-spy``). Example:

    /tmp/venv/bin/python bench/profile_sync.py --batches 10 --calls 10000
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click
from run import (
    BATCHSYNC,
    DEFAULT_POSTGRES_URL,
    RESULTS_DIR,
    BenchError,
    Postgres,
    child_env,
    code_under_test,
)
from serve_emulator import EmulatorProcess, Mode, Workload

import batchsync

PROFILE_DATABASE = "batchsync_bench_profile"
_STACK = re.compile(r"^thread \((?P<tid>[^)]*)\): (?P<name>[^;]*);(?P<frames>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: int

    @classmethod
    def parse(cls, text: str) -> Frame:
        match = _FRAME.match(text)
        if match is None:
            return cls(text, "", 0)
        return cls(match["func"], match["file"], int(match["line"]))

    @property
    def ours(self) -> bool:
        return self.file.startswith("batchsync/")

    def __str__(self) -> str:
        return f"{self.file}:{self.line} {self.func}"


class SourceLines:
    """Lines of batchsync's source, to name what a sampled line does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[str, list[str]] = {}

    def around(self, frame: Frame, after: int = 2) -> str:
        """The frame's line and the next ``after`` lines, as one string."""
        lines = self._files.get(frame.file)
        if lines is None:
            path = self.root / frame.file
            lines = path.read_text().splitlines() if path.exists() else []
            self._files[frame.file] = lines
        return " ".join(line.strip() for line in lines[frame.line - 1 : frame.line + after])


def stage(frames: list[Frame], source: SourceLines) -> str:
    """The pipeline stage a sampled stack belongs to, from its innermost batchsync frame."""
    ours = [i for i, f in enumerate(frames) if f.ours]
    if not ours:
        return "outside batchsync (idle pool thread, interpreter)"
    inner = frames[ours[-1]]
    deeper = frames[ours[-1] + 1 :]
    module = inner.file.removeprefix("batchsync/").removesuffix(".py")
    waiting_pg = any(f.func == "Connection.wait" and f.file.startswith("psycopg/") for f in deeper)
    if inner.func == "<module>":
        return "start-up: imports"
    if module == "db" and inner.func == "json_dumps":
        return "JSON encode of JSON columns (orjson.dumps)"
    if module == "db" or any(f.file.startswith("alembic/") for f in deeper):
        return "migrate / check schema (alembic)"
    if module == "client":
        if inner.func == "_json":
            return "JSON decode (orjson.loads)"
        if "digest" in source.around(inner, 0) or "sha256" in source.around(inner, 0):
            return "sha256 of the response body"
        return "HTTP: request, wait for the emulator, read the body"
    if module == "payload":
        return "parse payload into records (payload.py)"
    if module == "runs":
        return "run ledger (runs.py)"
    if module == "store" and "_Sqlite" in inner.func:
        return {
            "upsert": "SQLite: executemany INSERT ... ON CONFLICT",
            "_rows": "SQLite: records to driver rows (Python)",
            "_keys_of": "SQLite: SELECT the batch's stored keys",
            "delete_missing": "SQLite: DELETE of vanished rows",
        }.get(inner.func.rpartition(".")[2], f"store: {inner.func}")
    if module == "store":
        text = source.around(inner)
        copying = "copy" in inner.func.lower() or any("copy" in f.file for f in deeper)
        if copying or (inner.func.endswith("upsert") and "write_row" in text):
            return "COPY rows (into staging, or straight into the tables)"
        if "CREATE TEMP" in text or "TRUNCATE" in text:
            return "staging table: CREATE TEMP / TRUNCATE"
        if inner.func.endswith("upsert") and waiting_pg:
            return "INSERT ... ON CONFLICT from staging (upsert SQL)"
        if inner.func.endswith("delete_missing"):
            return "DELETE of vanished rows (NOT EXISTS)"
        if inner.func == "_upsert_batch":
            return "batches row: upsert"
        if inner.func in ("lock_batch", "stored_content_hash", "completed_batches"):
            return "advisory lock, stored hash, plan query"
        return f"store: {inner.func} (Python)"
    if module == "sync":
        text = source.around(inner, 0)
        if "engine.begin" in text:
            return "transaction: connect, BEGIN, COMMIT"
        if "wait(" in text:
            return "writer waits for a fetched batch"
        return f"sync: {inner.func}"
    return f"{module}: {inner.func}"


@dataclass
class Profile:
    """Samples per thread, per stage and per batchsync source line."""

    rate: int
    stages: dict[str, Counter[str]]
    lines: Counter[str]
    leaves: Counter[str]
    total: Counter[str]

    @classmethod
    def read(cls, path: Path, rate: int, source: SourceLines) -> Profile:
        stages: dict[str, Counter[str]] = defaultdict(Counter)
        lines: Counter[str] = Counter()
        leaves: Counter[str] = Counter()
        total: Counter[str] = Counter()
        for raw in path.read_text().splitlines():
            match = _STACK.match(raw)
            if match is None:
                continue
            frames = [Frame.parse(text) for text in match["frames"].split(";")]
            count = int(match["count"])
            thread = _thread_role(match["name"])
            where = stage(frames, source)
            if where.startswith("outside batchsync") and thread != "main":
                continue  # an idle worker of the fetch pool: not time anyone waits for
            stages[thread][where] += count
            total[thread] += count
            ours = [f for f in frames if f.ours]
            if ours:
                lines[f"{ours[-1]}  | {source.around(ours[-1], 0)[:70]}"] += count
            leaves[str(frames[-1])] += count
        return cls(rate, dict(stages), lines, leaves, total)

    def report(self) -> str:
        out = []
        for thread, counts in self.stages.items():
            total = self.total[thread]
            out.append(f"\n{thread} thread: {total / self.rate:.1f} s sampled")
            for name, n in counts.most_common():
                out.append(f"  {name:<54}{n / self.rate:>7.2f} s {n / total:>6.1%}")
        grand = sum(self.total.values())
        out.append("\nbusiest batchsync lines (innermost batchsync frame, all threads):")
        for name, n in self.lines.most_common(15):
            out.append(f"  {n / self.rate:>6.2f} s {n / grand:>6.1%}  {name}")
        out.append("\nbusiest leaf frames (where the sampled thread was, all threads):")
        for name, n in self.leaves.most_common(12):
            out.append(f"  {n / self.rate:>6.2f} s {n / grand:>6.1%}  {name}")
        return "\n".join(out)

    def as_json(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "seconds": {
                thread: {k: round(n / self.rate, 2) for k, n in c.most_common()}
                for thread, c in self.stages.items()
            },
            "lines": {k: round(n / self.rate, 2) for k, n in self.lines.most_common(40)},
        }


def _thread_role(name: str) -> str:
    if name == "MainThread":
        return "main"
    if name.startswith("batchsync-fetch"):
        return "fetch"
    return name


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--batches", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--calls", type=click.IntRange(min=1), default=10_000, show_default=True)
@click.option("--transcript-ratio", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1, max=64), default=1, show_default=True)
@click.option("--rate", type=click.IntRange(min=10), default=100, show_default=True)
@click.option(
    "--database",
    type=click.Choice(["postgresql", "sqlite"]),
    default="postgresql",
    show_default=True,
)
@click.option(
    "--emulator",
    "emulator_mode",
    type=click.Choice(["replay", "live"]),
    default="replay",
    show_default=True,
)
@click.option(
    "--postgres-url",
    default=DEFAULT_POSTGRES_URL,
    show_default=True,
    envvar="BENCH_POSTGRES_URL",
    show_envvar=True,
)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=RESULTS_DIR,
    show_default=True,
)
def main(
    batches: int,
    calls: int,
    transcript_ratio: float,
    concurrency: int,
    rate: int,
    database: str,
    emulator_mode: Mode,
    postgres_url: str,
    results_dir: Path,
) -> None:
    """Profile one first load with py-spy and print where the time went."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise click.UsageError("py-spy is not installed: pip install py-spy")
    postgres = Postgres.from_url(postgres_url) if database == "postgresql" else None
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    raw_path = results_dir / f"profile-{stamp}.txt"
    if postgres is not None:
        postgres.recreate(PROFILE_DATABASE)
    try:
        workload = Workload(batches, calls, transcript_ratio)
        with (
            EmulatorProcess(workload, mode=emulator_mode) as emu,
            tempfile.TemporaryDirectory() as workdir,
        ):
            env = child_env(
                BLAND_BASE_URL=emu.url,
                BLAND_API_KEY=emu.api_key,
                BATCHSYNC_DATABASE_URL=(
                    postgres.sqlalchemy_url(PROFILE_DATABASE)
                    if postgres is not None
                    else f"sqlite:///{Path(workdir) / 'profile.db'}"
                ),
            )
            argv = [
                py_spy,
                "record",
                "--idle",
                "--threads",
                f"--rate={rate}",
                "--format=raw",
                f"--output={raw_path}",
                "--",
                *BATCHSYNC,
                "sync",
                "--all",
                "--migrate",
                "--json",
                f"--concurrency={concurrency}",
            ]
            started = time.perf_counter()
            done = subprocess.run(
                argv, env=env, cwd=workdir, capture_output=True, text=True, check=False
            )
            wall = time.perf_counter() - started
    finally:
        if postgres is not None:
            postgres.drop(PROFILE_DATABASE)
    if done.returncode != 0:
        raise BenchError(f"py-spy / batchsync exited {done.returncode}:\n{done.stderr[-3000:]}")
    # py-spy prints its own lines after batchsync's JSON summary.
    summary, _ = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("{") :])
    installed = Path(batchsync.__file__).resolve().parent.parent
    profile = Profile.read(raw_path, rate, SourceLines(installed))
    click.echo(
        f"batchsync ({code_under_test()}) sync --all --migrate --concurrency {concurrency}: "
        f"{batches} x {calls:,} calls "
        f"into {database} in {wall:.1f} s under py-spy ({summary['duration_seconds']:.1f} s "
        f"in run_sync); emulator: {emulator_mode}"
    )
    click.echo(profile.report())
    summary_path = results_dir / f"profile-{stamp}.json"
    summary_path.write_text(json.dumps({"wall_seconds": wall, **profile.as_json()}, indent=2))
    click.echo(f"\nraw samples: {raw_path}\nsummary: {summary_path}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        click.echo(f"bench: error: {exc}", err=True)
        sys.exit(1)
