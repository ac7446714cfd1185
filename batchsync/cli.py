"""The ``batchsync`` command line: parse options, build the pieces, print the outcome.

Exit codes (stable; orchestrators may rely on them):

    0   every batch synced (or was unchanged / skipped)
    1   some batches failed; the others were committed
    2   usage error (bad option or argument)
    3   configuration or authentication error (missing or rejected API key, bad URL)
    4   the database is unreachable, or its schema is missing or behind
    5   the Bland API could not be used for the run as a whole (listing batches failed)
    70  internal error (a bug): the message says what; -v shows the traceback
    130 interrupted (SIGINT/SIGTERM); the batch in hand was rolled back or committed whole
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click
import orjson
from sqlalchemy import Engine, func, select

from batchsync import __version__, logs, runs
from batchsync.client import BlandClient, Parts, RetryPolicy
from batchsync.config import (
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_DATABASE_URL,
    DatabaseSettings,
    load_api,
    load_database,
    redact,
)
from batchsync.db import (
    check_schema,
    create_db_engine,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from batchsync.errors import (
    ApiError,
    AuthError,
    BatchsyncError,
    ConfigError,
    DatabaseError,
    Interrupted,
    PayloadError,
)
from batchsync.models import Base
from batchsync.privacy import PhoneMode, PhonePolicy, load_phone_policy, stores_numbers_in_clear
from batchsync.store import purge_batches, stored_phone_policies
from batchsync.sync import RunResult, Shard, SyncEvents, SyncOptions, run_sync

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_DATABASE = 4
EXIT_API = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

log = logging.getLogger("batchsync.cli")
F = TypeVar("F", bound=Callable[..., Any])


def _exit_code(exc: BatchsyncError) -> int:
    if isinstance(exc, AuthError | ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, DatabaseError):
        return EXIT_DATABASE
    if isinstance(exc, ApiError | PayloadError):
        return EXIT_API
    if isinstance(exc, Interrupted):
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL


def _fail(ctx: click.Context, message: str, code: int) -> NoReturn:
    """End with one error line on stderr (a JSON log line with --log-format json) and,
    for a command run with --json, a JSON summary on stdout, so both streams stay parseable."""
    message = redact(message)
    if _root_params(ctx).get("log_format") == "json":
        log.error("%s", message, extra={"exit_code": code})
    else:
        click.echo(f"batchsync: error: {message}", err=True)
    if ctx.meta.get("json_summary"):
        status = "interrupted" if code == EXIT_INTERRUPTED else "failed"
        click.echo(orjson.dumps({"status": status, "error": message, "exit_code": code}).decode())
    sys.exit(code)


def _root_params(ctx: click.Context) -> dict[str, Any]:
    return {**ctx.find_root().params, **ctx.meta.get("logging", {})}


class _Terminated(KeyboardInterrupt):
    """A second SIGTERM: stop now; the batch in hand rolls back, the run is recorded."""


@contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """First SIGTERM: finish the batch in hand, then stop. A second one: stop at once."""
    stop = threading.Event()

    def handle(_signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise _Terminated
        log.warning("SIGTERM: finishing the batch in hand, then stopping (again to abort it)")
        stop.set()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


database_url_option = click.option(
    "--database-url",
    envvar=ENV_DATABASE_URL,
    show_envvar=True,
    metavar="URL",
    help="SQLAlchemy URL: sqlite:///path.db or postgresql+psycopg://user@host/db "
    "[default: sqlite:///batchsync.db]",
)


def _open_database(database_url: str | None) -> tuple[DatabaseSettings, Engine]:
    settings = load_database(database_url)
    return settings, create_db_engine(settings)


class _Group(click.Group):
    """Turn our errors into one clear line and an exit code; keep secrets out of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BatchsyncError as exc:
            _fail(ctx, str(exc), _exit_code(exc))
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            verbose = _root_params(ctx).get("verbose", 0)
            if verbose:
                click.echo(redact(traceback.format_exc()), err=True)
            _fail(
                ctx,
                f"internal error, {type(exc).__name__}: {exc}"
                + ("" if verbose else " (run with -v for the traceback)"),
                EXIT_INTERNAL,
            )


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchsync")
@click.option("-v", "--verbose", count=True, help="More logging (-vv: every HTTP request).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="BATCHSYNC_LOG_FORMAT",
    show_envvar=True,
    help="Log lines on stderr as text or as JSON objects.",
)
def cli(verbose: int, quiet: bool, log_format: str) -> None:
    """Sync Bland AI phone-call batches into PostgreSQL or SQLite.

    \b
    Quick start (no account needed):
      batchsync demo                       sync the built-in emulator into ./batchsync-demo.db
    With a real account:
      export BLAND_API_KEY=...             never printed, never stored
      export BATCHSYNC_DATABASE_URL=postgresql+psycopg://user@host/db
      batchsync db upgrade                 create or migrate the tables
      batchsync sync --all                 sync every batch (incremental)

    Exit codes: 0 ok, 1 some batches failed, 2 usage, 3 configuration or API key,
    4 database unreachable or schema behind, 5 API unusable, 70 internal error,
    130 interrupted. -v, -q and --log-format work after the command too.
    """
    _configure_logging(verbose, quiet, log_format)


