"""The recipes in docs/ stay true to the CLI: commands parse, exit codes match, code compiles.

Every `batchsync ...` command in a code block of docs/*.md is parsed by click down to its
subcommand, with every option and argument converted, but nothing run; a renamed option or
command fails here. Commands are found in shell blocks (sh, bash, crontab), in argv lists of
Python blocks (``["batchsync", "sync", ...]``) and in ``command``/``args`` of YAML blocks.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from batchsync import cli as cli_module
from batchsync.cli import cli
from batchsync.config import (
    DEFAULT_BASE_URL,
    DEFAULT_DATABASE_URL,
    ENV_BASE_URL,
    ENV_DATABASE_URL,
    ENV_PHONE_HASH_KEY,
)
from batchsync.emulator import Emulator
from batchsync.errors import ConfigError

DOCS = Path(__file__).resolve().parent.parent / "docs"
# docs/schema.md is generated from the models and checked by test_schema_docs.py.
PAGES = sorted(p for p in DOCS.glob("*.md") if p.name != "schema.md")

SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "crontab"}
YAML_LANGUAGES = {"yaml", "yml"}
PYTHON_LANGUAGES = {"python", "py"}

# Values for the shell variables and `$(...)` substitutions the recipes use in batchsync
# commands; a variable missing here fails the test that meets it, naming it.
SAMPLES = {
    "month": "2025-01",
    "CUTOFF": "2025-01-01",
    "JOB_COMPLETION_INDEX": "0",
    "index": "0",
    "shards": "4",
}
SAMPLE_DATE = "2025-01-01"  # what `$(date ...)` prints
# Words that may precede the program on a shell command line.
SHELL_PREFIXES = {"exec", "time", "nohup", "env", "command", "then", "else", "do", "if", "!"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    source: str


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]
    error: str | None = None  # why the block's commands could not be extracted


def code_blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [
        Block(page.name, text.count("\n", 0, m.start()) + 1, m.group(1).lower(), m.group(2))
        for m in FENCE.finditer(text)
    ]


BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def replace_substitutions(text: str) -> str:
    """Replace each `$(...)` by a sample value: a date for `date ...`, else a known name or 0."""
    out, i = [], 0
    while (start := text.find("$(", i)) != -1:
        depth, j = 1, start + 2
        while j < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
        inner = text[start + 2 : j - 1].strip()
        out.append(text[i:start])
        out.append(SAMPLE_DATE if inner.startswith("date") else SAMPLES.get(inner, "0"))
        i = j
    out.append(text[i:])
    return "".join(out)


def split_commands(line: str) -> list[str]:
    """Split a shell line into simple commands, each cut at its first redirection or comment."""
    commands, current, quote, cut = [], "", None, False
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "|;&" and not (char == "&" and line[index - 1 : index] in ("<", ">")):
            commands.append(current)
            current, cut = "", False
            continue
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            break  # a comment runs to the end of the line, `;` and quotes included
        elif char in "<>":
            # `2>>file`: the digits name a file descriptor, not an argument.
            current = re.sub(r"(^|\s)\d+$", r"\1", current)
            cut = True
        if not cut:
            current += char
    commands.append(current)
    return [c.strip() for c in commands if c.strip()]


def expand_variables(token: str) -> str:
    def sample(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in SAMPLES:
            raise ValueError(f"no sample value for ${name}: add one to SAMPLES")
        return SAMPLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sample, token)


def shell_commands(source: str, *, crontab: bool = False) -> list[tuple[str, ...]]:
    joined = replace_substitutions(re.sub(r"\\\n", " ", source))
    found = []
    for line in joined.splitlines():
        if crontab:
            fields = line.split(None, 5)
            if line.lstrip().startswith("#") or len(fields) < 6:
                continue
            line = fields[5]
        for command in split_commands(line):
            words = shlex.split(command)
            while words and (words[0] in SHELL_PREFIXES or ASSIGNMENT.match(words[0])):
                words.pop(0)
            if words and os.path.basename(words[0]) == "batchsync":
                args = [expand_variables(w) for w in words[1:] if w not in ("$@", "$*")]
                found.append(tuple(args))
    return found


def render(node: ast.expr) -> str | None:
    """A string element of an argv list; f-string fields and names become sample values."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(render(part) or "" for part in node.values)
    if isinstance(node, ast.FormattedValue):
        return render(node.value)
    if isinstance(node, ast.Name | ast.Attribute | ast.Subscript):
        return SAMPLES.get(ast.unparse(node), "0")
    return None  # *args and the like: not part of the literal command


