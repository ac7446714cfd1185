"""The ``batchsync`` command line: parse options, build the pieces, print the outcome.

Exit codes (stable; orchestrators may rely on them):

    0   every batch synced (or was unchanged / skipped)
    1   some batches failed; the others were committed
    2   usage error (bad option or argument, unknown revision, --yes missing off a terminal)
    3   configuration or authentication error (missing, malformed or rejected API key, bad
        URL or option value; the database refused its user, password, database or port)
    4   the database is unreachable, missing (SQLite file) or read-only, its schema is missing
        or behind, or a table name it needs belongs to another application
    5   the Bland API could not be used for the run as a whole (listing batches failed, or
        it stopped answering: 3 batches in a row unreachable after their retries)
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
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar, cast

import click
import orjson
from sqlalchemy import Engine

from batchsync import __version__, encoded, logs, runs, store
from batchsync.bland.auto import API_CHOICES, ApiChoice, build_source
from batchsync.bland.http import BlandHttp, RetryPolicy
from batchsync.bland.source import BatchSource, BodyParser, Parts
from batchsync.bland.v2 import DETAIL_CONCURRENCY
from batchsync.config import (
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_DATABASE_URL,
    ENV_SCHEMA,
    DatabaseSettings,
    load_api,
    load_database,
    redact,
)
from batchsync.db import (
    DowngradePlan,
    check_schema,
    check_writable,
    create_db_engine,
    current_revision,
    describe_location,
    downgrade,
    head_revision,
    plan_downgrade,
    require_sqlite_file,
    upgrade,
)
from batchsync.errors import (
    ApiError,
    AuthError,
    BadArgument,
    BatchsyncError,
    ConfigError,
    DatabaseError,
    Interrupted,
    PayloadError,
)
from batchsync.parse_pool import ParsePool, default_parse_workers
from batchsync.payload import parse_batch_body, printable
from batchsync.privacy import (
    PhoneMode,
    load_phone_policy,
    refuse_clear_numbers_over_protected,
    refuse_partial_switch,
)
from batchsync.sync import RunResult, Shard, SyncEvents, SyncOptions, run_sync, utcnow

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
    if isinstance(exc, BadArgument):
        return EXIT_USAGE
    if isinstance(exc, AuthError | ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, DatabaseError):
        return EXIT_DATABASE
    if isinstance(exc, ApiError | PayloadError):
        return EXIT_API
    if isinstance(exc, Interrupted):
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL


def _echo(text: str = "", *, err: bool = False, nl: bool = True) -> None:
    """Print, secrets redacted: every line batchsync prints goes through here."""
    click.echo(redact(text), err=err, nl=nl)


def _echo_json(value: Any, *, indent: bool = False) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    _echo(orjson.dumps(value, default=str, option=option).decode())


def _fail(ctx: click.Context, message: str, code: int) -> NoReturn:
    """End with one error line on stderr (a JSON log line with --log-format json) and,
    for a command run with --json, a JSON summary on stdout, so both streams stay parseable."""
    message = redact(message)
    if _root_params(ctx).get("log_format") == "json":
        log.error("%s", message, extra={"exit_code": code})
    else:
        _echo(f"batchsync: error: {message}", err=True)
    if ctx.meta.get("json_summary"):
        _echo_json(_failure_json(message, code, ctx.meta.get("run_id"), ctx.meta.get("outcomes")))
    sys.exit(code)


def _failure_json(
    message: str,
    code: int,
    run_id: int | None = None,
    outcomes: list[runs.BatchOutcome] | None = None,
) -> dict[str, Any]:
    """The one JSON object a --json command prints when it ends in an error. A sync that
    stopped part-way (exit 4, 5, 130) also says what it did before: the same ``batches``,
    ``failed`` and ``tables`` keys as a finished run's summary (``outcomes``: the batches
    whose outcome was recorded before it stopped)."""
    status = "interrupted" if code == EXIT_INTERRUPTED else "failed"
    summary: dict[str, Any] = {"status": status, "run_id": run_id}
    if outcomes is not None:
        done = RunResult(run_id=run_id, status=status, started_at=utcnow(), outcomes=outcomes)
        partial = done.as_json()
        summary.update(
            batches=partial["batches"], failed=partial["failed"], tables=partial["tables"]
        )
    return {**summary, "error": message, "exit_code": code}


def _json_option(help_text: str) -> Callable[[F], F]:
    """--json: print one JSON object on stdout, on success and on every error alike."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.meta["json_summary"] = True
        return value

    return click.option(
        "--json", "as_json", is_flag=True, is_eager=True, callback=remember, help=help_text
    )


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


