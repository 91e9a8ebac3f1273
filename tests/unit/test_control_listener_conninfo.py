"""The control listener's own connection (LISTEN needs psycopg itself) is built from the same database_url as the
store's: every part must reach libpq decoded, or a URL that works for the store never connects here."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict

from tradeguard_server.cluster.listener import conninfo


def test_server_options_in_the_url_reach_libpq_decoded() -> None:
    info, kwargs = conninfo("postgresql+psycopg://bot@db.internal:6543/risk"
                            "?options=-c+lock_timeout%3D1000+-c+statement_timeout%3D15000&sslmode=require")
    params = conninfo_to_dict(info)
    assert params["options"] == "-c lock_timeout=1000 -c statement_timeout=15000"
    assert params["sslmode"] == "require"
    assert (params["host"], params["port"], params["user"], params["dbname"]) == ("db.internal", "6543", "bot", "risk")
    assert "options" not in kwargs  # the URL's own options win over the defaults
    assert kwargs["application_name"] == "tradeguard-control"


def test_a_password_with_reserved_characters_survives() -> None:
    info, _ = conninfo("postgresql+psycopg://bot:p%40ss%2Bw%3Ard%20x@127.0.0.1/risk")
    assert conninfo_to_dict(info)["password"] == "p@ss+w:rd x"


def test_without_options_the_connection_defaults_apply() -> None:
    info, kwargs = conninfo("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    assert conninfo_to_dict(info) == {"host": "127.0.0.1", "port": "5432", "user": "postgres", "dbname": "test"}
    assert "lock_timeout" in kwargs["options"] and kwargs["connect_timeout"]