def python_commands(source: str) -> list[tuple[str, ...]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List | ast.Tuple) and node.elts:
            first = node.elts[0]
            if isinstance(first, ast.Constant) and first.value == "batchsync":
                parts = (render(element) for element in node.elts[1:])
                found.append(tuple(part for part in parts if part is not None))
    return found


def yaml_commands(source: str) -> list[tuple[str, ...]]:
    """argv of each container whose command is batchsync (PyYAML, or one-line JSON lists)."""
    try:
        import yaml
    except ImportError:
        containers, last = [], None
        for match in re.finditer(r"^\s*-?\s*(command|args):\s*(\[.*\])\s*$", source, re.M):
            values = json.loads(match.group(2))
            if match.group(1) == "command":
                last = {"command": values}
                containers.append(last)
            elif last is not None and "args" not in last:
                last["args"] = values
    else:
        containers = []
        stack = list(yaml.safe_load_all(source))
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if isinstance(item.get("command"), list):
                    containers.append(item)
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    found = []
    for container in containers:
        command = [str(word) for word in container["command"]]
        if command and os.path.basename(command[0]) == "batchsync":
            args = [str(word) for word in container.get("args") or []]
            found.append(tuple(replace_substitutions(a) for a in [*command[1:], *args]))
    return found


def commands_in(block: Block) -> list[tuple[str, ...]]:
    if block.language in SHELL_LANGUAGES:
        return shell_commands(block.source, crontab=block.language == "crontab")
    if block.language in PYTHON_LANGUAGES:
        return python_commands(block.source)
    if block.language in YAML_LANGUAGES:
        return yaml_commands(block.source)
    return []


def all_commands() -> list[Command]:
    commands = []
    for block in BLOCKS:
        where = f"{block.page}:{block.line}"
        try:
            found = commands_in(block)
        except (ValueError, SyntaxError) as exc:  # JSON and YAML errors are ValueErrors too
            commands.append(Command(where, (), error=f"{type(exc).__name__}: {exc}"))
            continue
        commands.extend(Command(where, argv) for argv in found)
    return commands


def parse(argv: list[str]) -> click.Context:
    """Parse argv as `batchsync` would, down to the subcommand, without running anything."""
    command: click.Command = cli
    context = click.Context(cli, info_name="batchsync")
    args = list(argv)
    while True:
        # Command.parse_args converts this level's options and returns what follows them.
        rest = click.Command.parse_args(command, context, args)
        if not isinstance(command, click.Group):
            return context
        if not rest:
            if command.invoke_without_command:
                return context
            raise click.UsageError("missing command", context)
        name, command, args = command.resolve_command(context, rest)
        assert command is not None
        assert name is not None
        context = click.Context(command, info_name=name, parent=context)


@pytest.fixture(autouse=True)
def _no_batchsync_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options fall back to environment variables: keep the caller's out of the parse."""
    for name in list(os.environ):
        if name.startswith(("BATCHSYNC_", "BLAND_")):
            monkeypatch.delenv(name)


COMMANDS = all_commands()


@pytest.mark.parametrize("command", COMMANDS, ids=[c.where for c in COMMANDS])
def test_documented_command_parses(command: Command) -> None:
    """Every batchsync command in the docs' code blocks parses with the real options."""
    if command.error:
        pytest.fail(f"{command.where}: cannot read the block's commands: {command.error}")
    line = f"batchsync {shlex.join(command.argv)}"
    try:
        parse(list(command.argv))  # --shard's K/N is checked as it parses
    except (click.ClickException, ConfigError) as exc:
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        pytest.fail(f"{command.where}: {line}: {message}")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_page_shows_a_checked_command(page: Path) -> None:
    """Each page has at least one command the checker found, so none escapes it unnoticed."""
    assert any(c.where.startswith(f"{page.name}:") for c in COMMANDS), page.name