schema_option = click.option(
    "--schema",
    envvar=ENV_SCHEMA,
    show_envvar=True,
    metavar="NAME",
    help="PostgreSQL only: keep every batchsync table and view, and its version table, in "
    "this schema (created when missing) [default: the connection's own]",
)


def _open_database(
    database_url: str | None,
    schema: str | None = None,
    *,
    read_only: bool = False,
    creates: bool = True,
    can_migrate: bool = False,
) -> tuple[DatabaseSettings, Engine]:
    """Build the engine; ``read_only`` for commands that only read (on SQLite: no write
    lock, never waits for a writer, and a missing file is reported, not created); without
    ``creates``, a missing SQLite file or folder is reported rather than created too."""
    settings = load_database(database_url, schema)
    if not creates:
        require_sqlite_file(settings, can_migrate=can_migrate)
    return settings, create_db_engine(settings, read_only=read_only)


def _usage_line(exc: click.ClickException) -> str:
    """A usage error as one line, pointing at the --help of the command it concerns."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if not isinstance(exc, click.UsageError) or ctx is None:
        return message
    words = ["batchsync", *ctx.command_path.split()[1:]]
    return f"{message} (see `{' '.join(words)} --help`)"


class _Group(click.Group):
    """Turn our errors into one clear line and an exit code; keep secrets out of tracebacks."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; a usage error, which click raises before any command runs,
        still ends with one line on stderr, exit 2, and with --json, the JSON object."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            _echo(f"batchsync: error: {_usage_line(exc)}", err=True)
            if "--json" in argv:
                _echo_json(_failure_json(exc.format_message(), exc.exit_code))
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            _echo("Aborted!", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else EXIT_OK)

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
                _echo(traceback.format_exc(), err=True)
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
    """Create, migrate and inspect the database schema (Alembic).

    \b
    Example:
      batchsync db upgrade && batchsync db current
    """


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@database_url_option
@schema_option
def db_upgrade(revision: str, database_url: str | None, schema: str | None) -> None:
    """Create the tables, or migrate them to the newest schema.

    \b
    Example:
      BATCHSYNC_DATABASE_URL=postgresql+psycopg://postgres@localhost/bland batchsync db upgrade
    """
    _, engine = _open_database(database_url, schema)
    before = current_revision(engine)
    upgrade(engine, revision)
    after = current_revision(engine)
    where = describe_location(engine)
    if before == after:
        _echo(f"{where}: schema already at {after}")
    else:
        _echo(f"{where}: schema upgraded from {before or 'nothing'} to {after}")


yes_option = click.option(
    "--yes", "-y", is_flag=True, help="Do it without asking (required when not on a terminal)."
)