def _configure_logging(verbose: int, quiet: bool, log_format: str) -> None:
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, 5)
    logs.configure(level, log_format)


def _relog(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """-v/-q/--log-format given after a command: they win over those before it."""
    source = ctx.get_parameter_source(param.name or "")
    if source in (None, click.core.ParameterSource.DEFAULT):
        return
    root = ctx.find_root()
    overrides = root.meta.setdefault("logging", {})
    overrides[param.name] = value
    merged = {**root.params, **overrides}
    _configure_logging(merged["verbose"], merged["quiet"], merged["log_format"])


def _logging_params() -> list[click.Parameter]:
    return [
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_relog,
                     help="More logging (-vv: every HTTP request)."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_relog,
                     help="Only errors on stderr."),
        click.Option(["--log-format"], type=click.Choice(["text", "json"]), expose_value=False,
                     callback=_relog, help="Log lines on stderr as text or as JSON objects."),
    ]  # fmt: skip


# -- db ---------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Create, migrate and inspect the database schema (Alembic)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@database_url_option
def db_upgrade(revision: str, database_url: str | None) -> None:
    """Create the tables, or migrate them to the newest schema.

    \b
    Example:
      BATCHSYNC_DATABASE_URL=postgresql+psycopg://postgres@localhost/bland batchsync db upgrade
    """
    settings, engine = _open_database(database_url)
    before = current_revision(engine)
    upgrade(engine, revision)
    after = current_revision(engine)
    if before == after:
        click.echo(f"{settings.display_url}: schema already at {after}")
    else:
        click.echo(f"{settings.display_url}: schema upgraded from {before or 'nothing'} to {after}")


@db.command("downgrade")
@click.argument("revision")
@database_url_option
def db_downgrade(revision: str, database_url: str | None) -> None:
    """Migrate the schema down to REVISION ("base" drops every batchsync table).

    \b
    Example:
      batchsync db downgrade base
    """
    settings, engine = _open_database(database_url)
    downgrade(engine, revision)
    click.echo(f"{settings.display_url}: schema now at {current_revision(engine) or 'nothing'}")


@db.command("current")
@database_url_option
def db_current(database_url: str | None) -> None:
    """Show the database's schema revision and whether it is up to date.

    Exits 4 when the schema is missing or behind.
    """
    settings, engine = _open_database(database_url)
    current = current_revision(engine)
    head = head_revision()
    state = "up to date" if current == head else f"behind {head}: run `batchsync db upgrade`"
    click.echo(f"{settings.display_url}: {current or 'no schema'} ({state})")
    if current != head:
        sys.exit(EXIT_DATABASE)


@db.command("docs")
def db_docs() -> None:
    """Print the schema, every table, view and column described, as Markdown.

    \b
    Example:
      batchsync db docs > docs/schema.md
    """
    from batchsync.schema_docs import render_schema_markdown

    click.echo(render_schema_markdown(), nl=False)


