"""The JSON rules for arguments, results and progress, without a database."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flask_pgtq import ArgumentsNotSerializable, PayloadTooLarge, State, Task
from flask_pgtq.codec import (
    MAX_DEPTH,
    NotStorable,
    encode,
    encode_arguments,
    encode_batch,
    storable_text,
)
from flask_pgtq.values import Outcome


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (float("nan"), "Out of range"),
        ({1: "a"}, "dict keys must be strings"),
        ({"a": {2: "b"}}, "dict keys must be strings"),
        ("a\x00b", "NUL character"),
        ({"k\x00": 1}, "NUL character"),
        ("\ud800", "lone surrogate"),
        (nested(MAX_DEPTH + 1), "nested more than"),
        (nested(100_000), "nested more than"),
        (object(), "not JSON serializable"),
    ],
)
def test_values_that_cannot_be_stored_faithfully_are_refused(value: Any, words: str) -> None:
    with pytest.raises(NotStorable, match=words):
        encode(value)


def test_what_is_stored_comes_back_the_same() -> None:
    value = {"text": "é😀\\u0000 not a NUL", "n": [1, 2.5, None, True], "deep": nested(50)}
    text = encode(value)
    assert text.isascii()
    import json

    assert json.loads(text) == value


@pytest.mark.parametrize("value", [None, 0, "", [], {}, False])
def test_empty_results_are_encoded_as_json_says(value: Any) -> None:
    # None has a shortcut (what most handlers return); the rest use the encoder.
    assert encode(value, 10) == json.dumps(value, separators=(",", ":"))


def test_the_size_limit_counts_bytes_of_json() -> None:
    assert encode("x" * 8, max_bytes=10) == '"xxxxxxxx"'
    with pytest.raises(PayloadTooLarge):
        encode("x" * 9, max_bytes=10)


def test_arguments_errors_name_the_argument() -> None:
    with pytest.raises(ArgumentsNotSerializable, match="argument 1 of task 'job'"):
        encode_arguments("job", ["fine", "a\x00b"], {}, 1000)
    with pytest.raises(ArgumentsNotSerializable, match="keyword argument 'when'"):
        encode_arguments("job", [], {"when": float("inf")}, 1000)
    with pytest.raises(PayloadTooLarge, match="PGTQ_MAX_PAYLOAD_BYTES"):
        encode_arguments("job", ["x" * 100], {}, 50)


def test_a_batch_is_encoded_as_two_arrays() -> None:
    assert encode_batch("job", [((1,), {}), ((2,), {})], 1000) == ("[[1],[2]]", "[]")
    args, kwargs = encode_batch("job", [((1,), {"a": 1}), ((), {})], 1000)
    assert (args, kwargs) == ("[[1],[]]", '[{"a":1},{}]')


def test_a_batch_checks_each_item_by_the_same_rules() -> None:
    with pytest.raises(ArgumentsNotSerializable, match="NUL"):
        encode_batch("job", [((1,), {}), (("a\x00",), {})], 1000)
    with pytest.raises(ArgumentsNotSerializable, match="dict keys"):
        encode_batch("job", [(({1: 2},), {})], 1000)
    with pytest.raises(ArgumentsNotSerializable, match="nested"):
        encode_batch("job", [((nested(MAX_DEPTH),), {})], 10**6)
    with pytest.raises(PayloadTooLarge):
        encode_batch("job", [(("x" * 60,), {}), (("y",), {})], 50)
    # Many small items may add up to more than one task's limit.
    assert encode_batch("job", [(("x" * 30,), {})] * 10, 50)[0].count("x") == 300


def test_storable_text_shows_what_postgresql_cannot_store() -> None:
    assert storable_text("plain") == "plain"
    assert storable_text("a\x00b") == "a\\x00b"
    assert storable_text("\ud800!") == "\\ud800!"


@pytest.mark.parametrize(
    ("state", "result", "error", "delay", "snooze", "meta"),
    [
        (State.SUCCEEDED, "42", None, 0.0, False, None),
        (State.SUCCEEDED, '{"a": [1, "é\\u2028"]}', None, 0.0, False, {"trace": 'x"y'}),
        (State.QUEUED, None, 'Traceback "quoted"\n\tline é ✓ \U0001f600', 12.5, False, None),
        (State.QUEUED, None, "snoozed", 3, True, None),
        (State.FAILED, None, "bad \\ back\x01slash", 0.0, False, {}),
        (State.QUEUED, None, "nan delay", float("nan"), False, None),
    ],
)
def test_an_outcome_as_json_text_says_what_as_json_says(
    state: State, result: str | None, error: str | None, delay: float, snooze: bool, meta: Any
) -> None:
    """The worker sends outcomes as JSON text written out by hand: it must
    decode to exactly the dict the outcome statement was written for."""
    task = Task(7, "job", "default", [], {}, State.RUNNING, attempts=2)
    if meta is not None:
        task.meta, task.meta_changed = meta, True
    outcome = Outcome(task, state, result=result, error=error, delay=delay, snooze=snooze)
    decoded = json.loads(outcome.as_json_text())
    expected = outcome.as_json()
    if delay != delay:
        assert decoded["delay"] != decoded["delay"]
        decoded.pop("delay"), expected.pop("delay")
    assert decoded == expected
    assert outcome.as_json_text() is outcome.as_json_text()
