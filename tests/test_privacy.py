"""Phone numbers kept, hashed with a key, or dropped: in columns, request data and messages."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, inspect, text

from batchsync import runs
from batchsync.bland.auto import build_source
from batchsync.bland.http import BlandHttp, RetryPolicy
from batchsync.bland.v1 import V1Source
from batchsync.cli import cli
from batchsync.config import Secret, load_api, load_database
from batchsync.db import create_db_engine, upgrade
from batchsync.emulator import Emulator
from batchsync.errors import ConfigError, PayloadError
from batchsync.payload import parse_batch
from batchsync.privacy import (
    PhoneMode,
    PhonePolicy,
    apply_phone_policy,
    load_phone_policy,
    normalize_number,
    refuse_clear_numbers_over_protected,
    stores_numbers_in_clear,
)
from batchsync.sync import SyncOptions, run_sync

KEY = Secret("k3y-for-hmac-tests")
HASH = PhonePolicy(PhoneMode.HASH, KEY)


def raw_batch() -> dict:  # type: ignore[type-arg]
    return {
        "batch_params": {"id": "b1"},
        "analysis": {"error_messages": ["Cannot transfer to +12223334444 - gone"]},
        "call_data": [
            {
                "call_id": "c1",
                "to": "+15551230001",
                "from": "+15559990000",
                "error_message": "Invalid phone number: +15551230001",
                "request_data": {"phone_number": "+15551230001", "wait": False},
            }
        ],
    }


def test_hash_is_a_keyed_hmac_of_the_number() -> None:
    """hash stores HMAC-SHA256(key, number): stable, joinable, useless without the key."""
    parsed = apply_phone_policy(parse_batch(raw_batch(), batch_id="b1"), HASH)
    assert parsed.calls is not None
    call = parsed.calls[0]
    expected = hmac.new(b"k3y-for-hmac-tests", b"+15551230001", hashlib.sha256).hexdigest()
    assert call.to_number == expected
    assert call.request_data == {"phone_number": expected, "wait": False}
    assert call.from_number != call.to_number
    assert "+1555" not in (call.error_message or "")
    assert call.error_message is not None
    assert call.error_message.startswith("Invalid phone number: [phone:")
    assert parsed.errors is not None
    assert "+1222" not in parsed.errors[0].error_message


def test_drop_stores_null_and_scrubs_messages() -> None:
    """drop stores NULL for numbers and replaces numbers in messages with [phone]."""
    parsed = apply_phone_policy(
        parse_batch(raw_batch(), batch_id="b1"), PhonePolicy(PhoneMode.DROP)
    )
    assert parsed.calls is not None
    call = parsed.calls[0]
    assert (call.to_number, call.from_number) == (None, None)
    assert call.request_data == {"phone_number": None, "wait": False}
    assert call.error_message == "Invalid phone number: [phone]"


def test_keep_changes_nothing() -> None:
    """keep stores numbers as the API sent them."""
    parsed = parse_batch(raw_batch(), batch_id="b1")
    assert apply_phone_policy(parsed, PhonePolicy()) is parsed


def test_hash_without_a_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing needs BATCHSYNC_PHONE_HASH_KEY; without it the run does not start."""
    monkeypatch.delenv("BATCHSYNC_PHONE_HASH_KEY", raising=False)
    with pytest.raises(ConfigError, match="BATCHSYNC_PHONE_HASH_KEY"):
        load_phone_policy("hash")


