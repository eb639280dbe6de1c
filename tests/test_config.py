"""Settings: defaults, validation, names, and DSNs that never show their password."""

from __future__ import annotations

import traceback
from typing import Any

import pytest

from flask_pgtq import ConfigurationError, InvalidName, PgTq, PgTqError
from flask_pgtq.config import MAX_NAME_LENGTH, Config, redact_dsn, validate_name

PASSWORD = "canary-Pa55word"

#: Connection strings libpq refuses to parse.  Some of libpq's own messages
#: quote the whole string, password included.
MALFORMED_DSNS = [
    f"host=localhost password={PASSWORD} dbname",
    f"host=localhost password='{PASSWORD} dbname=db",
    f"postgresql://user:{PASSWORD}@[::1/db",
    f"postgresql://user:{PASSWORD}@localhost/db?bogus=1",
    f"postgresql://user:{PASSWORD}%zz@localhost/db",
]


def config(**settings: Any) -> Config:
    """A config from ``PGTQ_*`` keys given in lower case, with a valid DSN."""
    values = {"PGTQ_DSN": "dbname=q user=postgres"}
    values.update({f"PGTQ_{key.upper()}": value for key, value in settings.items()})
    return Config.from_mapping(values)


def shown(exc: BaseException) -> str:
    """Everything a log or a terminal could show of *exc*."""
    return "\n".join([str(exc), repr(exc), *traceback.format_exception(exc)])


# -- defaults ------------------------------------------------------------------


def test_defaults() -> None:
    c = Config.from_mapping({"PGTQ_DSN": "dbname=q"})
    assert c.dsn == "dbname=q"
    assert c.listen_dsn is None
    assert c.effective_listen_dsn == "dbname=q"
    assert c.listen is True
    assert c.queue == "default"
    assert c.max_attempts == 3
    assert c.retry_backoff == 2.0
    assert c.retry_backoff_max == 600.0
    assert c.poll_interval == 1.0
    assert c.lease == 30.0
    assert c.heartbeat_interval == 5.0
    assert c.shutdown_grace == 30.0
    assert c.concurrency == 1
    assert c.max_payload_bytes == 1_000_000
    assert c.pool_size == 10


def test_keys_without_the_prefix_are_ignored() -> None:
    c = Config.from_mapping({"PGTQ_DSN": "dbname=q", "SECRET_KEY": "x", "DEBUG": True})
    assert c.queue == "default"


def test_settings_are_read() -> None:
    c = config(queue="emails", max_attempts=7, lease=10, heartbeat_interval=2, concurrency=4)
    assert (c.queue, c.max_attempts, c.lease, c.heartbeat_interval, c.concurrency) == (
        "emails",
        7,
        10.0,
        2.0,
        4,
    )


def test_listen_dsn_is_used_for_listen() -> None:
    c = config(listen_dsn="dbname=direct")
    assert c.effective_listen_dsn == "dbname=direct"


# -- the DSN -------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, {"PGTQ_DSN": ""}, {"PGTQ_DSN": None}])
def test_missing_dsn_says_to_set_it(values: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="PGTQ_DSN is not set") as info:
        Config.from_mapping(values)
    assert "dbname=" in str(info.value), "the message shows an example"


@pytest.mark.parametrize("dsn", MALFORMED_DSNS)
def test_malformed_dsn_is_named_but_not_shown(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Config.from_mapping({"PGTQ_DSN": dsn})
    assert "PGTQ_DSN" in str(info.value)
    assert PASSWORD not in shown(info.value)
    assert dsn not in shown(info.value)


def test_malformed_listen_dsn_is_named_but_not_shown() -> None:
    with pytest.raises(ConfigurationError) as info:
        config(listen_dsn=MALFORMED_DSNS[0])
    assert "PGTQ_LISTEN_DSN" in str(info.value)
    assert PASSWORD not in shown(info.value)


def test_dsn_of_the_wrong_type_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="PGTQ_DSN"):
        Config.from_mapping({"PGTQ_DSN": {"dbname": "q"}})


# -- unknown keys and invalid values ---------------------------------------------


