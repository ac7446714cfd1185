"""The text of JSON columns, as batchsync writes them on both databases.

A module of its own, without SQLAlchemy, so that parser processes can format rows
(:mod:`batchsync.encoded`) without importing the database layer.
"""

from __future__ import annotations

from typing import Any

import orjson


def json_dumps(value: Any) -> str:
    """Serialise JSON columns with sorted keys, so equal values are equal text on SQLite.

    Integers of any size are written with every digit (orjson stops at 64 bits).
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return _json_text(value)  # an integer beyond 64 bits, or nesting deeper than orjson's


class _Token(str):
    """Punctuation already rendered, on the stack of :func:`_json_text`."""


def _json_text(value: Any) -> str:
    """What json_dumps writes, for any integer and any depth (no recursion)."""
    parts: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is _Token:
            parts.append(item)
        elif isinstance(item, dict):
            entries = sorted(((_key_text(k), v) for k, v in item.items()), key=lambda e: e[0])
            stack.append(_Token("}"))
            for index in range(len(entries) - 1, -1, -1):
                key, entry = entries[index]
                stack.append(entry)
                stack.append(_Token(("," if index else "") + orjson.dumps(key).decode() + ":"))
            stack.append(_Token("{"))
        elif isinstance(item, list | tuple):
            stack.append(_Token("]"))
            for index in range(len(item) - 1, -1, -1):
                stack.append(item[index])
                if index:
                    stack.append(_Token(","))
            stack.append(_Token("["))
        elif isinstance(item, int) and not isinstance(item, bool):
            parts.append(str(int(item)))
        else:
            parts.append(orjson.dumps(item).decode())
    return "".join(parts)


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(int(key))
    return orjson.dumps(key).decode().strip('"')


def jsonb_dumps(value: Any) -> bytes:
    """JSON column text for binary COPY: orjson (psycopg's default is the slower json
    module), with every digit of integers beyond 64 bits, as :func:`json_dumps` writes."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return json_dumps(value).encode()