@pytest.mark.parametrize("key", ['"s3cret-key"', "'s3cret-key'", " s3cret-key", "s3cret-key\n"])
def test_a_hash_key_with_quotes_or_spaces_is_used_as_given_with_a_warning(
    key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A key copied with its quotes or spaces is kept as given (changing it would change
    every hash), but the operator is told, without the key itself."""
    monkeypatch.setenv("BATCHSYNC_PHONE_HASH_KEY", key)
    with caplog.at_level("WARNING", logger="batchsync.privacy"):
        policy = load_phone_policy("hash")
    assert policy.key is not None
    assert policy.key.reveal() == key
    assert "BATCHSYNC_PHONE_HASH_KEY" in caplog.text
    assert "s3cret-key" not in caplog.text


def test_a_plain_hash_key_gets_no_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("BATCHSYNC_PHONE_HASH_KEY", "s3cret-key")
    with caplog.at_level("WARNING", logger="batchsync.privacy"):
        load_phone_policy("hash")
    assert caplog.text == ""


def test_tag_names_the_key_without_revealing_it() -> None:
    """The recorded policy identifies the key by a fingerprint, never the key itself."""
    assert HASH.tag.startswith("hash:")
    assert "k3y" not in HASH.tag
    assert PhonePolicy(PhoneMode.HASH, Secret("other-key-123")).tag != HASH.tag


def test_switching_to_hash_rewrites_completed_batches(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """Changing the policy re-fetches stored batches and leaves no clear number behind."""
    run_sync(engine, source, SyncOptions(discover=True))
    result = run_sync(engine, source, SyncOptions(discover=True, phones=HASH))

    assert result.count(runs.SKIPPED) == 0
    with engine.connect() as connection:
        clear = connection.execute(
            text("select count(*) from calls where to_number like '+%' or from_number like '+%'")
        ).scalar_one()
        recorded = connection.execute(
            text("select options from sync_runs order by id desc limit 1")
        ).scalar_one()
    assert clear == 0
    assert "hash:" in str(recorded)
    again = run_sync(engine, source, SyncOptions(discover=True, phones=HASH))
    assert again.count(runs.SYNCED) == 0


def test_default_keep_over_hashed_batches_is_refused_and_explicit_policies_pass() -> None:
    """Keeping numbers in clear over batches stored hashed or dropped raises ConfigError
    naming the stored modes; hash or drop, or nothing protected stored, pass."""
    with pytest.raises(ConfigError, match="hash"):
        refuse_clear_numbers_over_protected(PhonePolicy(), {"keep", "hash:ab12"})
    refuse_clear_numbers_over_protected(PhonePolicy(), {"keep"})
    refuse_clear_numbers_over_protected(PhonePolicy(PhoneMode.DROP), {"hash:ab12"})


# -- every place a number can hide, through the command line, on both databases -------------

HASH_KEY = "k3y-for-the-privacy-scan"
PLANTED = ("+15551230001", "+15559990000", "+442079460958")
EMAIL = "jane.doe@example.com"


def planted_payloads(emulator: Emulator) -> list[str]:
    """Put numbers in every place of one batch, and a number as a bad value in another."""
    first, second = emulator.batch_ids()[:2]
    raw = emulator.raw_batch(first)
    raw["batch_params"]["call_params"] = {"transfer_phone_number": "+1 555 999 0000"}
    raw["batch_params"]["sales_contact"] = {"Caller": "555.123.0001"}  # -> batches.extra
    raw["batch_params"]["base_prompt"] = "If asked, transfer to (555) 999-0000."
    raw["analysis"]["error_messages"] = ["Cannot transfer to 555.123.0001 - unreachable"]
    call = raw["call_data"][0]
    call["to"] = "+1 555-123-0001"
    call["from"] = "+15559990000"
    call["error_message"] = "Invalid phone number: +1 (555) 123-0001"
    call["request_data"] = {
        "phone_number": "5551230001",
        "contact": {"Mobile": "+44 20 7946 0958", "alt": ["+15551230001"]},
        "+15551230001": "vip",
        "wait": False,
    }
    call["variables"] = {"to": "+15551230001", "note": "customer 5551230001 prefers mornings"}
    call["metadata"] = {"crm": {"record": {"PhoneNumber": 442079460958}}}
    call["summary"] = f"Reached +1 555 123 0001; wrote to {EMAIL} and 020 7946 0958."
    call["transcripts"] = [
        {
            "id": 990001,
            "created_at": call["created_at"],
            "text": f"Call me on 555-123-0001 or mail {EMAIL}, or +44 20 7946 0958.",
            "user": "user",
        }
    ]
    emulator.put_batch(raw)
    bad = emulator.raw_batch(second)
    bad["call_data"][0]["corrected_duration"] = "+1 555-123-0001"
    emulator.put_batch(bad)
    numbers = set(PLANTED)
    for batch_id in (first, second):
        for each in emulator.raw_batch(batch_id)["call_data"]:
            numbers.update(str(each[key]) for key in ("to", "from") if each.get(key))
    return sorted(numbers)


def raw_numbers_in(text: str, numbers: list[str]) -> list[str]:
    """Every written form of any of ``numbers`` in ``text``, whatever its separators."""
    nationals = {re.sub(r"\D", "", n)[-10:] for n in numbers}
    found = []
    for match in re.finditer(r"\+?\d[\d\s().\-/]{5,}\d", text):
        digits = re.sub(r"\D", "", match.group())
        if any(national in digits for national in nationals):
            found.append(match.group())
    return found


def table_texts(database_url: str) -> dict[str, str]:
    """Every table's rows as text, keyed by table name."""
    engine = create_db_engine(load_database(database_url))
    texts = {}
    with engine.connect() as connection:
        for table in inspect(engine).get_table_names():
            rows = connection.execute(text(f"select * from {table}")).all()
            texts[table] = "\n".join(
                " | ".join(json.dumps(v, default=str) if not isinstance(v, str) else v for v in r)
                for r in rows
            )
    engine.dispose()
    return texts


@pytest.mark.slow
@pytest.mark.parametrize("redact", [False, True], ids=["as-said", "redact-transcripts"])
@pytest.mark.parametrize("mode", ["keep", "hash", "drop"])
def test_no_raw_number_is_written_anywhere_under_hash_or_drop(
    database_url: str, mode: str, redact: bool
) -> None:
    """hash/drop leave no written form of any number in any table or output; keep only in data."""
    emulator = Emulator(seed=5, batches=2, calls_per_batch=6, api_key="sk-privacy-scan")
    numbers = planted_payloads(emulator)
    args = ["-vv", "sync", "--all", "--migrate", "--json", "--phone-numbers", mode]
    if redact:
        args.append("--redact-transcripts")
    with emulator.serve() as server:
        env = {
            **os.environ,
            "BLAND_BASE_URL": server.url,
            "BLAND_API_KEY": emulator.api_key,
            "BATCHSYNC_DATABASE_URL": database_url,
            "BATCHSYNC_PHONE_HASH_KEY": HASH_KEY,
        }
        done = subprocess.run(
            [sys.executable, "-m", "batchsync", *args], env=env, capture_output=True, text=True
        )
    assert done.returncode == 1, done.stderr  # the batch with a number as a duration fails
    texts = table_texts(database_url)
    outputs = {"stdout": done.stdout, "stderr": done.stderr}
    ledger = {name: texts.pop(name) for name in ("sync_runs", "sync_run_batches")}
    assert "corrected_duration" in ledger["sync_run_batches"]  # the error names the field

    for name, written in {**outputs, **ledger}.items():
        assert raw_numbers_in(written, numbers) == [], name
    spoken = texts["call_transcripts"] + texts["calls"]
    if mode == "keep":
        assert raw_numbers_in(texts["calls"], numbers)  # the scan does see numbers
    else:
        for name, written in texts.items():
            assert raw_numbers_in(written, numbers) == [], name
    if redact:
        assert EMAIL not in spoken
        assert raw_numbers_in(texts["call_transcripts"], numbers) == []
    else:
        assert EMAIL in spoken  # only --redact-transcripts masks e-mail addresses
    if mode == "hash":
        digest = hmac.new(HASH_KEY.encode(), b"+15551230001", hashlib.sha256).hexdigest()
        assert texts["calls"].count(digest) >= 4  # to, request_data (twice), variables.to


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("corrected_duration", "+1 555-123-0001"),
        ("call_length", "555-123-0001"),
        ("completed", "+15551230001"),
        ("created_at", "+1 (555) 123-0001"),
        ("corrected_duration", 15551230001),
    ],
)
def test_payload_errors_name_the_field_without_quoting_the_value(field: str, value: Any) -> None:
    """A bad value that is a phone number is reported by field and problem, never quoted."""
    raw = raw_batch()
    raw["call_data"][0][field] = value
    with pytest.raises(PayloadError) as caught:
        parse_batch(raw, batch_id="b1")
    message = str(caught.value)
    assert f"call_data[0].{field}" in message
    assert raw_numbers_in(message, ["+15551230001"]) == []


