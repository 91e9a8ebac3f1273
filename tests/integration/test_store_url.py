"""store.url: database URLs from settings, and what reaches the logs. Pure: no database needed."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from tradeguard_server.store.url import is_postgres, is_sqlite, normalize_url, redact, url_from_parts


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@db:5432/risk", "postgresql+psycopg://u:p@db:5432/risk"),
        ("postgres://u:p@db/risk", "postgresql+psycopg://u:p@db/risk"),
        ("postgresql+psycopg://u@db/risk?sslmode=require", "postgresql+psycopg://u@db/risk?sslmode=require"),
        ("sqlite:///tradeguard.db", "sqlite:///tradeguard.db"),
        ("sqlite:////var/lib/tradeguard/state.db", "sqlite:////var/lib/tradeguard/state.db"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_normalize_url_uses_psycopg3_for_postgres_and_keeps_sqlite(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql+psycopg2://u@h/db", "not a url", ""])
def test_normalize_url_rejects_what_the_store_cannot_use(url: str) -> None:
    with pytest.raises(ValueError, match=r"database|driver|URL"):
        normalize_url(url)


def test_url_from_parts_builds_a_postgres_url_with_sslmode() -> None:
    url = url_from_parts({"DB_HOST": "db.internal", "DB_PORT": "6432", "DB_USER": "risk", "DB_PASSWORD": "s3cret",
                          "DB_NAME": "trading", "DB_SSLMODE": "verify-full"})

    parsed = make_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.host, parsed.port, parsed.username, parsed.password, parsed.database) == (
        "db.internal", 6432, "risk", "s3cret", "trading")
    assert parsed.query == {"sslmode": "verify-full"}


def test_url_from_parts_escapes_any_character_in_user_and_password() -> None:
    password = "p@ss:w/rd?#%&="

    parsed = make_url(url_from_parts({"DB_HOST": "h", "DB_USER": "me@corp", "DB_PASSWORD": password}))

    assert (parsed.username, parsed.password) == ("me@corp", password)


def test_url_from_parts_defaults_port_user_and_database() -> None:
    parsed = make_url(url_from_parts({"DB_HOST": "h"}))

    assert (parsed.port, parsed.username, parsed.password, parsed.database) == (5432, "postgres", None, "tradeguard")
    assert parsed.query == {}


@pytest.mark.parametrize("env", [{}, {"DB_HOST": ""}, {"DB_HOST": "h", "DB_PORT": "five"}, {"DB_HOST": "h",
                                                                                           "DB_PORT": "70000"}])
def test_url_from_parts_rejects_missing_host_or_bad_port(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="DB_"):
        url_from_parts(env)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://risk:s3cret@db/trading",
        "postgresql+psycopg://risk:s3cret@db:5432/trading?sslmode=require",
        url_from_parts({"DB_HOST": "db", "DB_USER": "risk", "DB_PASSWORD": "s3cret"}),
        "postgresql://risk@db/trading?password=s3cret",
        "not a url but has ://risk:s3cret@host",
    ],
)
def test_redact_never_shows_the_password(url: str) -> None:
    shown = redact(url)

    assert "s3cret" not in shown
    assert "***" in shown


def test_redact_keeps_everything_else() -> None:
    assert redact("postgresql+psycopg://risk:s3cret@db:5432/trading") == "postgresql+psycopg://risk:***@db:5432/trading"
    assert redact("sqlite:///tradeguard.db") == "sqlite:///tradeguard.db"


def test_backend_predicates() -> None:
    assert is_postgres("postgres://u@h/d") and not is_sqlite("postgres://u@h/d")
    assert is_sqlite("sqlite:///x.db") and not is_postgres("sqlite:///x.db")