def test_parser_rejects_a_renamed_option() -> None:
    """The checker is strict: an unknown option or command fails, a real one passes."""
    assert str(parse(["sync", "--all", "--shard", "0/4"]).params["shard"]) == "0/4"
    with pytest.raises(click.NoSuchOption):
        parse(["sync", "--all", "--shards", "0/4"])
    with pytest.raises(click.UsageError):
        parse(["runs", "list"])
    with pytest.raises(click.BadParameter):
        parse(["sync", "--all", "--since", "January"])
    with pytest.raises(click.BadParameter):
        parse(["sync", "--all", "--shard", "4/4"])


def test_extraction_handles_shell_syntax() -> None:
    """Env assignments, continuations, $(...), pipes and redirections are handled like a shell."""
    source = (
        "X=1 batchsync --log-format json sync --all \\\n"
        '  --since "$(date -u -d yesterday +%F)" --json | jq .status 2>/dev/null\n'
        'rc=$?; exec 9>"$LOCK"; batchsync runs show 3 >"$LOG_DIR/x" 2>&1  # note\n'
        "*/5 * * * * batchsync db current\n"
    )
    assert shell_commands(source) == [
        ("--log-format", "json", "sync", "--all", "--since", SAMPLE_DATE, "--json"),
        ("runs", "show", "3"),
    ]
    assert shell_commands(source, crontab=True)[-1] == ("db", "current")


def exit_code_rows() -> dict[str, int]:
    text = (DOCS / "README.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`(EXIT_\w+)`\s*\|", section, re.MULTILINE)
    return {name: int(code) for code, name in rows}


def test_exit_codes_in_docs_match_the_cli() -> None:
    """docs/README.md lists each EXIT_* constant of batchsync.cli with its value, and no other."""
    documented = exit_code_rows()
    constants = {
        name: value
        for name, value in vars(cli_module).items()
        if name.startswith("EXIT_") and isinstance(value, int)
    }
    assert documented == constants
    assert set(constants) >= {
        "EXIT_OK",
        "EXIT_PARTIAL",
        "EXIT_USAGE",
        "EXIT_CONFIG",
        "EXIT_DATABASE",
        "EXIT_API",
        "EXIT_INTERRUPTED",
    }


def cli_environment_variables() -> set[str]:
    found: set[str] = set()
    stack: list[click.Command] = [cli]
    while stack:
        command = stack.pop()
        for param in command.params:
            envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            found.update(e for e in envvars if e)
        if isinstance(command, click.Group):
            stack.extend(command.commands.values())
    return found


def test_environment_variables_in_docs_match_the_cli() -> None:
    """docs/README.md lists every variable an option reads, plus the hash key, and no other."""
    text = (DOCS / "README.md").read_text()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\|\s*`([A-Z_]+)`\s*\|", section, re.MULTILINE))
    assert documented == cli_environment_variables() | {ENV_PHONE_HASH_KEY}


PYTHON_BLOCKS = [b for b in BLOCKS if b.language in PYTHON_LANGUAGES]
YAML_BLOCKS = [b for b in BLOCKS if b.language in YAML_LANGUAGES]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"{b.page}:{b.line}" for b in PYTHON_BLOCKS])
def test_python_block_compiles(block: Block) -> None:
    """Every Python block in the docs is valid Python."""
    compile(block.source, f"{block.page}:{block.line}", "exec")


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[f"{b.page}:{b.line}" for b in YAML_BLOCKS])
def test_yaml_block_parses(block: Block) -> None:
    """Every YAML block in the docs parses (skipped without PyYAML)."""
    yaml = pytest.importorskip("yaml")
    assert list(yaml.safe_load_all(block.source))


# -- every recipe runs as written, against the emulator, on both databases --------------------
#
# Shell blocks of README.md and docs/ run in a temporary directory, with BLAND_BASE_URL set to
# an emulator on 127.0.0.1 and BATCHSYNC_DATABASE_URL to the test's database. Absolute paths
# of the recipes (/etc/batchsync, /var/log/batchsync, ...) are moved under that directory and
# `batchsync` is a stand-in that runs this checkout's CLI and records each exit code. Nothing
# else of the block changes.

