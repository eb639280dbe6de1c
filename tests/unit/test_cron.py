"""Cron maths of periodic schedules, without a database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from flask_pgtq import ConfigurationError, PgTq
from flask_pgtq.periodic import Schedule


@pytest.fixture
def q() -> PgTq:
    # A standalone queue never connects until used.
    return PgTq(dsn="dbname=unused")


def test_fire_times_follow_the_zone_across_dst(q: PgTq) -> None:
    @q.handler()
    def report() -> None:
        pass

    schedule = Schedule.build(report, "30 2 * * *", "Europe/Paris", (), {})
    # 2:30 does not exist on 2026-03-29 in Paris (clocks jump 2:00 -> 3:00):
    # that day's run fires once, at the jump (03:00 CEST), not never.
    before = datetime(2026, 3, 28, 12, tzinfo=UTC)
    assert schedule.next_fire(before) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    summer = schedule.next_fire(datetime(2026, 6, 1, tzinfo=UTC))
    assert summer == datetime(2026, 6, 1, 0, 30, tzinfo=UTC)  # 02:30 CEST
    winter = schedule.latest_fire(datetime(2026, 12, 2, tzinfo=UTC))
    assert winter == datetime(2026, 12, 1, 1, 30, tzinfo=UTC)  # 02:30 CET


def test_bad_schedules_are_refused(q: PgTq) -> None:
    @q.handler()
    def job(n: int) -> None:
        pass

    with pytest.raises(ConfigurationError, match="cron"):
        Schedule.build(job, "every day", "UTC", (), {})
    with pytest.raises(ConfigurationError, match="time zone"):
        Schedule.build(job, "* * * * *", "Mars/Olympus", (), {})
    with pytest.raises(ConfigurationError, match="NUL"):
        Schedule.build(job, "* * * * *", "UTC", ("a\x00",), {})


def test_a_schedule_key_changes_with_what_it_runs(q: PgTq) -> None:
    @q.handler()
    def job(n: int) -> None:
        pass

    a = Schedule.build(job, "* * * * *", "UTC", (1,), {})
    b = Schedule.build(job, "* * * * *", "UTC", (2,), {})
    assert a.key != b.key and a.key == Schedule.build(job, "* * * * *", "UTC", (1,), {}).key