# -- sync -------------------------------------------------------------------------------------


def _api_options(function: F) -> F:
    for option in reversed(
        [
            click.option(
                "--api-key",
                envvar=ENV_API_KEY,
                show_envvar=True,
                metavar="KEY",
                help="Bland API key (prefer the environment variable).",
            ),
            click.option(
                "--base-url",
                envvar=ENV_BASE_URL,
                show_envvar=True,
                metavar="URL",
                help="Bland API base URL [default: https://api.bland.ai]",
            ),
            click.option(
                "--timeout",
                type=click.FloatRange(min=0.1),
                default=30.0,
                show_default=True,
                envvar="BATCHSYNC_TIMEOUT",
                show_envvar=True,
                help="Seconds to wait for one response.",
            ),
            click.option(
                "--retries",
                type=click.IntRange(min=1),
                default=5,
                show_default=True,
                envvar="BATCHSYNC_RETRIES",
                show_envvar=True,
                help="Attempts per request on 429, 5xx, timeouts and connection errors.",
            ),
            click.option(
                "--max-retry-wait",
                type=click.FloatRange(min=0),
                default=60.0,
                show_default=True,
                envvar="BATCHSYNC_MAX_RETRY_WAIT",
                show_envvar=True,
                help="Cap in seconds on one wait between attempts (Retry-After included).",
            ),
        ]
    ):
        function = option(function)
    return function


def _parse_day(
    _ctx: click.Context, _param: click.Parameter, value: datetime | None
) -> datetime | None:
    return value.replace(tzinfo=UTC) if value and value.tzinfo is None else value


def _utc_date_option(name: str, help_text: str) -> Callable[[F], F]:
    """A YYYY-MM-DD[THH:MM:SS] option read as UTC."""
    return click.option(
        name,
        type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]),
        callback=_parse_day,
        help=help_text,
    )


