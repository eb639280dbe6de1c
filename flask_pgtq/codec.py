"""JSON as flask_pgtq stores it: arguments, results and progress.

Strict: NaN and infinities are refused (they are not JSON), and so are dict
keys that are not strings (JSON would silently turn ``{1: "a"}`` into
``{"1": "a"}``, so the handler would get other data than was pushed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .exceptions import ArgumentsNotSerializable, PayloadTooLarge

#: Compact, strict JSON text of a value.  One shared encoder: ``json.dumps``
#: with options builds a new encoder on every call.
dumps = json.JSONEncoder(allow_nan=False, separators=(",", ":")).encode


def encode_arguments(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any], max_bytes: int
) -> tuple[str, str]:
    """Encode a task's arguments as JSON text, or raise naming the bad one.

    NaN and infinities are refused (they are not JSON).  The combined size is
    checked against *max_bytes* before anything is stored.
    """
    try:
        args_json = dumps(list(args))
        kwargs_json = dumps(dict(kwargs)) if kwargs else "{}"
        _check_keys(args)
        if kwargs:
            _check_keys(kwargs)
    except (TypeError, ValueError) as exc:
        raise ArgumentsNotSerializable(_which_argument(name, args, kwargs, exc)) from exc
    size = len(args_json.encode()) + len(kwargs_json.encode())
    if size > max_bytes:
        raise PayloadTooLarge(
            f"arguments of task {name!r} are {size} bytes of JSON, more than "
            f"PGTQ_MAX_PAYLOAD_BYTES ({max_bytes}). Store large data elsewhere "
            "and pass a reference."
        )
    return args_json, kwargs_json


def _check_keys(value: Any) -> None:
    """Refuse dict keys that JSON would silently turn into strings
    (``{1: "a"}`` would come back as ``{"1": "a"}``)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"dict keys must be strings, not {type(key).__name__} {key!r}")
            _check_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_keys(item)


def _which_argument(
    name: str, args: Sequence[Any], kwargs: Mapping[str, Any], exc: Exception
) -> str:
    labelled = [(f"argument {i}", v) for i, v in enumerate(args)]
    labelled += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in labelled:
        if not isinstance(label, str):
            continue
        try:
            dumps(value)
            _check_keys(value)
        except (TypeError, ValueError) as inner:
            return (
                f"{label} of task {name!r} is not JSON-serialisable "
                f"({type(value).__name__}): {inner}. Pass only JSON types "
                "(str, int, float, bool, None, list, dict with str keys)."
            )
    for key in kwargs:
        if not isinstance(key, str):
            return f"keyword argument names of task {name!r} must be strings, not {key!r}"
    return f"arguments of task {name!r} are not JSON-serialisable: {exc}"