def test_unknown_key_is_rejected_by_name() -> None:
    with pytest.raises(ConfigurationError, match="PGTQ_MAX_ATTEMPT\\b"):
        Config.from_mapping({"PGTQ_DSN": "dbname=q", "PGTQ_MAX_ATTEMPT": 5})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PGTQ_LEASE", -1),
        ("PGTQ_LEASE", 0),
        ("PGTQ_POLL_INTERVAL", 0),
        ("PGTQ_HEARTBEAT_INTERVAL", -5),
        ("PGTQ_RETRY_BACKOFF", -0.5),
        ("PGTQ_SHUTDOWN_GRACE", -1),
        ("PGTQ_CONCURRENCY", 0),
        ("PGTQ_MAX_ATTEMPTS", 0),
        ("PGTQ_POOL_SIZE", 0),
        ("PGTQ_MAX_PAYLOAD_BYTES", -1),
        ("PGTQ_LEASE", True),
        ("PGTQ_CONCURRENCY", True),
        ("PGTQ_MAX_ATTEMPTS", False),
        ("PGTQ_LEASE", "30"),
        ("PGTQ_CONCURRENCY", None),
        ("PGTQ_LISTEN", "yes"),
    ],
)
def test_invalid_value_is_rejected_by_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=key):
        Config.from_mapping({"PGTQ_DSN": "dbname=q", key: value})


@pytest.mark.parametrize("key", ["PGTQ_LEASE", "PGTQ_POLL_INTERVAL", "PGTQ_RETRY_BACKOFF"])
def test_nan_is_rejected_by_key(key: str) -> None:
    # NaN compares false with everything, so "< 0" checks let it through;
    # the database then fails on "now() + NaN * interval '1 second'".
    with pytest.raises(ConfigurationError, match=key):
        Config.from_mapping({"PGTQ_DSN": "dbname=q", key: float("nan")})


@pytest.mark.parametrize("key", ["PGTQ_CONCURRENCY", "PGTQ_MAX_ATTEMPTS", "PGTQ_POOL_SIZE"])
def test_fractional_count_is_rejected_not_truncated(key: str) -> None:
    with pytest.raises(ConfigurationError, match=key):
        Config.from_mapping({"PGTQ_DSN": "dbname=q", key: 2.5})


def test_invalid_default_queue_is_rejected_by_key() -> None:
    with pytest.raises(PgTqError, match="PGTQ_QUEUE") as info:
        config(queue="no spaces")
    assert isinstance(info.value, ValueError)


def test_heartbeat_must_be_at_most_half_the_lease() -> None:
    with pytest.raises(ConfigurationError, match="PGTQ_HEARTBEAT_INTERVAL") as info:
        config(lease=10, heartbeat_interval=6)
    assert "PGTQ_LEASE" in str(info.value)
    assert config(lease=10, heartbeat_interval=5).heartbeat_interval == 5.0


def test_zero_is_allowed_where_it_means_no_wait() -> None:
    c = config(retry_backoff=0, shutdown_grace=0)
    assert (c.retry_backoff, c.shutdown_grace) == (0.0, 0.0)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        config(concurrency=0)


# -- names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["default", "emails", "a", "x" * MAX_NAME_LENGTH, "app.tasks:send_mail", "team/q-1@eu_2"],
)
def test_valid_names_are_accepted(name: str) -> None:
    assert validate_name(name, "queue") == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * (MAX_NAME_LENGTH + 1),
        "two words",
        "it's",
        '"quoted"',
        "'; DROP TABLE x; --",
        "line\nbreak",
        "trailing\n",
        "tab\t",
        "nul\x00",
        "caf\u00e9",
    ],
)
def test_invalid_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidName, match="queue"):
        validate_name(name, "queue")


@pytest.mark.parametrize("name", [None, 1, b"bytes", ["q"]])
def test_names_must_be_strings(name: Any) -> None:
    with pytest.raises(InvalidName, match="queue must be a string"):
        validate_name(name, "queue")


# -- passwords are never shown -------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://alice:{PASSWORD}@db.example.com:5433/shop",
        f"host=db.example.com port=5433 user=alice password={PASSWORD} dbname=shop",
        f"host=db.example.com user=alice password='{PASSWORD}' dbname=shop",
        f"postgresql://alice@db.example.com/shop?password={PASSWORD}",
    ],
)
def test_redact_dsn_hides_the_password(dsn: str) -> None:
    shown_dsn = redact_dsn(dsn)
    assert PASSWORD not in shown_dsn
    assert "password=***" in shown_dsn
    assert "db.example.com" in shown_dsn
    assert "shop" in shown_dsn


