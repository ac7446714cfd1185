"""Settings: validation, defaults, and secrets that never show themselves."""

from __future__ import annotations

import base64
import html
import json
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from batchsync.config import (
    DEFAULT_DATABASE_URL,
    Secret,
    echoes_secret,
    load_api,
    load_database,
    quote_identifier,
    redact,
    redact_url,
    register_secret,
)
from batchsync.errors import ConfigError


def test_database_defaults_to_a_local_sqlite_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a URL anywhere, the database is sqlite:///batchsync.db."""
    monkeypatch.delenv("BATCHSYNC_DATABASE_URL", raising=False)
    assert load_database(None).url.render_as_string() == DEFAULT_DATABASE_URL


def test_plain_postgresql_url_uses_psycopg_3() -> None:
    """postgresql:// URLs are driven by psycopg 3, the driver batchsync ships with."""
    assert load_database("postgresql://u@h/db").url.drivername == "postgresql+psycopg"


@pytest.mark.parametrize("url", ["not a url", "mysql://root@localhost/x", "oracle://a@b/c"])
def test_bad_or_unsupported_database_urls_are_config_errors(url: str) -> None:
    """A URL that is not one, or for another database, is refused clearly."""
    with pytest.raises(ConfigError):
        load_database(url)


def test_database_settings_never_show_the_password() -> None:
    """repr and display_url of database settings hide the password."""
    settings = load_database("postgresql+psycopg://user:hunter22@db/prod")
    assert "hunter22" not in repr(settings)
    assert "hunter22" not in settings.display_url
    assert "***" in settings.display_url


def test_api_key_is_a_secret_that_hides_itself() -> None:
    """The key survives for the request header but not in repr, str or settings repr."""
    api = load_api("https://api.bland.ai", "sk-abcdef-123456")
    assert api.api_key is not None
    assert api.api_key.reveal() == "sk-abcdef-123456"
    assert "sk-abcdef" not in repr(api)
    assert "sk-abcdef" not in str(api.api_key)


def test_base_url_must_be_http() -> None:
    """A base URL without http(s) is refused."""
    with pytest.raises(ConfigError, match="BLAND_BASE_URL"):
        load_api("ftp://example", "k")


def test_redact_strips_every_registered_secret() -> None:
    """Registered secrets are replaced by *** in any text."""
    register_secret("topsecret-1")
    register_secret("x")  # too short to be a secret: never replaced
    assert redact("a topsecret-1 b x") == "a *** b x"


def test_redact_url_of_garbage_does_not_echo_it() -> None:
    """An unparseable URL is not echoed back (it may hold a password)."""
    assert redact_url("::::hunter22") == "<unparseable database URL>"


def test_secrets_compare_by_value() -> None:
    """Two secrets with the same value are equal."""
    assert Secret("a1b2c3") == Secret("a1b2c3")
    assert Secret("a1b2c3") != Secret("zzzzzz")


def test_schema_is_kept_for_postgresql() -> None:
    """A plain identifier is accepted as the PostgreSQL schema, case kept."""
    settings = load_database("postgresql://u@127.0.0.1/db", "Bland_2")
    assert settings.schema == "Bland_2"
    assert "Bland_2" in repr(settings)


def test_schema_is_refused_for_sqlite() -> None:
    """SQLite has no schemas: --schema with a SQLite URL is a configuration error."""
    with pytest.raises(ConfigError, match="PostgreSQL only"):
        load_database("sqlite:///x.db", "bland")


@pytest.mark.parametrize("name", ["", "my-schema", "9lives", 'a"b', "pg_temp", "x" * 64, "a.b"])
def test_schema_that_is_not_an_identifier_is_refused(name: str) -> None:
    """A schema name that is not letters, digits and underscores is a configuration error."""
    with pytest.raises(ConfigError, match="--schema"):
        load_database("postgresql://u@127.0.0.1/db", name)


