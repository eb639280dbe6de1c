"""Handler and push options, validated without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flask_pgtq import ConfigurationError
from flask_pgtq.config import MAX_SECONDS, seconds, whole_number
from flask_pgtq.values import HandlerOptions, Limit, PushOptions


def test_handler_options_are_validated_once() -> None:
    options = HandlerOptions(queue="mail", timeout=timedelta(seconds=2), retry_backoff=1)
    assert options.timeout == 2.0 and options.retry_backoff == 1.0
    assert options.push_defaults().queue == "mail"
    assert options.limit("h") is None
    assert HandlerOptions(concurrency=2, rate_limit="10/m").limit("h") == Limit("h", 2, 10, 60.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"retry_backoff": float("nan")},
        {"isolated": "yes"},
        {"concurrency": 0},
        {"rate_limit": "fast"},
        {"max_attempts": 0},
        {"priority": 2**31},
        {"queue": "bad queue!"},
    ],
)
def test_bad_handler_options_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigurationError):
        HandlerOptions(**bad)


def test_an_unknown_handler_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        HandlerOptions(retries=3)  # type: ignore[call-arg]


def test_push_options() -> None:
    options = PushOptions.build(delay=timedelta(minutes=1), unique_key="k", unique_for=5)
    assert (options.delay, options.unique_for) == (60.0, 5.0)
    with pytest.raises(ConfigurationError, match="delay or eta"):
        PushOptions.build(delay=1, eta=datetime.now(UTC))
    with pytest.raises(ConfigurationError, match="aware"):
        PushOptions.build(eta=datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="unique_for needs a unique_key"):
        PushOptions.build(unique_for=5)
    with pytest.raises(ConfigurationError, match="NUL"):
        PushOptions.build(unique_key="a\x00")


def test_seconds_and_whole_numbers() -> None:
    assert seconds(timedelta(hours=1), "x") == 3600.0
    assert seconds(MAX_SECONDS, "x") == MAX_SECONDS
    for bad in (True, "1", float("inf"), -0.5, MAX_SECONDS * 2):
        with pytest.raises(ConfigurationError):
            seconds(bad, "x")
    assert whole_number(5, "n", minimum=1) == 5
    for bad in (True, 1.5, 0, 2**31):
        with pytest.raises(ConfigurationError):
            whole_number(bad, "n", minimum=1)