@pytest.mark.parametrize(
    "written",
    ["+15551230001", "+1 555-123-0001", "+1 (555) 123-0001", "555.123.0001", "5551230001",
     "15551230001", "001 555 123 0001"],
)  # fmt: skip
def test_written_forms_of_one_number_hash_alike(written: str) -> None:
    """Every written form of a number normalises to E.164 and so gives the same hash."""
    assert normalize_number(written) == "+15551230001"
    assert HASH.number(written) == HASH.number("+15551230001")


@pytest.mark.parametrize("written", ["12345", "call me", "+1 555 CALL NOW", "1234567890123456"])
def test_what_is_not_a_number_does_not_normalise(written: str) -> None:
    """Too few or too many digits, or letters, are not a phone number."""
    assert normalize_number(written) is None


def test_tag_changes_with_what_is_stored() -> None:
    """The recorded tag differs between policies and with transcript redaction."""
    tags = {
        PhonePolicy().tag,
        PhonePolicy(redact_transcripts=True).tag,
        PhonePolicy(PhoneMode.DROP).tag,
        PhonePolicy(PhoneMode.DROP, redact_transcripts=True).tag,
        HASH.tag,
        PhonePolicy(PhoneMode.HASH, KEY, redact_transcripts=True).tag,
    }
    assert len(tags) == 6
    assert "drop" not in tags  # batches written under the old drop are rewritten