def _confirm(question: str, *, yes: bool) -> bool:
    """Ask on a terminal; elsewhere require --yes (a usage error without it)."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise click.UsageError(
            "this deletes data and there is no terminal to ask on: pass --yes to confirm "
            "(or --dry-run to see what would go)"
        )
    if click.confirm(question, default=False, err=True):
        return True
    _echo("cancelled: nothing was changed", err=True)
    return False


@db.command("downgrade")
@click.argument("revision")
@click.option(
    "--dry-run", is_flag=True, help="List the revisions it would undo and what they drop."
)
@yes_option
@database_url_option
@schema_option
def db_downgrade(
    revision: str, dry_run: bool, yes: bool, database_url: str | None, schema: str | None
) -> None:
    """Migrate the schema down to REVISION ("base" drops every batchsync table).

    A downgrade that drops tables, views or columns drops their data with them: it asks
    first on a terminal, and needs --yes anywhere else. One that drops nothing (0004 -> 0003
    only restores a foreign key) runs without asking.

    \b
    Examples:
      batchsync db downgrade 0001 --dry-run
      batchsync db downgrade base --yes
    """
    _, engine = _open_database(database_url, schema)
    where = describe_location(engine)
    plan = plan_downgrade(engine, revision)
    if dry_run or not plan.revisions:
        _print_downgrade_plan(where, plan, dry_run=dry_run)
        return
    if plan.destructive and not _confirm(_downgrade_question(where, plan), yes=yes):
        return
    downgrade(engine, revision)
    _echo(f"{where}: schema now at {current_revision(engine) or 'nothing'}")


def _downgrade_question(where: str, plan: DowngradePlan) -> str:
    dropped = ", ".join([*plan.tables, *plan.columns]) or "nothing"
    return f"Downgrade {where} to {plan.target}, dropping {dropped} and the data in them?"


def _print_downgrade_plan(where: str, plan: DowngradePlan, *, dry_run: bool) -> None:
    if not plan.revisions:
        _echo(f"{where}: schema at {plan.current or 'nothing'}; nothing to undo")
        return
    _echo(
        f"{where}: would undo {_plural(len(plan.revisions), 'revision')} "
        f"({plan.current} -> {plan.target}):"
    )
    for revision, description in plan.revisions:
        _echo(f"  {revision}  {description}")
    for name in plan.tables:
        _echo(f"  drops table or view {name}")
    for column in plan.columns:
        _echo(f"  drops column {column}")


@db.command("current")
@database_url_option
@schema_option
def db_current(database_url: str | None, schema: str | None) -> None:
    """Show the database's schema revision and whether it is up to date.

    Exits 4 when the schema is missing or behind.

    \b
    Example:
      batchsync db current || batchsync db upgrade
    """
    _, engine = _open_database(database_url, schema, read_only=True)
    current = current_revision(engine)
    head = head_revision()
    state = "up to date" if current == head else f"behind {head}: run `batchsync db upgrade`"
    _echo(f"{describe_location(engine)}: {current or 'no schema'} ({state})")
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

    _echo(render_schema_markdown(), nl=False)


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


class UtcDateTime(click.ParamType[datetime, Any]):
    """A date or ISO-8601 datetime as orchestrators render it, converted to UTC.

    Accepts 2025-01-01, 2025-01-01T06:00:00, 2025-01-01 06:00:00, a trailing Z and an
    offset (+02:00 is converted, not relabelled); a time without a zone is UTC.
    """

    name = "datetime"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            parsed = value
        else:
            try:
                parsed = datetime.fromisoformat(str(value).strip())
            except ValueError:
                self.fail(
                    f"{value!r} is not a date or ISO-8601 datetime (e.g. 2025-01-01, "
                    "2025-01-01T06:00:00Z, 2025-01-01 06:00:00+02:00)",
                    param,
                    ctx,
                )
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        try:
            return parsed.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
            self.fail(
                f"{value!r} is out of range once converted to UTC (before year 1 or after 9999)",
                param,
                ctx,
            )


def _utc_date_option(name: str, help_text: str) -> Callable[[F], F]:
    """A date or datetime option, read as UTC unless it carries an offset."""
    return click.option(
        name,
        type=UtcDateTime(),
        metavar="DATE",
        help=f"{help_text} A date or ISO-8601 datetime (Z, +02:00 or none for UTC).",
    )


def _parse_shard(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Shard | None:
    if value is None:
        return None
    try:
        return Shard.parse(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _plural(count: int, singular: str, plural: str | None = None) -> str:
    """'1 batch', '2 batches', '0 batches'."""
    return f"{count:,} {singular if count == 1 else (plural or singular + 's')}"


@cli.command()
@click.argument("batch_ids", nargs=-1, metavar="[BATCH_ID]...")
@click.option("--all", "discover", is_flag=True, help="Discover every batch and sync them all.")
@click.option(
    "--refresh",
    is_flag=True,
    help="Fetch again even completed batches already stored, and rewrite every batch "
    "fetched, even unchanged ones: repairs rows changed or deleted by hand and applies an "
    "upgrade's new mapping. Schedule it weekly and after upgrades.",
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
    callback=_parse_shard,
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
    "--parse-workers",
    type=click.IntRange(min=0, max=64),
    default=None,
    envvar="BATCHSYNC_PARSE_WORKERS",
    show_envvar=True,
    help="Processes that parse batch bodies while this one writes, so that both run at "
    "once; 0 parses in the fetching threads. [default: the usable CPUs minus one; 0 on "
    "one CPU]",
)
@click.option(
    "--max-requests-per-second",
    type=click.FloatRange(min=0.001),  # one request per 1000 s; less would overflow clocks
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
@click.option(
    "--api",
    "api_choice",
    type=click.Choice(API_CHOICES),
    default="auto",
    show_default=True,
    envvar="BATCHSYNC_API",
    show_envvar=True,
    help="Which Bland batch API to read: auto lists v2 and v1 batches and syncs each by its "
    "own API (a UUID id goes to v2, any other to v1; a 404 there tries the other); v1 or v2 "
    "reads only that one.",
)
@click.option(
    "--call-details/--no-call-details",
    default=None,
    envvar="BATCHSYNC_CALL_DETAILS",
    show_envvar=True,
    help="Fetch each call's detail (GET /v1/calls/{id}: transcript, price, summary, "
    "recording_url, ...). [default: on for v2 batches, whose transcripts exist nowhere "
    "else; off for v1 batches] --no-call-details reads v2 calls from the calls list only.",
)
@_json_option("Print one JSON summary object on stdout, on success and on error.")
@_api_options
@database_url_option
@schema_option
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
    shard: Shard | None,
    concurrency: int,
    parse_workers: int | None,
    max_requests_per_second: float | None,
    phone_numbers: str,
    redact_transcripts: bool,
    dry_run: bool,
    migrate: bool,
    api_choice: ApiChoice,
    call_details: bool | None,
    as_json: bool,
    api_key: str | None,
    base_url: str | None,
    timeout: float,
    retries: int,
    max_retry_wait: float,
    database_url: str | None,
    schema: str | None,
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
      batchsync sync --all --api v2 --no-call-details
    """
    ctx = click.get_current_context()
    if discover == bool(batch_ids):
        raise click.UsageError("name one or more BATCH_IDs, or pass --all (not both)")
    if not discover and (campaign_id or label or since or until):
        raise click.UsageError("--campaign-id, --label, --since and --until only apply with --all")
    if since is not None and until is not None and since >= until:
        raise click.UsageError(
            f"--since ({since.isoformat()}) must be before --until ({until.isoformat()})"
        )
    if dry_run and migrate:
        raise click.UsageError("--dry-run writes nothing, so it cannot --migrate")
    api = load_api(base_url, api_key, timeout)
    settings, engine = _open_database(database_url, schema, creates=migrate, can_migrate=True)
    if not dry_run:
        check_writable(engine)
    if migrate:
        upgrade(engine)
    check_schema(engine, can_migrate=True)
    phones = load_phone_policy(phone_numbers, redact_transcripts=redact_transcripts)
    stored_policies = store.stored_phone_policies(engine)
    if ctx.get_parameter_source("phone_numbers") == click.core.ParameterSource.DEFAULT:
        refuse_clear_numbers_over_protected(phones, stored_policies)
    left_out = {"--no-calls": calls, "--no-transcripts": transcripts, "--no-analysis": analysis}
    refuse_partial_switch(
        phones, stored_policies, [flag for flag, on in left_out.items() if not on]
    )
    options = SyncOptions(
        batch_ids=batch_ids,
        discover=discover,
        parts=Parts(calls=calls, transcripts=transcripts, analysis=analysis),
        refresh=refresh,
        campaign_id=campaign_id,
        since=since,
        until=until,
        label=label,
        shard=shard,
        concurrency=concurrency,
        phones=phones,
        dry_run=dry_run,
        api=api_choice,
        call_details=call_details,
    )
    retry = RetryPolicy(attempts=retries, max_wait=max_retry_wait)
    if parse_workers is None:
        # One fetch thread has nothing to overlap a parse with: it would only wait for it.
        parse_workers = default_parse_workers() if concurrency > 1 else 0
    with ExitStack() as stack:
        http = stack.enter_context(
            BlandHttp(
                api,
                retry=retry,
                max_requests_per_second=max_requests_per_second,
                max_connections=max(concurrency, 1) * (1 + DETAIL_CONCURRENCY),
            )
        )
        # Stored details are kept only where the stored values are the API's own.
        as_sent = phones.mode is PhoneMode.KEEP and not phones.redact_transcripts
        body_parser: BodyParser = parse_batch_body
        if parse_workers:
            # Rows written as parsed can be formatted for the driver in the parser processes.
            dialect = engine.dialect.name
            encode = as_sent and call_details is not True and encoded.available(dialect)
            # No more workers than bodies can wait for them: one per fetch thread.
            pool = stack.enter_context(
                ParsePool(
                    min(parse_workers, concurrency),
                    encode_for=store.row_spec(cast(encoded.Dialect, dialect)) if encode else None,
                )
            )
            body_parser = pool.parse_batch_body
        source = build_source(
            http,
            api_choice,
            call_details,
            stored_calls=partial(store.stored_calls, engine) if as_sent else None,
            refresh=refresh,
            spool_large_bodies=True,
            body_parser=body_parser,
        )
        result = _run(engine, http, source, options, as_json=as_json, database=settings.display_url)
    sys.exit(EXIT_PARTIAL if result.failed else EXIT_OK)


