"""What the CLI and the dashboard show people, without a database."""

from __future__ import annotations

import pytest

from flask_pgtq import InvalidRequest
from flask_pgtq.formatting import (
    error_summary,
    format_age,
    format_duration,
    loads_for_display,
    parse_duration,
    printable,
)


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2w") == 14 * 86400
    for bad in ("", "soon", "5y"):
        with pytest.raises(InvalidRequest):
            parse_duration(bad)


def test_control_characters_are_shown_escaped() -> None:
    assert printable("ok") == "ok"
    assert "\x1b" not in printable("\x1b]0;pwned\x07") and "\\x1b" in printable("\x1b[31m")
    assert "\x9b" not in printable("\x9b31m")
    assert printable("line 1\nline 2", multiline=True) == "line 1\nline 2"


def test_json_too_deep_to_decode_is_a_placeholder() -> None:
    shown = loads_for_display("[" * 5000 + "]" * 5000)
    assert "nested too deeply" in str(shown)
    assert loads_for_display('{"a": 1}') == {"a": 1}


def test_ages_and_error_summaries() -> None:
    assert format_age(5) and format_age(3700)
    assert error_summary("Traceback...\nValueError: boom\n") == "ValueError: boom"
    assert error_summary(None) is None


def test_run_times() -> None:
    assert format_duration(0.0123) == "12ms"
    assert format_duration(4.254) == "4.25s"
    assert format_duration(125) == "2m 5s"
    assert format_duration(None) == "-"