def test_switching_on_redaction_rewrites_stored_transcripts(
    engine: Engine, source: V1Source, emulator: Emulator
) -> None:
    """A run with transcript redaction rewrites batches stored without it."""
    batch_id = emulator.batch_ids()[0]
    raw = emulator.raw_batch(batch_id)
    line = next(c for c in raw["call_data"] if c.get("transcripts"))["transcripts"][0]
    line["text"] = f"write to {EMAIL}"
    emulator.put_batch(raw)
    run_sync(engine, source, SyncOptions(discover=True))
    run_sync(
        engine, source, SyncOptions(discover=True, phones=PhonePolicy(redact_transcripts=True))
    )
    with engine.connect() as connection:
        stored = connection.execute(
            text("select text from call_transcripts where line_id = :l"), {"l": line["id"]}
        ).scalar_one()
    assert stored == "write to [email]"


def test_only_keep_tags_count_as_numbers_in_clear() -> None:
    """The guard against un-hashing treats keep (redacted or not) as clear, hash/drop as not."""
    assert stores_numbers_in_clear(PhonePolicy(redact_transcripts=True).tag)
    assert not stores_numbers_in_clear(HASH.tag)
    assert not stores_numbers_in_clear(PhonePolicy(PhoneMode.DROP, redact_transcripts=True).tag)


def test_redacting_runs_at_the_default_policy_are_not_refused(database_url: str) -> None:
    """Batches stored under keep with redacted transcripts do not block later keep runs."""
    emulator = Emulator(seed=5, batches=2, calls_per_batch=4, api_key="sk-privacy-scan")
    with emulator.serve() as server:
        env = {
            "BLAND_BASE_URL": server.url,
            "BLAND_API_KEY": emulator.api_key,
            "BATCHSYNC_DATABASE_URL": database_url,
        }
        runner = CliRunner()
        first = runner.invoke(cli, ["sync", "--all", "--migrate", "--redact-transcripts"], env=env)
        again = runner.invoke(cli, ["sync", "--all", "--refresh"], env=env)
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output


def test_numbers_sent_as_json_numbers_or_glued_to_words_are_masked() -> None:
    """A number sent as a JSON float hashes like its text; one glued to a word is still found."""
    raw = raw_batch()
    raw["call_data"][0]["metadata"] = {"PhoneNumber": 15551230001.0}
    raw["analysis"]["error_messages"].append("retry for id15551230001 failed")
    parsed = apply_phone_policy(parse_batch(raw, batch_id="b1"), HASH)
    assert parsed.calls is not None
    assert parsed.errors is not None
    extra = parsed.calls[0].extra
    assert extra is not None
    assert extra["metadata"]["PhoneNumber"] == HASH.number("+15551230001")
    assert raw_numbers_in(parsed.errors[-1].error_message, ["+15551230001"]) == []