def test_quote_identifier_doubles_quotes() -> None:
    """Quoted identifiers keep their case and cannot be closed early."""
    assert quote_identifier("Bland") == '"Bland"'
    assert quote_identifier('a"b') == '"a""b"'


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(lambda k: k, id="as-is"),
        pytest.param(lambda k: f"Bearer {k}", id="bearer"),
        pytest.param(lambda k: quote(k, safe=""), id="percent-encoded"),
        pytest.param(lambda k: quote(k, safe="").lower(), id="percent-encoded-lowercase"),
        pytest.param(quote_plus, id="form-encoded"),
        pytest.param(lambda k: json.dumps(k), id="json-escaped"),
        pytest.param(lambda k: json.dumps(k).replace("/", "\\/"), id="json-escaped-slashes"),
        pytest.param(lambda k: html.escape(k), id="html-escaped"),
        pytest.param(lambda k: html.escape(k).replace("/", "&#x2F;"), id="html-escaped-slash"),
        pytest.param(lambda k: base64.b64encode(k.encode()).decode(), id="base64"),
        pytest.param(lambda k: k[:-3] + "...", id="truncated"),
        pytest.param(lambda k: k[:12] + "\u200b" + k[12:], id="zero-width-inside"),
        pytest.param(lambda k: k[: len(k) // 2 + 1], id="first-half"),
    ],
)
def test_redact_hides_a_key_in_every_spelling_a_server_echoes(spelling: Any) -> None:
    """A registered key is replaced whether it comes back raw, URL-, JSON-, HTML- or
    base64-encoded, cut short to half its length or more, or with an invisible character
    inside; and the raw body quoting it is flagged by echoes_secret."""
    key = 'sk-live_9f/2c+e0"b7 x<&>Qz'
    register_secret(key)
    text = f"invalid credentials: {spelling(key)}"
    assert redact(text).startswith("invalid credentials: ")
    assert "9f" not in redact(text)
    assert "***" in redact(text)
    assert echoes_secret(text.encode())


def test_a_short_start_of_the_key_or_an_unrelated_body_is_not_flagged() -> None:
    """Fewer than max(8, half the key) characters of its start are not the key; a body
    without it is not flagged, so its records are not walked."""
    register_secret("sk-live-0123456789abcdef")
    assert redact("prefix sk-live-0 here") == "prefix sk-live-0 here"
    assert not echoes_secret(b'{"call_params": {"voice": "maya"}}')


def test_redact_leaves_text_alone_without_secrets() -> None:
    """With nothing registered, or a value too short to be a key, text passes unchanged."""
    register_secret("abc")
    assert redact("abc and more") == "abc and more"


def test_a_password_given_as_a_query_parameter_is_hidden_and_registered() -> None:
    """?password= in a database URL is shown as *** and redacted from any text."""
    settings = load_database("postgresql://app@127.0.0.1/db?password=hunter2-query")
    assert "hunter2" not in redact_url(settings.url)
    assert "password=***" in redact_url(settings.url)
    assert redact("auth failed for hunter2-query") == "auth failed for ***"


def test_credentials_in_the_base_url_are_registered_as_secrets() -> None:
    """The password and token-like query values of --base-url never show in any text."""
    load_api("http://proxyuser:proxypass99@127.0.0.1:1/?token=tok77&v=1", "sk-test-key-1")
    shown = redact("cannot reach http://proxyuser:proxypass99@127.0.0.1:1/?token=tok77&v=1")
    assert "proxypass99" not in shown
    assert "tok77" not in shown
    assert "v=1" in shown


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999", "http://:80", "http://"])
def test_malformed_base_urls_are_config_errors(url: str) -> None:
    """A base URL whose host or port cannot be read is a ConfigError, not a crash."""
    with pytest.raises(ConfigError, match="BLAND_BASE_URL"):
        load_api(url, "sk-test-key-1")


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 1e308, 0.0, -1.0])
def test_request_timeouts_that_are_not_a_usable_number_are_config_errors(timeout: float) -> None:
    """nan, infinite, huge, zero or negative --timeout is refused with a ConfigError."""
    with pytest.raises(ConfigError, match="--timeout"):
        load_api(None, "sk-test-key-1", timeout)


def test_api_key_read_with_a_trailing_newline_is_stripped() -> None:
    """A key read from a file ("...\\n") is used without its surrounding whitespace."""
    api = load_api(None, "sk-test-key-1\r\n ")
    assert api.api_key is not None
    assert api.api_key.reveal() == "sk-test-key-1"


@pytest.mark.parametrize("key", ["é-sk-test-key", "sk-test\nkey-1", "sk-test\x00key-1"])
def test_api_key_with_control_or_non_ascii_characters_is_refused_without_quoting_it(
    key: str,
) -> None:
    """A key an HTTP header cannot carry is a ConfigError naming BLAND_API_KEY, not the key."""
    with pytest.raises(ConfigError, match="BLAND_API_KEY") as raised:
        load_api(None, key)
    assert "test" not in str(raised.value)


def test_a_cut_short_echo_is_masked_to_its_end_whatever_other_spellings_match() -> None:
    """Where several spellings of the key match an echo, the longest match is masked, so no
    tail of the key is left ('&q' of a key whose HTML form spells '&' as '&amp;')."""
    key = "sk+SECRET/abc 123=XYZ&q<1>"
    register_secret(key)
    assert redact(f"bad key {key[:-3]}...") == "bad key ***..."
    assert redact(f"x {key} y") == "x *** y"