ROOT = DOCS.parent
RECIPE_PAGES = [ROOT / "README.md", *PAGES]
RECIPE_KEY = "recipe-key"
ENV_FILE_VARIABLES = ("BLAND_API_KEY", "BATCHSYNC_DATABASE_URL")
ASSIGNMENT_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")
BATCHSYNC_STAND_IN = """#!/bin/sh
{python} -m batchsync "$@"
rc=$?
printf '%s\\t%s\\n' "$rc" "$*" >>"{calls}"
exit $rc
"""


def recipe_blocks() -> list[Block]:
    found = []
    for page in RECIPE_PAGES:
        for block in code_blocks(page):
            if block.language in SHELL_LANGUAGES:
                name = "README.md" if page.parent == ROOT else f"docs/{page.name}"
                found.append(Block(name, block.line, block.language, block.source))
    return found


def is_env_file(block: Block) -> bool:
    lines = [line for line in block.source.splitlines() if line.strip()]
    return all(line.startswith("#") or ASSIGNMENT_LINE.match(line) for line in lines)


def why_not_run(block: Block) -> str | None:
    """Why a block cannot run here, or None when it can."""
    if "pip install" in block.source:
        return "creates a virtualenv and installs packages; the suite runs in the installed one"
    if block.language == "crontab":
        return "a crontab, checked by test_crontab_lines_run_documented_scripts"
    if is_env_file(block):
        return "an env file, checked by test_env_file_reads_the_same_in_sh_and_kubectl"
    if "kubectl" in block.source:
        return "needs a Kubernetes cluster (its commands are parsed above)"
    return None


RECIPES = recipe_blocks()
ENV_FILE_BLOCK = next(b for b in RECIPES if b.page == "docs/cron.md" and is_env_file(b))
CRON_WRAPPER = next(b for b in RECIPES if b.page == "docs/cron.md" and b.source.startswith("#!"))