def test_api_error_quoting_a_number_is_recorded_masked_under_hash(
    database_url: str,
) -> None:
    """A 4xx body that quotes a phone number reaches no error column, log or summary in clear."""
    emulator = Emulator(seed=5, batches=1, calls_per_batch=2, api_key="sk-privacy-errors")
    batch_id = emulator.batch_ids()[0]

    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/batches/"):
            return httpx.Response(422, json={"message": "cannot dial +1 555-123-0001 today"})
        return emulator.handle(request)

    engine = create_db_engine(load_database(database_url))
    upgrade(engine)
    policy = PhonePolicy(PhoneMode.HASH, KEY)
    with BlandHttp(
        load_api("http://bland-emulator.local", emulator.api_key),
        transport=httpx.MockTransport(refuse),
        retry=RetryPolicy(attempts=1),
    ) as http:
        source = V1Source(http)
        result = run_sync(engine, source, SyncOptions(batch_ids=(batch_id,), phones=policy))
    engine.dispose()
    assert [o.status for o in result.outcomes] == ["failed"]
    assert "cannot dial [phone:" in (result.outcomes[0].error or "")
    ledger = table_texts(database_url)["sync_run_batches"]
    assert raw_numbers_in(ledger, ["+15551230001"]) == []
    assert "cannot dial [phone:" in ledger


def plant_numbers_in_ordinary_fields(emulator: Emulator) -> str:
    """Write the first call's number into columns with no phone-ish name; return the batch."""
    batch_id = emulator.batch_ids()[0]
    raw = emulator.raw_batch(batch_id)
    call = raw["call_data"][0]
    call["to"] = "+15551230001"
    call["call_id"] = "+15551230001"
    call["answered_by"] = "+15551230001"
    call["status"] = "+1 555 123 0001"
    call["queue_status"] = "+15551230001"
    call["endpoint_url"] = "tel:+15551230001"
    call["call_length"] = 15551230001
    call["request_data"] = {"nested": {"deep": ["+15551230001", 15551230001, 5551230001]}}
    for line in call.get("transcripts") or []:
        line["user"] = "+15551230001"
    raw["analysis"]["queue_statuses"] = {"complete": 1, "+15551230001": 1}
    raw["analysis"]["error_messages"] = [{"call_id": "+15551230001", "error_message": "x"}]
    emulator.put_batch(raw)
    return batch_id


@pytest.mark.parametrize("mode", ["hash", "drop"])
def test_numbers_in_any_text_json_or_numeric_column_are_masked(
    database_url: str, mode: str
) -> None:
    """hash/drop mask a call's number in every column (speaker, statuses, ids, URLs, JSON
    integers, numeric columns), and a call id that is a number is stored alike in every table."""
    emulator = Emulator(seed=3, batches=1, calls_per_batch=2, api_key="sk-privacy-fields")
    batch_id = plant_numbers_in_ordinary_fields(emulator)
    engine = create_db_engine(load_database(database_url))
    upgrade(engine)
    with BlandHttp(
        load_api("http://bland-emulator.local", emulator.api_key),
        transport=httpx.MockTransport(emulator.handle),
    ) as http:
        source = V1Source(http)
        result = run_sync(
            engine,
            source,
            SyncOptions(batch_ids=(batch_id,), phones=PhonePolicy(PhoneMode(mode), KEY)),
        )
        with engine.connect() as connection:
            ids = {
                table: set(connection.execute(text(f"select call_id from {table}")).scalars())
                for table in ("calls", "call_transcripts", "errors")
            }
    engine.dispose()
    assert [o.status for o in result.outcomes] == ["synced"], result.outcomes
    stored_id = HASH.number("+15551230001") if mode == "hash" else "[phone]"
    assert stored_id in ids["calls"]
    assert stored_id in ids["call_transcripts"]
    assert ids["errors"] == {stored_id}
    for name, written in table_texts(database_url).items():
        assert raw_numbers_in(written, ["+15551230001"]) == [], name
        assert "15551230001" not in written, name