def _run(
    engine: Engine,
    http: BlandHttp,
    source: BatchSource,
    options: SyncOptions,
    *,
    as_json: bool,
    database: str,
) -> RunResult:
    ctx = click.get_current_context()
    started = time.monotonic()
    with _stop_on_sigterm() as stop, _progress(ctx, enabled=not as_json) as events:
        result = run_sync(engine, source, options, events=events, stop=stop)
    summary = {
        **result.as_json(),
        "database": database,
        "http": {
            "requests": http.stats.requests,
            "retries": http.stats.retries,
            "bytes": http.stats.bytes_received,
        },
        "duration_seconds": round(time.monotonic() - started, 3),
    }
    if as_json:
        _echo_json(summary)
    else:
        _print_summary(summary)
    return result


class _RunEvents(SyncEvents):
    """Remember the run id (for the error summary), log each batch's outcome (-v), and
    move the progress bar when there is one."""

    def __init__(self, ctx: click.Context, bar_factory: Callable[[int], Any] | None) -> None:
        self._ctx = ctx
        self._factory = bar_factory
        self.bar: Any = None
        self._fetched = 0
        self._started = time.monotonic()

    def started(self, run_id: int | None) -> None:
        self._ctx.meta["run_id"] = run_id
        self._ctx.meta["outcomes"] = []

    def planned(self, to_fetch: int, skipped: int) -> None:
        if skipped:
            log.info(
                "%s already stored and complete: not fetched",
                _plural(skipped, "completed batch", "completed batches"),
            )
        self._started = time.monotonic()
        if self._factory is not None:
            self.bar = self._factory(to_fetch)

    def batch_done(self, outcome: runs.BatchOutcome) -> None:
        self._ctx.meta.setdefault("outcomes", []).append(outcome)
        calls = "" if outcome.calls is None else f" ({_plural(outcome.calls, 'call')})"
        log.info(
            "batch %s: %s%s",
            printable(outcome.batch_id),
            outcome.status,
            calls,
            extra={"batch": outcome.batch_id, "outcome": outcome.status},
        )
        if outcome.status == runs.SKIPPED:
            return  # never fetched: not part of the bar
        self._fetched += 1
        if self.bar is not None:
            # Batches per second: a rate of calls would fall to nothing on unchanged
            # batches, which are fetched but not parsed, so their calls are not counted.
            rate = self._fetched / max(time.monotonic() - self._started, 1e-6)
            self.bar.update(1, f"{rate:,.1f} batches/s")


