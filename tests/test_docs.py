"""The recipes in docs/ stay true to the CLI: commands parse, exit codes match, code compiles.

Every `batchsync ...` command in a code block of docs/*.md is parsed by click down to its
subcommand, with every option and argument converted, but nothing run; a renamed option or
command fails here. Commands are found in shell blocks (sh, bash, crontab), in argv lists of
Python blocks (``["batchsync", "sync", ...]``) and in ``command``/``args`` of YAML blocks.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from batchsync import cli as cli_module
from batchsync.cli import cli
from batchsync.config import ENV_PHONE_HASH_KEY
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