@pytest.mark.parametrize("left_out", ["--no-transcripts", "--no-calls", "--no-analysis"])
def test_policy_switch_that_leaves_parts_out_is_refused_and_tags_stay(
    database_url: str, left_out: str
) -> None:
    """A switch to hash with --no-calls/--no-transcripts/--no-analysis exits 3 naming the
    option, stores nothing, and keeps the tag; the same policy with the option still runs."""
    emulator = Emulator(seed=5, batches=1, calls_per_batch=2, api_key="sk-privacy-switch")
    with emulator.serve() as server:
        env = {
            "BLAND_BASE_URL": server.url,
            "BLAND_API_KEY": emulator.api_key,
            "BATCHSYNC_DATABASE_URL": database_url,
            "BATCHSYNC_PHONE_HASH_KEY": HASH_KEY,
        }
        runner = CliRunner()
        first = runner.invoke(cli, ["sync", "--all", "--migrate"], env=env)
        switch = runner.invoke(cli, ["sync", "--all", "--phone-numbers", "hash", left_out], env=env)
        same = runner.invoke(cli, ["sync", "--all", "--refresh", left_out], env=env)
    assert first.exit_code == 0, first.output
    assert switch.exit_code == 3, switch.output
    assert left_out in switch.output
    assert same.exit_code == 0, same.output
    engine = create_db_engine(load_database(database_url))
    with engine.connect() as connection:
        tags = set(connection.execute(text("select phone_numbers from batches")).scalars())
    engine.dispose()
    assert tags == {"keep"}


@pytest.mark.parametrize("streamed", [False, True], ids=["read-whole", "streamed"])
def test_api_key_echoed_in_a_batch_body_is_stored_masked(database_url: str, streamed: bool) -> None:
    """A 200 body quoting the API key (call_params, request headers, an error text, cut
    short), read whole or streamed, is stored with *** in its place in every table."""
    key = "sk-privacy-echo-0123456789"
    emulator = Emulator(seed=5, batches=1, calls_per_batch=2, api_key=key)
    batch_id = emulator.batch_ids()[0]
    raw = emulator.raw_batch(batch_id)
    raw["batch_params"]["call_params"] = {"api_key": key}
    call = raw["call_data"][0]
    call["request_data"] = {"webhook_headers": {"Authorization": f"Bearer {key}"}}
    call["error_message"] = f"auth failed with {key[:-3]}"
    raw["analysis"]["error_messages"] = [f"key {key[:12]}\u200b{key[12:]} refused"]
    emulator.put_batch(raw)
    engine = create_db_engine(load_database(database_url))
    upgrade(engine)
    with BlandHttp(
        load_api("http://bland-emulator.local", key), transport=httpx.MockTransport(emulator.handle)
    ) as http:
        source = V1Source(http)
        if streamed:
            source.http.stream_threshold = 0
        result = run_sync(engine, source, SyncOptions(batch_ids=(batch_id,)))
    engine.dispose()
    assert [o.status for o in result.outcomes] == ["synced"], result.outcomes
    texts = table_texts(database_url)
    for name, written in texts.items():
        assert "0123456" not in written, name
    assert "***" in texts["batches"]
    assert "Bearer ***" in texts["calls"]


@pytest.mark.parametrize(
    ("written", "normal"),
    [("+44 (0) 7700 900124", "+447700900124"), ("+44(0)20 7946 0958", "+442079460958")],
)
def test_a_trunk_zero_after_the_country_code_is_dropped(written: str, normal: str) -> None:
    """'+44 (0) 7700 900124' is the E.164 number +447700900124: the '(0)' is not dialled."""
    assert normalize_number(written) == normal


@pytest.mark.parametrize(
    "written", ["+1-212-555-0199x123", "(212)555-0199", "(212) 555-0199 ext. 45", "212.555.0199"]
)
def test_redaction_masks_extensions_and_parentheses_whole(written: str) -> None:
    """--redact-transcripts leaves no digit, parenthesis or extension of a number behind."""
    raw = raw_batch()
    raw["call_data"][0]["transcripts"] = [{"id": 1, "text": f"dial {written} now", "user": "user"}]
    policy = PhonePolicy(redact_transcripts=True)
    parsed = apply_phone_policy(parse_batch(raw, batch_id="b1"), policy)
    assert parsed.transcripts is not None
    assert parsed.transcripts[0].text == "dial [phone] now"


ECHOED_KEY = "sk-privacy-echo-0123456789"