@contextmanager
def _progress(ctx: click.Context, *, enabled: bool) -> Iterator[SyncEvents]:
    """A progress bar (count, rate, ETA) on stderr when it is a terminal; outcomes are
    logged (-v) either way."""
    if not (enabled and sys.stderr.isatty()):
        yield _RunEvents(ctx, None)
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
        yield _RunEvents(ctx, factory)
    finally:
        for bar in bars:
            bar.__exit__(None, None, None)


def _print_summary(summary: dict[str, Any]) -> None:
    batches = summary["batches"]
    run = "dry run (nothing written)" if summary["dry_run"] else f"run {summary['run_id']}"
    _echo(
        f"{run} {summary['status']} in {summary['duration_seconds']:.1f}s: "
        f"{_plural(batches['synced'], 'batch', 'batches')} synced, {batches['unchanged']} "
        f"unchanged, {batches['skipped']} skipped, {batches['failed']} failed"
    )
    for table, c in summary["tables"].items():
        _echo(
            f"  {table:<20} {c['inserted']:>8} inserted {c['updated']:>8} updated "
            f"{c['deleted']:>8} deleted"
        )
    for failure in summary["failed"]:
        _echo(f"  failed: {failure['error']}")


# -- runs -------------------------------------------------------------------------------------


@cli.group("runs", invoke_without_command=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@_json_option("Print JSON instead of a table.")
@database_url_option
@schema_option
@click.pass_context
def runs_(
    ctx: click.Context, limit: int, as_json: bool, database_url: str | None, schema: str | None
) -> None:
    """List recent sync runs and their outcome; `runs show ID` details one.

    \b
    Example:
      batchsync runs --limit 5
    """
    ctx.obj = (database_url, schema)
    if ctx.invoked_subcommand is not None:
        return
    _, engine = _open_database(database_url, schema, read_only=True)
    check_schema(engine)
    recent = runs.list_runs(engine, limit)
    if as_json:
        _echo_json(recent, indent=True)
        return
    if not recent:
        _echo("no runs yet")
        return
    _echo(f"{'id':>5}  {'started (UTC)':<19}  {'status':<11} synced unchanged skipped failed")
    for run in recent:
        _echo(
            f"{run['id']:>5}  {run['started_at']:%Y-%m-%d %H:%M:%S}  {run['status']:<11} "
            f"{run['batches_synced']:>6} {run['batches_unchanged']:>9} "
            f"{run['batches_skipped']:>7} {run['batches_failed']:>6}"
        )


@runs_.command("show")
@click.argument("run_id", type=int)
@_json_option("Print JSON.")
@database_url_option
@schema_option
@click.pass_obj
def runs_show(
    parent: tuple[str | None, str | None],
    run_id: int,
    as_json: bool,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Show one run: its options, outcome, and each batch's result.

    \b
    Example:
      batchsync runs show 12
    """
    _, engine = _open_database(database_url or parent[0], schema or parent[1], read_only=True)
    check_schema(engine)
    found = runs.get_run(engine, run_id)
    if found is None:
        raise click.BadParameter(f"there is no run {run_id}", param_hint="RUN_ID")
    run, batches = found
    if as_json:
        _echo_json({**run, "batches": batches}, indent=True)
        return
    for key, value in run.items():
        if key == "options":
            value = orjson.dumps(value, default=str).decode()
        _echo(f"{key:>18}: {printable(str(value))}")
    for batch in batches:
        line = f"  {printable(batch['batch_id'])}  {batch['status']}"
        if batch["error"]:
            line += f"  {printable(batch['error'])}"
        _echo(line)


# -- purge ------------------------------------------------------------------------------------


@cli.command()
@click.option("--batch", "batch_ids", multiple=True, metavar="ID", help="A batch to delete.")
@_utc_date_option("--before", "Delete every batch created before this UTC date.")
@click.option(
    "--older-than",
    type=click.IntRange(min=1, max=36500),  # 100 years; more would reach before year 1
    metavar="DAYS",
    help="Delete every batch created more than DAYS days ago (for retention jobs).",
)
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@yes_option
@_json_option("Print the counts as JSON.")
@database_url_option
@schema_option
def purge(
    batch_ids: tuple[str, ...],
    before: datetime | None,
    older_than: int | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    database_url: str | None,
    schema: str | None,
) -> None:
    """Delete batches and all their rows (calls, transcripts, counts, errors).

    For retention policies. Runs in one transaction and reports what it removed.
    A later `sync` brings a purged batch back unless it is excluded there too.
    It asks first on a terminal, and needs --yes anywhere else (not with --dry-run).

    \b
    Examples:
      batchsync purge --batch 6f1b8c2e-... --yes
      batchsync purge --before 2025-01-01 --dry-run
      batchsync purge --older-than 90 --yes

    Batches without a creation time are never matched by a date.
    """
    if before is not None and older_than is not None:
        raise click.UsageError("give --before or --older-than, not both")
    if older_than is not None:
        before = datetime.now(UTC) - timedelta(days=older_than)
    if not batch_ids and before is None:
        raise click.UsageError("name batches with --batch ID, or give --before / --older-than")
    _, engine = _open_database(database_url, schema, creates=False)
    check_writable(engine)
    check_schema(engine)
    if not dry_run:
        would = store.purge(engine, batch_ids=batch_ids, before=before, dry_run=True)
        question = (
            f"Delete {_plural(would['batches'], 'batch', 'batches')} and "
            f"{_plural(sum(would.values()) - would['batches'], 'row')} of their data?"
        )
        if would["batches"] and not _confirm(question, yes=yes):
            return
    deleted = store.purge(engine, batch_ids=batch_ids, before=before, dry_run=dry_run)
    if as_json:
        _echo_json({"dry_run": dry_run, "deleted": deleted})
        return
    verb = "would delete" if dry_run else "deleted"
    _echo(f"{verb} {_plural(deleted['batches'], 'batch', 'batches')}:")
    for table, count in deleted.items():
        _echo(f"  {table:<20} {_plural(count, 'row'):>13}")


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
                help="Number of v1 batches.",
            ),
            click.option(
                "--v2-batches",
                type=click.IntRange(min=0),
                default=3,
                show_default=True,
                help="Number of v2 batches (their calls served by the calls API).",
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
    help="Inject a fault, e.g. 'BATCH_ID:rate_limitx3:retry_after=1', '*list*:server_error', "
    "'*:api_down:after=1', '*list*:page_cap:size=2' or '*list*:unsorted:order=shuffled' "
    "(kinds: see batchsync.emulator).",
)
@_emulator_options
def emulator(
    host: str,
    port: int,
    api_key: str,
    faults: tuple[str, ...],
    seed: int,
    batches: int,
    v2_batches: int,
    calls: int,
) -> None:
    """Serve the built-in Bland API emulator on a loopback address.

    Deterministic batches (same seed, same data) with the real API's quirks, for trying
    batchsync and its orchestration offline: an account holding v1 batches, v2 batches
    and the calls API.

    \b
    Example:
      batchsync emulator --port 8787 &
      BLAND_BASE_URL=http://127.0.0.1:8787 BLAND_API_KEY=emulator-key batchsync sync --all
    """
    from batchsync.emulator import Emulator, parse_fault

    emu = Emulator(
        seed=seed,
        batches=batches,
        calls_per_batch=calls,
        api_key=api_key,
        v2_batches=v2_batches,
        v2_calls_per_batch=calls,
    )
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
        _echo(f"Bland API emulator on {server.url} (API key: {api_key}); Ctrl-C stops it")
        _echo(f"  BLAND_BASE_URL={server.url} BLAND_API_KEY={api_key} batchsync sync --all")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            _echo("stopped")


@cli.command()
@click.option(
    "--database",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("batchsync-demo.db"),
    show_default=True,
    help="SQLite file to sync into.",
)
@_emulator_options
def demo(database: Path, seed: int, batches: int, v2_batches: int, calls: int) -> None:
    """Sync the built-in emulator into a local SQLite file and show what landed.

    Needs no account and no network: the emulator runs in-process. Run it twice to
    see an incremental re-sync.

    \b
    Example:
      batchsync demo && sqlite3 batchsync-demo.db 'select * from batches'
    """
    from batchsync.emulator import Emulator

    emu = Emulator(
        seed=seed,
        batches=batches,
        calls_per_batch=calls,
        v2_batches=v2_batches,
        v2_calls_per_batch=calls,
    )
    settings, engine = _open_database(f"sqlite:///{database}")
    upgrade(engine)
    api = load_api("http://bland-emulator.local", emu.api_key)
    _echo(
        f"Syncing {_plural(batches, 'emulated v1 batch', 'emulated v1 batches')} and "
        f"{_plural(v2_batches, 'v2 batch', 'v2 batches')} into {database} ..."
    )
    with BlandHttp(api, transport=emu.transport()) as http:
        result = _run(
            engine,
            http,
            build_source(http, stored_calls=partial(store.stored_calls, engine)),
            SyncOptions(discover=True),
            as_json=False,
            database=settings.display_url,
        )
    _echo(f"\nRows in {database}:")
    for table, count in store.row_counts(engine).items():
        _echo(f"  {table:<20} {count:>8}")
    _echo(
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
