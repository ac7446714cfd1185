"""Settings from options and the environment, validated once, with secrets kept out of sight.

This is the one module that reads ``os.environ``; the CLI's options name the same variables
(click's ``envvar=``) so ``--help`` shows them.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote, quote_plus, urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from batchsync.errors import ConfigError

ENV_API_KEY: Final = "BLAND_API_KEY"
ENV_BASE_URL: Final = "BLAND_BASE_URL"
ENV_DATABASE_URL: Final = "BATCHSYNC_DATABASE_URL"
ENV_PHONE_HASH_KEY: Final = "BATCHSYNC_PHONE_HASH_KEY"
ENV_SCHEMA: Final = "BATCHSYNC_SCHEMA"

DEFAULT_BASE_URL: Final = "https://api.bland.ai"
DEFAULT_DATABASE_URL: Final = "sqlite:///batchsync.db"


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# A PostgreSQL identifier that needs no escaping inside quotes; 63 bytes is the server's limit.
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True)
class DatabaseSettings:
    url: URL = field(repr=False)
    # PostgreSQL schema holding every batchsync table; None: the connection's default.
    schema: str | None = None

    @property
    def display_url(self) -> str:
        """The URL with its password hidden, fit for printing."""
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"DatabaseSettings(url={self.display_url!r}, schema={self.schema!r})"


@dataclass(frozen=True)
class ApiSettings:
    base_url: str
    api_key: Secret | None
    timeout: float = 30.0


def env(name: str) -> str | None:
    """Read one environment variable; empty counts as unset."""
    return os.environ.get(name) or None


def load_database(url: str | None, schema: str | None = None) -> DatabaseSettings:
    """Validate a SQLAlchemy database URL (default: a SQLite file in the working directory)
    and the PostgreSQL schema to keep batchsync's tables in, if any."""
    text = url or env(ENV_DATABASE_URL) or DEFAULT_DATABASE_URL
    if text.startswith("postgres://"):
        # The spelling Heroku, Airflow and others hand out; SQLAlchemy knows it as postgresql.
        text = "postgresql://" + text.removeprefix("postgres://")
    try:
        parsed = make_url(text)
    except ArgumentError:
        raise ConfigError(
            f"{ENV_DATABASE_URL} is not a database URL; expected e.g. sqlite:///batchsync.db "
            "or postgresql+psycopg://user@host/dbname"
        ) from None
    except ValueError:  # SQLAlchemy reads the port with int(); the URL may hold a password
        raise ConfigError(
            f"{ENV_DATABASE_URL} has a host or port that cannot be read (the port must be a "
            "number); expected e.g. postgresql+psycopg://user@host:5432/dbname"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"unsupported database {backend!r} in {redact_url(parsed)}: "
            "batchsync writes to PostgreSQL or SQLite"
        )
    if parsed.password:
        register_secret(str(parsed.password))
    for value in _query_values(parsed, "password"):  # libpq reads ?password= too
        register_secret(value)
    if backend == "postgresql" and parsed.drivername == "postgresql":
        # Plain postgresql:// would pick psycopg2, which is not a dependency.
        parsed = parsed.set(drivername="postgresql+psycopg")
    if schema is not None:
        _check_schema_name(schema, backend)
    return DatabaseSettings(url=parsed, schema=schema)


def _check_schema_name(schema: str, backend: str) -> None:
    if backend != "postgresql":
        raise ConfigError(
            f"--schema ({ENV_SCHEMA}) applies to PostgreSQL only: SQLite has no schemas; "
            "use another SQLite file instead, or unset it"
        )
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"--schema ({ENV_SCHEMA}) {schema!r} is not a valid schema name: use letters, "
            "digits and underscores, not starting with a digit, at most 63 characters"
        )
    if schema.lower().startswith("pg_"):
        raise ConfigError(
            f"--schema ({ENV_SCHEMA}) {schema!r} cannot start with pg_: PostgreSQL keeps "
            "those names for its own schemas"
        )