def assert_key_stored_masked(database_url: str, masked_in: set[str]) -> None:
    """No table holds the key or a start of it half its length or more; *** stands in
    its place in each table of ``masked_in``."""
    texts = table_texts(database_url)
    half = ECHOED_KEY[: len(ECHOED_KEY) // 2]
    for name, written in texts.items():
        assert half.lower() not in written.lower(), name
    for name in masked_in:
        assert "***" in texts[name], name


def echo_key_in_v2(emulator: Emulator, where: str) -> set[str]:
    """Quote the key in one part of the emulator's v2 batch (or all): the tables that
    should then hold *** in its place."""
    key = ECHOED_KEY
    (v2,) = emulator.v2.batches.values()
    masked: set[str] = set()
    if where in ("batch", "everywhere"):
        v2.batch["description"] = f"Batch for {key[:20]}"
        v2.batch["base_prompt"] = json.dumps(
            {"task": f"Use {key}", "webhook_headers": {"Authorization": f"Bearer {key}"}, key: 1}
        )
        masked |= {"batches"}
    if where in ("logs", "everywhere"):
        v2.logs[0]["payload"] = {"message": f"key {key} accepted", "headers": [key[:-4]]}
        masked |= {"batch_logs"}
    if where in ("calls list", "everywhere"):
        v2.calls[-1]["error_message"] = f"auth failed with {key}"
        masked |= {"calls"}
    if where in ("call details", "everywhere"):
        call = v2.calls[0]
        call["summary"] = f"The caller read out {key}."
        call["variables"] = {"api_key": key, "nested": [{"auth": f"Bearer {key}"}]}
        call["metadata"] = {"token": key[:15]}
        call["transcripts"][0]["text"] = f"my key is {key}"
        masked |= {"calls", "call_transcripts"}
    return masked


@pytest.mark.parametrize("where", ["batch", "logs", "calls list", "call details", "everywhere"])
def test_api_key_echoed_in_v2_data_is_stored_masked(database_url: str, where: str) -> None:
    """A v2 batch quoting the API key in any of its bodies (the batch, a logs page, a
    calls-list page, a call's detail) is stored with *** in its place in every table."""
    emulator = Emulator(seed=5, v2_batches=1, v2_calls_per_batch=3, api_key=ECHOED_KEY)
    masked = echo_key_in_v2(emulator, where)
    engine = create_db_engine(load_database(database_url))
    upgrade(engine)
    with BlandHttp(
        load_api("http://bland-emulator.local", ECHOED_KEY), transport=emulator.transport()
    ) as http:
        source = build_source(http, "v2")
        result = run_sync(engine, source, SyncOptions(discover=True))
    engine.dispose()
    assert [o.status for o in result.outcomes] == ["synced"], result.outcomes
    assert_key_stored_masked(database_url, masked)


@pytest.mark.parametrize("spooled", [False, True], ids=["read-whole", "spooled"])
def test_api_key_echoed_in_v1_call_details_is_stored_masked(
    database_url: str, spooled: bool
) -> None:
    """--call-details on v1 batches: a call's detail quoting the API key (summary,
    variables, metadata, transcript) while the batch body does not is stored masked, for
    a body read whole and for one spooled and parsed a chunk of calls at a time."""
    key = ECHOED_KEY
    emulator = Emulator(seed=5, batches=1, calls_per_batch=3, api_key=key)
    batch_id = emulator.batch_ids()[0]
    call_ids = [c.get("call_id") or c["c_id"] for c in emulator.raw_batch(batch_id)["call_data"]]
    emulator.call_detail_fields[call_ids[-1]] = {
        "summary": f"The caller read out {key}.",
        "variables": {"api_key": key, key: [f"Bearer {key}"]},
        "metadata": {"token": key[:15]},
        "transcripts": [{"id": 1, "text": f"my key is {key}", "user": "user"}],
    }
    engine = create_db_engine(load_database(database_url))
    upgrade(engine)
    with BlandHttp(
        load_api("http://bland-emulator.local", key), transport=emulator.transport()
    ) as http:
        source = build_source(http, "v1", True, spool_large_bodies=spooled)
        if spooled:
            http.stream_threshold = 0
            source.v1.chunk_calls = 1
        result = run_sync(engine, source, SyncOptions(batch_ids=(batch_id,)))
    engine.dispose()
    assert [o.status for o in result.outcomes] == ["synced"], result.outcomes
    assert_key_stored_masked(database_url, {"calls"})
