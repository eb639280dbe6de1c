"""JSON as flask_pgtq stores it: arguments, results and progress.

Strict, so that what a handler gets (or a waiter reads) is exactly what was
given, and so that PostgreSQL can always store it:

- NaN and infinities are refused (they are not JSON);
- dict keys must be strings (JSON would silently turn ``{1: "a"}`` into
  ``{"1": "a"}``);
- strings must not hold NUL or lone surrogates (``jsonb`` cannot store
  ``\\u0000``, and a lone surrogate is not text);
- nesting is at most :data:`MAX_DEPTH` levels (deeper values would make a
  decoder run out of stack in the worker);
- the text is at most a given number of bytes.

Every refusal is a :class:`ValueError` subclass naming what was wrong, never
a driver error or a :class:`RecursionError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .exceptions import ArgumentsNotSerializable, PayloadTooLarge

#: Compact, strict JSON text of a value.  One shared encoder: ``json.dumps``
#: with options builds a new encoder on every call.  ASCII only: NUL and
#: surrogates show up as ``\\u`` escapes, which :func:`encode` looks for.
dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode

#: Deepest nesting of lists and dicts accepted in stored JSON.
MAX_DEPTH = 100

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class NotStorable(ValueError):
    """A value that flask_pgtq cannot store as JSON; the message says why."""


def encode(value: Any, max_bytes: int | None = None) -> str:
    """Strict JSON text of *value*.

    :param max_bytes: refuse text longer than this many bytes.
    :raises NotStorable: the value cannot be stored faithfully (see the
        module's rules); the message says what is wrong and where.
    """
    if value is None:  # what most handlers return: no encoder call
        return "null"
    try:
        text = dumps(value)
    except RecursionError:
        raise NotStorable(f"nested more than {MAX_DEPTH} levels deep") from None
    except (TypeError, ValueError) as exc:
        raise NotStorable(str(exc)) from None
    if _may_break_rules(text):
        check(value)
    if max_bytes is not None and len(text) > max_bytes:
        # ASCII text: one byte per character.
        raise PayloadTooLarge(f"{len(text)} bytes of JSON, more than the limit of {max_bytes}")
    return text


def _may_break_rules(text: str) -> bool:
    """Whether the JSON *text* of a value may hide what :func:`check`
    refuses; if not, the value needs no walk (the common case: arguments
    that are numbers and plain strings).  Non-string keys need a dict
    (``{``), deep nesting more brackets than the limit, NUL and surrogates
    their ``\\u`` escapes (the text is ASCII)."""
    return "{" in text or _escapes(text) or text.count("[") > MAX_DEPTH


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _scalars(values: Iterable[Any]) -> bool:
    """Whether every value is a plain JSON scalar (so has no keys and no
    nesting to check)."""
    return all(type(v) in _SCALARS for v in values)


def _escapes(text: str) -> bool:
    """Whether ASCII JSON *text* holds a NUL or a surrogate escape."""
    return "\\u0000" in text or "\\ud" in text


def check(value: Any, depth: int = 0) -> None:
    """Refuse what :func:`dumps` lets through but the database or the
    round trip would not keep: non-string keys, NUL and lone surrogates,
    nesting past :data:`MAX_DEPTH`."""
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            raise NotStorable(f"the string {_preview(value)} holds {_what(value)}")
    elif isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise NotStorable(f"nested more than {MAX_DEPTH} levels deep")
        for key, item in value.items():
            if not isinstance(key, str):
                raise NotStorable(f"dict keys must be strings, not {type(key).__name__} {key!r}")
            check(key, depth + 1)
            check(item, depth + 1)
    elif isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            raise NotStorable(f"nested more than {MAX_DEPTH} levels deep")
        for item in value:
            check(item, depth + 1)


def _what(text: str) -> str:
    return "a NUL character" if "\x00" in text else "a lone surrogate (not valid Unicode)"


def _preview(text: str) -> str:
    shown = storable_text(text[:40])
    return repr(shown + ("..." if len(text) > 40 else ""))


def storable_text(text: str) -> str:
    """*text* with what PostgreSQL cannot store made visible instead:
    NUL as ``\\x00`` and lone surrogates as ``\\udXXX``.  For error texts and
    messages, which must be recorded whatever they hold."""
    if not _UNSTORABLE.search(text):
        return text
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def encode_arguments(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any], max_bytes: int
) -> tuple[str, str]:
    """Encode a task's arguments as JSON text, or raise naming the bad one.

    :raises ArgumentsNotSerializable: an argument breaks the module's rules.
    :raises PayloadTooLarge: the combined size is over *max_bytes*.
    """
    try:
        args_json = encode(list(args))
        kwargs_json = encode(dict(kwargs)) if kwargs else "{}"
    except NotStorable as exc:
        raise ArgumentsNotSerializable(_which_argument(name, args, kwargs, exc)) from None
    size = len(args_json) + len(kwargs_json)
    if size > max_bytes:
        raise PayloadTooLarge(
            f"arguments of task {name!r} are {size} bytes of JSON, more than "
            f"PGTQ_MAX_PAYLOAD_BYTES ({max_bytes}). Store large data elsewhere "
            "and pass a reference."
        )
    return args_json, kwargs_json


def encode_batch(
    name: str,
    items: Sequence[tuple[Sequence[Any], Mapping[str, Any]]],
    max_bytes: int,
) -> tuple[str, str]:
    """The arguments of many tasks as two JSON arrays (positional
    arguments, keyword arguments; the second is ``[]`` when no task has
    any), by the rules of :func:`encode_arguments` for each task.

    One encoder call for the whole batch; the per-task path runs only to
    name a bad item or when the batch is larger than *max_bytes* per task
    could be.

    :raises ArgumentsNotSerializable: an item breaks the rules.
    :raises PayloadTooLarge: an item is over *max_bytes*.
    """
    if not items:
        return "[]", "[]"
    positional = [list(args) for args, _ in items]
    keywords = [dict(kwargs) for _, kwargs in items] if any(k for _, k in items) else None
    try:
        args_text = dumps(positional)
        kwargs_text = "[]" if keywords is None else dumps(keywords)
    except (TypeError, ValueError, RecursionError):
        args_text = kwargs_text = ""
    fine = (
        args_text
        and _scalars(v for args in positional for v in args)
        and (
            keywords is None
            or (
                all(type(k) is str for kw in keywords for k in kw)
                and _scalars(v for kw in keywords for v in kw.values())
            )
        )
        and not _escapes(args_text)
        and not _escapes(kwargs_text)
        # A batch whose whole text fits one task's limit has no item over it.
        and len(args_text) + len(kwargs_text) <= max_bytes
    )
    if fine:
        return args_text, kwargs_text
    encoded = [encode_arguments(name, args, kwargs, max_bytes) for args, kwargs in items]
    args_text = f"[{','.join(a for a, _ in encoded)}]"
    if keywords is None:
        return args_text, "[]"
    return args_text, f"[{','.join(k for _, k in encoded)}]"


def _which_argument(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception
) -> str:
    for key in kwargs:
        if not isinstance(key, str):
            return f"keyword argument names of task {name!r} must be strings, not {key!r}"
    labelled = [(f"argument {i}", v) for i, v in enumerate(args)]
    labelled += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labelled:
        try:
            # One level down: the argument list itself is a level.
            encode([value])
        except (NotStorable, PayloadTooLarge) as inner:
            return (
                f"{label} of task {name!r} cannot be stored as JSON "
                f"({type(value).__name__}): {inner}. Pass only JSON types "
                "(str, int, float, bool, None, list, dict with str keys)."
            )
    return f"arguments of task {name!r} cannot be stored as JSON: {exc}"