def quote_identifier(name: str) -> str:
    """Quote a SQL identifier (case kept), doubling any quote inside it."""
    return '"' + name.replace('"', '""') + '"'


# The longest request timeout accepted, in seconds (a day): longer is a mistake, and
# values like 1e308 or inf overflow the clocks below httpx.
MAX_TIMEOUT: Final = 86_400.0


def load_api(base_url: str | None, api_key: str | None, timeout: float = 30.0) -> ApiSettings:
    """Validate the API settings: an http(s) base URL, and the key when one is given.

    Credentials in the base URL (the password of ``user:password@``, query values named
    like ``token``, ``key``, ``secret``, ``password``, ``auth`` or ``sig``) are registered
    as secrets, so they are hidden wherever a URL is shown. The key is
    stripped of surrounding whitespace (a key read from a file often ends in a newline)
    and must be printable ASCII: an HTTP header cannot carry anything else.
    """
    base = (base_url or env(ENV_BASE_URL) or DEFAULT_BASE_URL).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(
            f"{ENV_BASE_URL} must start with http:// or https://, got {redact(base)!r}"
        )
    try:
        parts = urlsplit(base)
        parts.port  # noqa: B018 -- reading it checks the port is a number in range
    except ValueError:
        raise ConfigError(
            f"{ENV_BASE_URL} is not a valid URL (a bracket, host or port cannot be read); "
            "expected e.g. https://api.bland.ai"
        ) from None
    register_secret(parts.password)
    for name, value in parse_qsl(parts.query):
        if _CREDENTIAL_NAME.search(name):
            register_secret(value)
    if not parts.hostname:
        raise ConfigError(f"{ENV_BASE_URL} names no host; expected e.g. https://api.bland.ai")
    key = api_key or env(ENV_API_KEY)
    if key is not None:
        key = key.strip()
        if not _HEADER_SAFE.fullmatch(key):
            raise ConfigError(
                f"{ENV_API_KEY} holds a character an HTTP header cannot carry (a control "
                "character, or one outside ASCII): check how the key was copied"
            )
    register_secret(key)
    if not (isinstance(timeout, int | float) and math.isfinite(timeout)):
        raise ConfigError("the request timeout (--timeout) must be a number of seconds")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ConfigError(
            f"the request timeout (--timeout) must be positive and at most {MAX_TIMEOUT:g} seconds"
        )
    return ApiSettings(base_url=base, api_key=Secret(key) if key else None, timeout=timeout)


_CREDENTIAL_NAME = re.compile(r"token|key|secret|pass|auth|sig|credential", re.IGNORECASE)
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")


def _query_values(url: URL, name: str) -> list[str]:
    value = url.query.get(name)
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def redact_url(url: URL | str) -> str:
    """Render a database URL with its password, given in it or as ``?password=``, as ***."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except (ArgumentError, ValueError):
        return "<unparseable database URL>"
    if _query_values(parsed, "password"):
        parsed = parsed.update_query_dict({"password": "***"})
    shown = parsed.render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")
    return redact(shown)


_KNOWN_SECRETS: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Remember a secret so :func:`redact` can strip it from any text about to be shown."""
    global _pattern, _needle_cache
    if value and len(value) >= 4:
        _KNOWN_SECRETS.add(value)
        _pattern = None
        _needle_cache = None


def _spellings(secret: str) -> set[str]:
    """The forms a secret takes when a server echoes it back: as is, percent-encoded
    (path, query or form style), JSON-escaped (ASCII-only or not, slashes escaped or not),
    HTML-escaped (with ``/`` as ``&#x2F;`` or ``&#47;`` too) and base64-encoded."""
    escaped = json.dumps(secret)[1:-1]
    markup = html.escape(secret)
    encoded = base64.b64encode(secret.encode()).decode()
    return {
        secret,
        quote(secret, safe=""),
        quote(secret, safe="/"),
        quote_plus(secret),
        escaped,
        escaped.replace("/", "\\/"),
        json.dumps(secret, ensure_ascii=False)[1:-1],
        markup,
        markup.replace("/", "&#x2F;"),
        markup.replace("/", "&#47;"),
        encoded,
        encoded.rstrip("="),
    }