@cli.command()
@click.argument("batch_ids", nargs=-1, metavar="[BATCH_ID]...")
@click.option("--all", "discover", is_flag=True, help="Discover every batch and sync them all.")
@click.option(
    "--refresh",
    is_flag=True,
    help="With --all, fetch again even completed batches already stored (content that "
    "has not changed is still neither parsed nor rewritten).",
)
@click.option("--calls/--no-calls", default=True, show_default=True, help="Fetch calls.")
@click.option(
    "--transcripts/--no-transcripts",
    default=True,
    show_default=True,
    envvar="BATCHSYNC_TRANSCRIPTS",
    show_envvar=True,
    help="Fetch and store call transcripts (stored ones stay; `purge` removes them).",
)
@click.option(
    "--analysis/--no-analysis",
    default=True,
    show_default=True,
    help="Fetch the batch analysis (counts, errors).",
)
@click.option("--campaign-id", help="With --all: only batches of this campaign.")
@click.option("--label", help="With --all: only batches with exactly this label.")
@_utc_date_option("--since", "With --all: only batches created at or after this UTC date.")
@_utc_date_option("--until", "With --all: only batches created before this UTC date.")
@click.option(
    "--shard",
    metavar="K/N",
    envvar="BATCHSYNC_SHARD",
    show_envvar=True,
    help="Only the batches of shard K of N (0-based, stable hash of the batch id), "
    "to spread one backfill over N workers.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=64),
    default=2,
    show_default=True,
    envvar="BATCHSYNC_CONCURRENCY",
    show_envvar=True,
    help="Batch requests in flight at once (each batch is still its own transaction). "
    "More helps against a distant API; each adds about 5 KB of memory per call of a batch.",
)
@click.option(
    "--max-requests-per-second",
    type=click.FloatRange(min=0, min_open=True),
    envvar="BATCHSYNC_MAX_REQUESTS_PER_SECOND",
    show_envvar=True,
    help="Cap on the request rate to the API [default: no cap]",
)
@click.option(
    "--phone-numbers",
    type=click.Choice([mode.value for mode in PhoneMode]),
    default=PhoneMode.KEEP.value,
    show_default=True,
    envvar="BATCHSYNC_PHONE_NUMBERS",
    show_envvar=True,
    help="Store phone numbers as they are, as a keyed hash (HMAC with "
    "BATCHSYNC_PHONE_HASH_KEY), or not at all. A run left at the default refuses to store "
    "numbers in clear over batches stored hashed or dropped.",
)
@click.option(
    "--redact-transcripts",
    is_flag=True,
    envvar="BATCHSYNC_REDACT_TRANSCRIPTS",
    show_envvar=True,
    help="Mask phone numbers and e-mail addresses written in transcript lines and call "
    "summaries, by pattern (best effort).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Fetch and validate; report what would be inserted, updated and deleted; write nothing.",
)
@click.option("--migrate", is_flag=True, help="Upgrade the schema first if it is behind.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@_api_options
@database_url_option
def sync(
    batch_ids: tuple[str, ...],
    discover: bool,
    refresh: bool,
    calls: bool,
    transcripts: bool,
    analysis: bool,
    campaign_id: str | None,
    label: str | None,
    since: datetime | None,
    until: datetime | None,
    shard: str | None,
    concurrency: int,
    max_requests_per_second: float | None,
    phone_numbers: str,
    redact_transcripts: bool,
    dry_run: bool,
    migrate: bool,
    as_json: bool,
    api_key: str | None,
    base_url: str | None,
    timeout: float,
    retries: int,
    max_retry_wait: float,
    database_url: str | None,
) -> None:
    """Sync the named batches, or every batch with --all.

    Each batch is written in one transaction: all of it or none of it. Re-running
    converges the tables to what the API says; unchanged batches are not rewritten,
    and with --all completed batches already stored are not fetched again.

    \b
    Examples:
      batchsync sync 6f1b8c2e-... 0a93d4f1-...
      batchsync sync --all --since 2025-01-01
      batchsync sync --all --no-transcripts --json | jq .status
    """
    ctx = click.get_current_context()
    ctx.meta["json_summary"] = as_json
    if discover == bool(batch_ids):
        raise click.UsageError("name one or more BATCH_IDs, or pass --all (not both)")
    if not discover and (campaign_id or label or since or until):
        raise click.UsageError("--campaign-id, --label, --since and --until only apply with --all")
    if dry_run and migrate:
        raise click.UsageError("--dry-run writes nothing, so it cannot --migrate")
    api = load_api(base_url, api_key, timeout)
    settings, engine = _open_database(database_url)
    _ensure_schema(engine, migrate)
    phones = load_phone_policy(phone_numbers, redact_transcripts=redact_transcripts)
    if ctx.get_parameter_source("phone_numbers") == click.core.ParameterSource.DEFAULT:
        _refuse_clear_numbers_over_protected(engine, phones)
    options = SyncOptions(
        batch_ids=batch_ids,
        discover=discover,
        parts=Parts(calls=calls, transcripts=transcripts, analysis=analysis),
        refresh=refresh,
        campaign_id=campaign_id,
        since=since,
        until=until,
        label=label,
        shard=Shard.parse(shard) if shard else None,
        concurrency=concurrency,
        phones=phones,
        dry_run=dry_run,
    )
    retry = RetryPolicy(attempts=retries, max_wait=max_retry_wait)
    with BlandClient(
        api,
        retry=retry,
        max_requests_per_second=max_requests_per_second,
        max_connections=max(concurrency, 1),
    ) as client:
        result = _run(engine, client, options, as_json=as_json, database=settings.display_url)
    sys.exit(EXIT_PARTIAL if result.failed else EXIT_OK)


def _refuse_clear_numbers_over_protected(engine: Engine, phones: PhonePolicy) -> None:
    """Stop a run that, only by leaving --phone-numbers unset, would un-hash stored numbers."""
    if phones.mode is not PhoneMode.KEEP:
        return
    protected = {tag for tag in stored_phone_policies(engine) if not stores_numbers_in_clear(tag)}
    if protected:
        modes = ", ".join(sorted({tag.replace(";", ":").partition(":")[0] for tag in protected}))
        raise ConfigError(
            f"batches in this database were stored with --phone-numbers {modes}; this run "
            "would store their numbers in clear. Set --phone-numbers (or "
            "BATCHSYNC_PHONE_NUMBERS) to hash or drop, or to keep to mean it"
        )


def _ensure_schema(engine: Engine, migrate: bool) -> None:
    if migrate:
        upgrade(engine)
    check_schema(engine)


def _run(
    engine: Engine, client: BlandClient, options: SyncOptions, *, as_json: bool, database: str
) -> RunResult:
    started = time.monotonic()
    with _stop_on_sigterm() as stop, _progress(enabled=not as_json) as events:
        result = run_sync(engine, client, options, events=events, stop=stop)
    elapsed = time.monotonic() - started
    summary = _summary(result, elapsed, client, database)
    if as_json:
        click.echo(orjson.dumps(summary).decode())
    else:
        _print_summary(summary)
    return result


class _ProgressEvents(SyncEvents):
    def __init__(self, bar_factory: Callable[[int], Any]) -> None:
        self._factory = bar_factory
        self.bar: Any = None
        self._calls = 0
        self._started = time.monotonic()

    def planned(self, to_fetch: int, skipped: int) -> None:
        if skipped:
            log.info("%d completed batches already stored: not fetched", skipped)
        self._started = time.monotonic()
        self.bar = self._factory(to_fetch)

    def batch_done(self, outcome: runs.BatchOutcome) -> None:
        self._calls += outcome.calls or 0
        if self.bar is not None:
            rate = self._calls / max(time.monotonic() - self._started, 1e-6)
            self.bar.update(1, f"{rate:,.0f} calls/s")


@contextmanager
def _progress(*, enabled: bool) -> Iterator[SyncEvents]:
    """A progress bar (count, rate, ETA) on stderr when it is a terminal; nothing otherwise."""
    if not (enabled and sys.stderr.isatty()):
        yield SyncEvents()
        return
    bars: list[Any] = []

    def factory(total: int) -> Any:
        bar = click.progressbar(
            length=total,
            label="syncing batches",
            file=sys.stderr,
            show_pos=True,
            show_eta=True,
            item_show_func=lambda rate: rate,
        )
        bar.__enter__()
        bars.append(bar)
        return bar

    try:
        yield _ProgressEvents(factory)
    finally:
        for bar in bars:
            bar.__exit__(None, None, None)


def _summary(
    result: RunResult, elapsed: float, client: BlandClient, database: str
) -> dict[str, Any]:
    tables: dict[str, dict[str, int]] = {}
    for outcome in result.outcomes:
        for table, change in outcome.changes.items():
            totals = tables.setdefault(table, {"inserted": 0, "updated": 0, "deleted": 0})
            totals["inserted"] += change.inserted
            totals["updated"] += change.updated
            totals["deleted"] += change.deleted
    return {
        "run_id": result.run_id,
        "status": result.status,
        "dry_run": result.run_id is None,
        "database": database,
        "batches": {
            status: result.count(status)
            for status in (runs.SYNCED, runs.UNCHANGED, runs.SKIPPED, runs.BATCH_FAILED)
        },
        "failed": [{"batch_id": o.batch_id, "error": o.error} for o in result.failed],
        "tables": tables,
        "http": {
            "requests": client.stats.requests,
            "retries": client.stats.retries,
            "bytes": client.stats.bytes_received,
        },
        "started_at": result.started_at.isoformat(),
        "finished_at": result.finished_at.isoformat() if result.finished_at else None,
        "duration_seconds": round(elapsed, 3),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    batches = summary["batches"]
    run = "dry run (nothing written)" if summary["dry_run"] else f"run {summary['run_id']}"
    click.echo(
        f"{run} {summary['status']} in {summary['duration_seconds']:.1f}s: "
        f"{batches['synced']} batches synced, {batches['unchanged']} unchanged, "
        f"{batches['skipped']} skipped, {batches['failed']} failed"
    )
    for table, c in summary["tables"].items():
        click.echo(
            f"  {table:<20} {c['inserted']:>8} inserted {c['updated']:>8} updated "
            f"{c['deleted']:>8} deleted"
        )
    for failure in summary["failed"]:
        click.echo(f"  failed: {failure['error']}")


# -- runs -------------------------------------------------------------------------------------


@cli.group("runs", invoke_without_command=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@database_url_option
@click.pass_context
def runs_(ctx: click.Context, limit: int, as_json: bool, database_url: str | None) -> None:
    """List recent sync runs and their outcome; `runs show ID` details one.

    \b
    Example:
      batchsync runs --limit 5
    """
    ctx.obj = database_url
    if ctx.invoked_subcommand is not None:
        return
    _, engine = _open_database(database_url)
    check_schema(engine)
    recent = runs.list_runs(engine, limit)
    if as_json:
        click.echo(orjson.dumps(recent, default=str, option=orjson.OPT_INDENT_2).decode())
        return
    if not recent:
        click.echo("no runs yet")
        return
    click.echo(f"{'id':>5}  {'started (UTC)':<19}  {'status':<11} synced unchanged skipped failed")
    for run in recent:
        click.echo(
            f"{run['id']:>5}  {run['started_at']:%Y-%m-%d %H:%M:%S}  {run['status']:<11} "
            f"{run['batches_synced']:>6} {run['batches_unchanged']:>9} "
            f"{run['batches_skipped']:>7} {run['batches_failed']:>6}"
        )


@runs_.command("show")
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@database_url_option
@click.pass_obj
def runs_show(
    parent_database_url: str | None, run_id: int, as_json: bool, database_url: str | None
) -> None:
    """Show one run: its options, outcome, and each batch's result.

    \b
    Example:
      batchsync runs show 12
    """
    _, engine = _open_database(database_url or parent_database_url)
    check_schema(engine)
    found = runs.get_run(engine, run_id)
    if found is None:
        raise click.BadParameter(f"there is no run {run_id}", param_hint="RUN_ID")
    run, batches = found
    if as_json:
        click.echo(
            orjson.dumps(
                {**run, "batches": batches}, default=str, option=orjson.OPT_INDENT_2
            ).decode()
        )
        return
    for key, value in run.items():
        click.echo(f"{key:>18}: {value}")
    for batch in batches:
        line = f"  {batch['batch_id']}  {batch['status']}"
        if batch["error"]:
            line += f"  {batch['error']}"
        click.echo(line)


# -- purge ------------------------------------------------------------------------------------


@cli.command()
@click.option("--batch", "batch_ids", multiple=True, metavar="ID", help="A batch to delete.")
@_utc_date_option("--before", "Delete every batch created before this UTC date.")
@click.option(
    "--older-than",
    type=click.IntRange(min=1),
    metavar="DAYS",
    help="Delete every batch created more than DAYS days ago (for retention jobs).",
)
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@database_url_option
def purge(
    batch_ids: tuple[str, ...],
    before: datetime | None,
    older_than: int | None,
    dry_run: bool,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Delete batches and all their rows (calls, transcripts, counts, errors).

    For retention policies. Runs in one transaction and reports what it removed.
    A later `sync` brings a purged batch back unless it is excluded there too.

    \b
    Examples:
      batchsync purge --batch 6f1b8c2e-...
      batchsync purge --before 2025-01-01 --dry-run
      batchsync purge --older-than 90

    Batches without a creation time are never matched by a date.
    """
    if before is not None and older_than is not None:
        raise click.UsageError("give --before or --older-than, not both")
    if older_than is not None:
        before = datetime.now(UTC) - timedelta(days=older_than)
    if not batch_ids and before is None:
        raise click.UsageError("name batches with --batch ID, or give --before / --older-than")
    _, engine = _open_database(database_url)
    check_schema(engine)
    with engine.connect() as connection, connection.begin() as transaction:
        deleted = purge_batches(connection, batch_ids=batch_ids, before=before)
        if dry_run:
            transaction.rollback()
    if as_json:
        click.echo(orjson.dumps({"dry_run": dry_run, "deleted": deleted}).decode())
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {deleted['batches']} batches:")
    for table, count in deleted.items():
        click.echo(f"  {table:<20} {count:>8} rows")


# -- emulator and demo -----------------------------------------------------------------------


def _emulator_options(function: F) -> F:
    for option in reversed(
        [
            click.option("--seed", type=int, default=0, show_default=True, help="Data seed."),
            click.option(
                "--batches",
                type=click.IntRange(min=0),
                default=5,
                show_default=True,
                help="Number of batches.",
            ),
            click.option(
                "--calls",
                type=click.IntRange(min=0),
                default=20,
                show_default=True,
                help="Calls per batch.",
            ),
        ]
    ):
        function = option(function)
    return function


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8787, show_default=True)
@click.option(
    "--api-key", default="emulator-key", show_default=True, help="The key the emulator accepts."
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="SPEC",
    help="Inject a fault, e.g. 'BATCH_ID:rate_limitx3:retry_after=1' or '*list*:server_error'.",
)
@_emulator_options
def emulator(
    host: str, port: int, api_key: str, faults: tuple[str, ...], seed: int, batches: int, calls: int
) -> None:
    """Serve the built-in Bland API emulator on a loopback address.

    Deterministic batches (same seed, same data) with the real API's quirks, for trying
    batchsync and its orchestration offline.

    \b
    Example:
      batchsync emulator --port 8787 &
      BLAND_BASE_URL=http://127.0.0.1:8787 BLAND_API_KEY=emulator-key batchsync sync --all
    """
    from batchsync.emulator import Emulator, parse_fault

    emu = Emulator(seed=seed, batches=batches, calls_per_batch=calls, api_key=api_key)
    for spec in faults:
        try:
            target, fault = parse_fault(spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--fault") from None
        emu.inject(target, fault)
    try:
        server = emu.serve(host, port)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--host") from None
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    with server:
        click.echo(f"Bland API emulator on {server.url} (API key: {api_key}); Ctrl-C stops it")
        click.echo(f"  BLAND_BASE_URL={server.url} BLAND_API_KEY={api_key} batchsync sync --all")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopped")


@cli.command()
@click.option(
    "--database",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("batchsync-demo.db"),
    show_default=True,
    help="SQLite file to sync into.",
)
@_emulator_options
def demo(database: Path, seed: int, batches: int, calls: int) -> None:
    """Sync the built-in emulator into a local SQLite file and show what landed.

    Needs no account and no network: the emulator runs in-process. Run it twice to
    see an incremental re-sync.

    \b
    Example:
      batchsync demo && sqlite3 batchsync-demo.db 'select * from batches'
    """
    from batchsync.emulator import Emulator

    emu = Emulator(seed=seed, batches=batches, calls_per_batch=calls)
    settings, engine = _open_database(f"sqlite:///{database}")
    upgrade(engine)
    api = load_api("http://bland-emulator.local", emu.api_key)
    click.echo(f"Syncing {batches} emulated batches into {database} ...")
    with BlandClient(api, transport=emu.transport()) as client:
        result = _run(
            engine, client, SyncOptions(discover=True), as_json=False, database=settings.display_url
        )
    click.echo(f"\nRows in {database}:")
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            count = connection.execute(select(func.count()).select_from(table)).scalar_one()
            click.echo(f"  {table.name:<20} {count:>8}")
    click.echo(
        f"\nTry: sqlite3 -header -column {database} "
        "'select answered_by, count(*) from calls group by 1'"
    )
    sys.exit(EXIT_PARTIAL if result.failed else EXIT_OK)


def _leaf_commands(group: click.Group) -> Iterator[click.Command]:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            yield command
            yield from _leaf_commands(command)
        else:
            yield command


for _command in _leaf_commands(cli):
    _command.params.extend(_logging_params())


def main() -> None:
    """Entry point of the ``batchsync`` script."""
    if hasattr(signal, "SIGPIPE"):
        # `batchsync ... | head` should end quietly, like any Unix tool.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    cli(prog_name="batchsync")