@dataclass
class Sandbox:
    """A temporary directory laid out like a host running the recipes."""

    root: Path
    env: dict[str, str]
    emulator: Emulator
    server_url: str

    @property
    def calls(self) -> list[tuple[int, str]]:
        """Each `batchsync` invocation so far: its exit code and arguments."""
        path = self.root / "calls.log"
        if not path.exists():
            return []
        return [
            (int(rc), args)
            for rc, args in (line.split("\t", 1) for line in path.read_text().splitlines())
        ]

    def localize(self, source: str) -> str:
        """The block with its absolute paths moved into the sandbox and its examples filled in."""
        port = free_port()
        batch_id = self.emulator.batch_ids()[0]
        replacements = [
            ("/etc/batchsync/", f"{self.root}/etc/batchsync/"),
            ("/opt/batchsync/bin", f"{self.root}/bin"),
            ("/var/log/batchsync", f"{self.root}/log"),
            ("/var/lock/", f"{self.root}/lock/"),
            ("/usr/local/bin/", f"{self.root}/bin/"),
            ("8787", str(port)),
            ("BATCH_ID [BATCH_ID ...]", batch_id),
        ]
        for old, new in replacements:
            source = source.replace(old, new)
        # Examples of run ids (12, 42, ID) name the run the sandbox made first.
        source = re.sub(r"runs show (\d+|ID)\b", "runs show 1", source)
        lines = []
        for line in source.splitlines():
            if re.match(r"\s*export BATCHSYNC_DATABASE_URL=", line):
                continue  # an example server; the sandbox's database is already set
            if re.match(r"\s*batchsync emulator\b", line) and not line.split("#")[
                0
            ].rstrip().endswith("&"):
                continue  # serves until stopped: started in the background elsewhere
            lines.append(line)
        return "\n".join(lines) + "\n"

    def run(self, source: str, shell: str = "sh") -> subprocess.CompletedProcess[str]:
        """Run a shell script in the sandbox; anything it left in the background is stopped."""
        script = self.root / "recipe.sh"
        script.write_text(source)
        out_path, err_path = self.root / "recipe.out", self.root / "recipe.err"
        # Files, not pipes: a job left in the background would hold a pipe open.
        with out_path.open("w") as out, err_path.open("w") as err:
            process = subprocess.Popen(
                [shell, str(script)],
                cwd=self.root / "work",
                env=self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                process.wait(timeout=600)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        return subprocess.CompletedProcess(
            process.args, process.returncode, out_path.read_text(), err_path.read_text()
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def env_file_for(sandbox_values: dict[str, str]) -> str:
    """The documented env file, with this sandbox's values and its privacy lines enabled."""
    lines = []
    for line in ENV_FILE_BLOCK.source.splitlines():
        match = ASSIGNMENT_LINE.match(line.lstrip("# "))
        if match and match.group(1) in sandbox_values:
            line = f"{match.group(1)}={sandbox_values[match.group(1)]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


@pytest.fixture
def sandbox(database_url: str, tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox with the emulator served, the schema created and one run recorded."""
    emulator = Emulator(seed=4, batches=3, calls_per_batch=4, api_key=RECIPE_KEY)
    for directory in ("bin", "etc/batchsync", "log", "lock", "work"):
        (tmp_path / directory).mkdir(parents=True)
    stand_in = tmp_path / "bin" / "batchsync"
    stand_in.write_text(
        BATCHSYNC_STAND_IN.format(python=sys.executable, calls=tmp_path / "calls.log")
    )
    stand_in.chmod(0o755)
    env_file = env_file_for({"BLAND_API_KEY": RECIPE_KEY, "BATCHSYNC_DATABASE_URL": database_url})
    (tmp_path / "etc/batchsync/env").write_text(env_file)
    (tmp_path / "work/batchsync.env").write_text(env_file)
    with emulator.serve() as server:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("BATCHSYNC_", "BLAND_"))
        }
        env.update(
            PATH=f"{tmp_path / 'bin'}:/usr/bin:/bin",
            HOME=str(tmp_path),
            LOG_DIR=str(tmp_path / "log"),
            BLAND_BASE_URL=server.url,
            BLAND_API_KEY=RECIPE_KEY,
            BATCHSYNC_DATABASE_URL=database_url,
        )
        box = Sandbox(tmp_path, env, emulator, server.url)
        first = box.run("batchsync db upgrade && batchsync sync --all\n")
        assert first.returncode == 0, first.stderr
        (tmp_path / "calls.log").unlink()
        yield box


@pytest.mark.slow
@pytest.mark.parametrize("block", RECIPES, ids=[f"{b.page}:{b.line}" for b in RECIPES])
def test_recipe_runs_as_written(block: Block, sandbox: Sandbox) -> None:
    """Each shell block of the docs runs against the emulator, every batchsync in it exits 0."""
    reason = why_not_run(block)
    if reason:
        pytest.skip(reason)
    if "BATCHSYNC_SCHEMA" in block.source and sandbox.env["BATCHSYNC_DATABASE_URL"].startswith(
        "sqlite"
    ):
        pytest.skip("a PostgreSQL schema recipe: SQLite has none (it runs on PostgreSQL)")
    shell = "bash" if block.language == "bash" else "sh"
    done = sandbox.run(sandbox.localize(block.source), shell)
    where = f"{block.page}:{block.line}"
    assert done.returncode == 0, f"{where} exited {done.returncode}: {done.stderr[-2000:]}"
    calls = sandbox.calls
    assert calls, f"{where} ran no batchsync command"
    failed = [(rc, args) for rc, args in calls if rc != 0 and not args.startswith("emulator")]
    assert failed == [], f"{where}: {failed}\n{done.stderr[-2000:]}"


def test_every_shell_block_is_run_or_skipped_for_a_reason() -> None:
    """Only installs, crontabs, env files and kubectl are not run; the rest are."""
    skipped = {f"{b.page}:{b.line}": why_not_run(b) for b in RECIPES if why_not_run(b)}
    assert len(skipped) < len(RECIPES) / 2, skipped
    assert all("kubectl" in b.source for b in RECIPES if "cluster" in (why_not_run(b) or ""))


@pytest.mark.slow
def test_cron_wrapper_mails_the_run_id_of_a_partial_run(sandbox: Sandbox) -> None:
    """When some batches fail, the cron wrapper prints `batchsync runs show <id>` of that run."""
    raw = sandbox.emulator.raw_batch(sandbox.emulator.batch_ids()[0])
    raw["batch_params"]["id"] = "a-new-batch-with-a-bad-call"
    raw["call_data"][0]["completed"] = "maybe"
    sandbox.emulator.put_batch(raw)
    done = sandbox.run(sandbox.localize(CRON_WRAPPER.source))
    assert done.returncode == 1, done.stderr
    summary = json.loads((sandbox.root / "log/last-summary.json").read_text())
    assert done.stdout.strip() == (
        f"some batches failed, the others are stored: batchsync runs show {summary['run_id']}"
    )


@pytest.mark.slow
def test_cron_wrapper_is_silent_when_all_is_well(sandbox: Sandbox) -> None:
    """A clean run prints nothing, so cron mails nothing."""
    done = sandbox.run(sandbox.localize(CRON_WRAPPER.source))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.slow
def test_cron_wrapper_names_a_usage_error(sandbox: Sandbox) -> None:
    """A broken command in the wrapper (exit 2) is reported as a usage error."""
    broken = CRON_WRAPPER.source.replace("sync --all --json", "sync --all --since someday --json")
    done = sandbox.run(sandbox.localize(broken))
    assert done.returncode == 2
    assert done.stdout.startswith("usage error")


def test_env_file_reads_the_same_in_sh_and_kubectl(tmp_path: Path) -> None:
    """The documented env file gives the same values sourced by sh and loaded by kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    env_file = tmp_path / "batchsync.env"
    env_file.write_text(
        "\n".join(line.lstrip("# ") if ASSIGNMENT_LINE.match(line.lstrip("# ")) else line
                  for line in ENV_FILE_BLOCK.source.splitlines()) + "\n"
    )  # fmt: skip
    names = [m.group(1) for m in map(ASSIGNMENT_LINE.match, env_file.read_text().splitlines()) if m]
    script = f"set -a; . {env_file}; set +a\n" + "".join(
        f'printf "%s=%s\\n" {name} "${name}"\n' for name in names
    )
    sourced = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    by_sh = dict(line.split("=", 1) for line in sourced.stdout.splitlines())
    loaded = subprocess.run(
        [kubectl, "create", "secret", "generic", "batchsync", f"--from-env-file={env_file}",
         "--dry-run=client", "-o", "json"],
        capture_output=True, text=True, check=True, env={**os.environ, "KUBECONFIG": os.devnull},
    )  # fmt: skip
    by_kubectl = {
        name: base64.b64decode(value).decode()
        for name, value in json.loads(loaded.stdout)["data"].items()
    }
    assert by_kubectl == by_sh
    assert set(by_sh) >= {*ENV_FILE_VARIABLES, "BATCHSYNC_PHONE_HASH_KEY"}


def test_crontab_lines_run_documented_scripts() -> None:
    """Each crontab line has five time fields and runs a script a page of the docs defines."""
    pages = [page.read_text() for page in RECIPE_PAGES]
    lines = [
        line
        for block in RECIPES
        if block.language == "crontab"
        for line in block.source.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines
    for line in lines:
        fields = line.split(None, 5)
        assert len(fields) == 6, line
        for field in fields[:5]:
            assert re.fullmatch(r"[\d*/,\-]+", field), line
        script = fields[5].split()[0]
        # The page gives the script's path, then the script itself in the next block.
        assert any(
            re.search(f"`{re.escape(script)}`[\\s\\S]{{0,400}}?```sh\\n#!", t) for t in pages
        ), line


def test_cron_exit_code_table_covers_every_exit_code_and_wrapper_arm() -> None:
    """cron.md's table lists each exit code of the CLI, and the wrapper has an arm for each."""
    page = (DOCS / "cron.md").read_text()
    table = page.split("## What the exit codes mean here", 1)[1]
    documented = {
        int(code)
        for row in re.findall(r"^\|\s*([\d, ]+)\s*\|", table, re.MULTILINE)
        for code in row.split(",")
    }
    assert documented == set(exit_code_rows().values())
    arms = {int(code) for code in re.findall(r"^\s*(\d+)\)", CRON_WRAPPER.source, re.MULTILINE)}
    assert arms <= documented
    assert "*)" in CRON_WRAPPER.source  # every other code still mails


def test_privacy_page_environment_variables_match_the_cli() -> None:
    """Each variable privacy.md names belongs to the option it says; each 'has no' is true."""
    page = (DOCS / "privacy.md").read_text()
    options = {
        option: param
        for param in cli.commands["sync"].params  # type: ignore[attr-defined]
        for option in [*param.opts, *param.secondary_opts]
    }
    rows = re.findall(r"^\| `([A-Z_]+)` \|(.*)\|$", page, re.MULTILINE)
    assert rows
    for variable, text in rows:
        named = re.findall(r"same as `(--[\w-]+)`", text)
        if variable == ENV_PHONE_HASH_KEY:
            assert not named
            continue
        assert named, variable
        assert options[named[0]].envvar == variable, (variable, named[0])
    for option in re.findall(r"`(--[\w-]+)` has no environment variable", page):
        assert not options[option].envvar, f"privacy.md says {option} has no variable"


def cli_options_by_variable() -> dict[str, set[str]]:
    """Each environment variable an option reads, with the option's names."""
    found: dict[str, set[str]] = {}
    stack: list[click.Command] = [cli]
    while stack:
        command = stack.pop()
        for param in command.params:
            envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            for name in filter(None, envvars):
                found.setdefault(name, set()).update(param.opts)
        if isinstance(command, click.Group):
            stack.extend(command.commands.values())
    return found


@pytest.mark.parametrize("page", [ROOT / "README.md", DOCS / "README.md"], ids=["README", "docs"])
def test_environment_tables_pair_each_variable_with_its_option(page: Path) -> None:
    """Each row of an environment-variable table names the option that reads that variable."""
    options = cli_options_by_variable()
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]*) \|", page.read_text(), re.MULTILINE)
    assert rows
    for variable, option in rows:
        if variable == ENV_PHONE_HASH_KEY:
            assert option.strip() == "none"
            continue
        named = set(re.findall(r"--[\w-]+", option.split("/")[0]))
        assert named, (variable, option)
        assert named <= options.get(variable, set()), (variable, option)


def environment_table_rows() -> list[tuple[str, str, str, str]]:
    text = (DOCS / "README.md").read_text()
    section = text.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    return re.findall(
        r"^\| `([A-Z_]+)` \| ([^|]*) \| ([^|]*) \| ([^|]*) \|$", section, re.MULTILINE
    )


def commands_reading(variable: str) -> set[str]:
    """The commands (by path, "" for the top level) with an option that reads ``variable``."""
    found: set[str] = set()
    stack: list[tuple[str, click.Command]] = [("", cli)]
    while stack:
        path, command = stack.pop()
        if any(param.envvar == variable for param in command.params):
            found.add(path)
        if isinstance(command, click.Group):
            stack.extend((f"{path} {name}".strip(), sub) for name, sub in command.commands.items())
    return found


ENV_ROWS = environment_table_rows()


@pytest.mark.parametrize("row", ENV_ROWS, ids=[row[0] for row in ENV_ROWS])
def test_environment_table_defaults_and_readers_are_true(row: tuple[str, str, str, str]) -> None:
    """docs/README.md gives each variable's real default and the commands that read it."""
    variable, _option, default, readers = row
    if variable == ENV_PHONE_HASH_KEY:
        return  # read by the phone policy of `sync`, not by an option
    reading = commands_reading(variable)
    documented = set(re.findall(r"`([\w ]+)`", readers))
    if readers.strip() == "every command":
        assert reading == {""}, variable  # an option of the top level, accepted after any command
    else:
        for name in documented:
            assert any(path == name or path.startswith(f"{name} ") for path in reading), name
        assert {path.split()[0] for path in reading} == documented, variable
    param = next(
        p
        for path in reading
        for p in (cli if not path else _command(path)).params
        if p.envvar == variable
    )
    shown = re.match(r"`([^`]+)`", default.strip())
    value = FALLBACKS.get(variable) or param.get_default(click.Context(cli), call=True)
    if shown:
        value = int(value) if isinstance(value, float) and value.is_integer() else value
        assert str(value).lower() == shown.group(1), variable
    else:
        assert default.startswith("none"), variable
        # click 8.2 marks "no default" with a sentinel of its own rather than None.
        assert value is None or repr(value) == "Sentinel.UNSET", (variable, value)


# Defaults that the settings supply when the option and the variable are both unset.
FALLBACKS = {ENV_BASE_URL: DEFAULT_BASE_URL, ENV_DATABASE_URL: DEFAULT_DATABASE_URL}


def _command(path: str) -> click.Command:
    command: click.Command = cli
    for name in path.split():
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command