# Invisible characters a server (or a copy and paste) may slip inside an echoed key.
_INVISIBLE = "[\u00ad\u200b-\u200d\u2060\ufeff]*"


def _shortest_echo(spelling: str) -> int:
    """How much of a secret's start, echoed alone, counts as the secret: a truncated echo
    (``sk-abc123...``) is masked from max(8, half the secret) characters on."""
    return min(len(spelling), max(8, len(spelling) // 2))


def _echo_pattern(spelling: str) -> str:
    """A regex for ``spelling`` or any start of it at least :func:`_shortest_echo` long,
    with invisible characters allowed between its characters."""
    chars = [re.escape(c) for c in spelling]
    head = _INVISIBLE.join(chars[: _shortest_echo(spelling)])
    tail = ""
    for char in reversed(chars[_shortest_echo(spelling) :]):
        tail = f"(?:{_INVISIBLE}{char}{tail})?"
    return head + tail


def _secrets_pattern() -> re.Pattern[str] | None:
    global _pattern
    if _pattern is None and _KNOWN_SECRETS:
        spellings = {form for secret in _KNOWN_SECRETS for form in _spellings(secret)}
        # Longest first, so a secret is replaced whole rather than by a shorter one inside it;
        # case-insensitive, since percent-escapes come in both cases (%2F, %2f).
        alternatives = sorted(spellings, key=len, reverse=True)
        _pattern = re.compile("|".join(map(_echo_pattern, alternatives)), re.IGNORECASE)
        _each.clear()
        _each.extend(re.compile(_echo_pattern(a), re.IGNORECASE) for a in alternatives)
    return _pattern


# One pattern per spelling: where the alternation found an echo, the longest of them wins
# (a cut-short spelling may match less than another spelling of the same key there).
_each: list[re.Pattern[str]] = []


def _needles() -> tuple[bytes, ...]:
    """Two 8-character windows of every spelling of every secret, as bytes, as is and
    lower-case: an echo cut short, or with one invisible character slipped inside, still
    holds one of them whole (see echoes_secret)."""
    global _needle_cache
    if _needle_cache is None:
        spellings = {form for secret in _KNOWN_SECRETS for form in _spellings(secret)}
        windows = {form[:8] for form in spellings} | {f[8:16] for f in spellings if len(f) >= 16}
        _needle_cache = tuple({w.encode() for w in windows} | {w.lower().encode() for w in windows})
    return _needle_cache


_needle_cache: tuple[bytes, ...] | None = None


def echoes_secret(body: bytes) -> bool:
    """Whether a response body may quote a registered secret (or the start of one).

    A few ``bytes in`` tests, cheap enough for every response: only a body that passes
    needs its strings run through :func:`redact`.
    """
    return any(needle in body for needle in _needles())


def redact(text: str) -> str:
    """Replace every registered secret in ``text``, in any spelling of it, with ***.

    Every text batchsync prints, logs or stores passes through here: its own messages and
    what the API sent back, which may quote the key (in clear, URL-encoded, JSON- or
    HTML-escaped, base64-encoded, cut short, or with invisible characters inside).
    """
    pattern = _secrets_pattern()
    if pattern is None:
        return text
    parts: list[str] = []
    position = 0
    while found := pattern.search(text, position):
        start = found.start()
        end = max(m.end() for each in _each if (m := each.match(text, start)))
        parts += [text[position:start], "***"]
        position = end
    return "".join(parts) + text[position:] if parts else text


def forget_secrets() -> None:
    """Drop every registered secret (for tests)."""
    global _pattern, _needle_cache
    _KNOWN_SECRETS.clear()
    _pattern = None
    _needle_cache = None