def test_redact_dsn_without_password_keeps_everything() -> None:
    shown_dsn = redact_dsn("host=localhost user=alice dbname=shop")
    assert "***" not in shown_dsn
    assert "alice" in shown_dsn


def test_redact_dsn_of_a_malformed_dsn_shows_nothing_of_it() -> None:
    assert PASSWORD not in redact_dsn(MALFORMED_DSNS[2])


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://alice:{PASSWORD}@localhost/shop",
        f"host=localhost user=alice password={PASSWORD} dbname=shop",
    ],
)
def test_repr_never_shows_the_password(dsn: str) -> None:
    q = PgTq(dsn=dsn, listen_dsn=dsn)
    assert PASSWORD not in repr(q)
    assert PASSWORD not in str(q)
    assert PASSWORD not in repr(q.config)
    assert PASSWORD not in str(q.config)
    c = Config.from_mapping({"PGTQ_DSN": dsn, "PGTQ_LISTEN_DSN": dsn})
    assert PASSWORD not in repr(c)


# -- SQLAlchemy URLs and typos ---------------------------------------------------------


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+psycopg", "postgresql"])
def test_sqlalchemy_urls_are_accepted_as_libpq_urls(driver: str) -> None:
    c = Config.from_mapping({"PGTQ_DSN": f"{driver}://alice:{PASSWORD}@db.example/shop"})
    assert c.dsn == f"postgresql://alice:{PASSWORD}@db.example/shop"
    c = config(listen_dsn=f"{driver}://alice@direct.example/shop")
    assert c.listen_dsn == "postgresql://alice@direct.example/shop"


def test_sqlalchemy_url_works_for_a_real_queue(dsn: str) -> None:
    from psycopg2.extensions import parse_dsn

    params = parse_dsn(dsn)
    url = f"postgresql+psycopg2://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"
    q = PgTq(dsn=url)
    try:

        @q.handler()
        def add(a: int, b: int) -> int:
            return a + b

        assert add.push(1, 2).id > 0
    finally:
        q.close()


def test_without_pgtq_dsn_the_sqlalchemy_database_is_used_and_said(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from flask import Flask

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"postgresql+psycopg2://alice:{PASSWORD}@db/shop"
    with caplog.at_level("INFO", logger="flask_pgtq"):
        q = PgTq(app)
    with app.app_context():
        assert q.config.dsn == f"postgresql://alice:{PASSWORD}@db/shop"
    (line,) = [m for m in caplog.messages if "SQLALCHEMY_DATABASE_URI" in m]
    assert "PGTQ_DSN is not set" in line and "dbname=shop" in line
    assert PASSWORD not in line and "***" in line


def test_pgtq_dsn_wins_over_the_sqlalchemy_url() -> None:
    c = Config.from_mapping(
        {"PGTQ_DSN": "dbname=queue", "SQLALCHEMY_DATABASE_URI": "sqlite:///app.db"}
    )
    assert c.dsn == "dbname=queue"


@pytest.mark.parametrize(
    ("uri", "dialect"),
    [("sqlite:///app.db", "sqlite"), (f"mysql+pymysql://u:{PASSWORD}@db/app", "mysql")],
)
def test_a_url_of_another_database_says_postgresql_is_needed(uri: str, dialect: str) -> None:
    with pytest.raises(ConfigurationError) as from_sqlalchemy:
        Config.from_mapping({"SQLALCHEMY_DATABASE_URI": uri})
    message = str(from_sqlalchemy.value)
    assert "PGTQ_DSN is not set" in message
    assert f"SQLALCHEMY_DATABASE_URI is a {dialect} URL" in message
    assert "needs PostgreSQL" in message
    with pytest.raises(ConfigurationError) as as_pgtq_dsn:
        Config.from_mapping({"PGTQ_DSN": uri})
    assert f"PGTQ_DSN is a {dialect} URL" in str(as_pgtq_dsn.value)
    for exc in (from_sqlalchemy.value, as_pgtq_dsn.value):
        assert PASSWORD not in shown(exc)


def test_an_unknown_setting_suggests_the_closest_known_one() -> None:
    with pytest.raises(ConfigurationError) as typo:
        config(max_attempt=3)
    assert str(typo.value) == "unknown setting PGTQ_MAX_ATTEMPT: did you mean PGTQ_MAX_ATTEMPTS?"
    with pytest.raises(ConfigurationError) as nothing_close:
        config(xyzzy=1)
    assert str(nothing_close.value) == "unknown setting PGTQ_XYZZY"
