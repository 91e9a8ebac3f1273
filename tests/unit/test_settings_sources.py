"""Where settings come from (README "Settings"): flags, TRADEGUARD_* variables, the seeds' variables, the settings
file with the seed's keys; precedence flag > env > file > default; unknown names reported with a suggestion."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tradeguard_server.main import MIGRATE_SETTINGS, build_parser
from tradeguard_server.settings import HELP, SettingsError, describe_sources, load_settings, settings_fields

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- the seeds' variables ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "level"), [("debug", "DEBUG"), ("Info", "INFO"), ("WARNING", "WARNING"),
                                            ("warn", "WARNING"), ("error", "ERROR")])
def test_log_level_from_the_seeds_variable_in_any_case(raw: str, level: str) -> None:
    assert load_settings({"LOG_LEVEL": raw}).log_level == level


def test_an_unknown_log_level_is_refused_naming_the_levels() -> None:
    with pytest.raises(SettingsError, match="log_level: must be one of debug, info, warning, error"):
        load_settings({"LOG_LEVEL": "verbose"})


def test_seed_feature_flag_variables_are_read_and_count_as_given() -> None:
    settings = load_settings({"ENABLE_PERSISTENCE": "false", "ENABLE_RISK_ENFORCEMENT": "0"})

    assert settings.enable_persistence is False and settings.enable_risk_enforcement is False
    assert {"enable_persistence", "enable_risk_enforcement"} <= settings.given


def test_prefixed_names_win_over_the_seeds_names() -> None:
    settings = load_settings({"ENABLE_PERSISTENCE": "false", "TRADEGUARD_ENABLE_PERSISTENCE": "true",
                              "LOG_LEVEL": "debug", "TRADEGUARD_LOG_LEVEL": "error"})

    assert settings.enable_persistence is True and settings.log_level == "ERROR"


def test_an_empty_seed_variable_is_not_a_value() -> None:
    settings = load_settings({"ENABLE_PERSISTENCE": "", "LOG_LEVEL": " "})

    assert settings.enable_persistence is True and "enable_persistence" not in settings.given
    assert settings.log_level == "INFO"


def test_database_url_from_db_url_then_database_url_and_the_prefixed_name_wins() -> None:
    a, b, c = ("postgresql://u@a:5432/x", "postgresql://u@b:5432/y", "postgresql://u@c:5432/z")

    assert load_settings({"DATABASE_URL": b}).database_url == b
    only_two = load_settings({"DB_URL": a, "DATABASE_URL": b})
    assert only_two.database_url == a
    assert any("DATABASE_URL ignored: the database URL comes from DB_URL" in w for w in only_two.warnings)
    assert load_settings({"DB_URL": a, "DATABASE_URL": b, "TRADEGUARD_DATABASE_URL": c}).database_url == c


def test_a_url_variable_wins_over_db_parts_and_says_the_parts_are_ignored() -> None:
    settings = load_settings({"DATABASE_URL": "postgresql://u@h:5432/d", "DB_HOST": "other", "DB_NAME": "n"})

    assert settings.database_url == "postgresql://u@h:5432/d"
    assert any(w.startswith("DB_HOST, DB_NAME ignored") for w in settings.warnings)


def test_partial_db_parts_without_db_host_connect_to_localhost_5432_with_a_warning_never_sqlite() -> None:
    settings = load_settings({"DB_NAME": "risk", "DB_USER": "bot", "DB_PASSWORD": "s3cret"})

    assert settings.database_url == "postgresql+psycopg://bot:s3cret@localhost:5432/risk"
    assert any("set without DB_HOST: connecting to PostgreSQL on localhost:5432" in w for w in settings.warnings)
    assert dict(settings.sources)["database_url"] == "env DB_USER, DB_PASSWORD, DB_NAME"


def test_db_port_alone_keeps_its_port() -> None:
    assert load_settings({"DB_PORT": "6543"}).database_url == "postgresql+psycopg://postgres@localhost:6543/tradeguard"


def test_a_bad_db_port_is_one_clear_error() -> None:
    with pytest.raises(SettingsError, match="DB_\\* variables: DB_PORT: expected a port number"):
        load_settings({"DB_HOST": "db", "DB_PORT": "tcp://172.17.0.5:5432"})


@pytest.mark.parametrize(("env", "where"), [
    ({"DB_HOST": "db:5433"}, "db:5433"),
    ({"DB_HOST": "db:5433", "DB_PORT": "5433"}, "db:5433"),
    ({"DB_HOST": "[::1]:5433"}, "[::1]:5433"),
    ({"DB_HOST": "[::1]"}, "[::1]:5432"),
    ({"DB_HOST": "::1", "DB_PORT": "6543"}, "[::1]:6543"),
    ({"DB_HOST": "db", "DB_PORT": "6543"}, "db:6543"),
])
def test_a_port_in_db_host_is_the_port_and_ipv6_stays_bracketed(env: dict[str, str], where: str) -> None:
    """The seed's compose-style DB_HOST=db:5433 built postgresql://...@[db:5433]:5432 (a host named "db:5433")."""
    assert load_settings(env).database_url == f"postgresql+psycopg://postgres@{where}/tradeguard"


@pytest.mark.parametrize(("env", "message"), [
    ({"DB_HOST": "db:5433", "DB_PORT": "5432"}, "DB_HOST names port 5433 and DB_PORT port 5432"),
    ({"DB_HOST": "db:"}, "DB_HOST: no port after the colon"),
    ({"DB_HOST": "db:pg"}, "DB_HOST: expected a port number after the colon, got 'pg'"),
    ({"DB_HOST": "[::1"}, "DB_HOST: expected host, host:port"),
])
def test_a_db_host_port_that_conflicts_or_is_no_port_is_one_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=r"DB_\* variables: " + message.replace("[", r"\[")):
        load_settings(env)


def test_no_database_variable_keeps_the_sqlite_default() -> None:
    assert load_settings({}).database_url == "sqlite:///tradeguard.db"


@pytest.mark.parametrize("url", ["nonsense", "mysql://u@h/d", "postgresql+asyncpg://u@h/d"])
def test_an_unparseable_or_unsupported_database_url_is_a_setting_error(url: str) -> None:
    with pytest.raises(SettingsError, match=r"database_url: .*expected postgresql://"):
        load_settings({"DB_URL": url})


# ---- the settings file ------------------------------------------------------------------------------


def test_the_seeds_config_keys_map_to_the_default_limits_and_flags(tmp_path: Path) -> None:
    config = write(tmp_path, "config.json", json.dumps({
        "max_daily_loss": 3, "max_drawdown": 15.5, "stop_trading_minutes": 45,
        "feature_flags": {"enable_persistence": False, "enable_risk_enforcement": True}}))

    settings = load_settings({}, {"config": config})

    assert settings.daily_max_drawdown_percentage == 3.0 and settings.max_drawdown_percentage == 15.5
    assert settings.stop_trading_minutes == 45
    assert settings.enable_persistence is False and settings.enable_risk_enforcement is True
    limits = settings.default_limits()
    assert limits.daily_max_drawdown_percentage == 3.0 and limits.max_drawdown_percentage == 15.5
    assert {"enable_persistence", "enable_risk_enforcement"} <= settings.given  # the file is explicit at start
    assert dict(settings.sources)["daily_max_drawdown_percentage"] == f"file {config}: max_daily_loss"
    assert settings.warnings == ()


def test_toml_file_with_every_kind_of_setting(tmp_path: Path) -> None:
    config = write(tmp_path, "tg.toml", 'listen = "127.0.0.1:6000"\nqueue_size = 500\ndrain_timeout_s = 3\n'
                                        'log_json = true\nlog_level = "warning"\n'
                                        "[feature_flags]\nenable_risk_enforcement = false\n")

    settings = load_settings({"TRADEGUARD_CONFIG": config})

    assert (settings.listen, settings.queue_size, settings.drain_timeout_s) == ("127.0.0.1:6000", 500, 3.0)
    assert settings.log_json is True and settings.log_level == "WARNING"
    assert settings.enable_risk_enforcement is False


def test_config_example_json_loads_without_warnings() -> None:
    settings = load_settings({}, {"config": str(REPO / "config.example.json")})

    assert settings.warnings == ()
    assert settings.daily_max_drawdown_percentage == 5.0 and settings.stop_trading_minutes == 30


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = write(tmp_path, "c.json", json.dumps({"max_daily_loss": 1, "max_drawdown": 2,
                                                   "stop_trading_minutes": 3, "queue_size": 77}))
    env = {"TRADEGUARD_CONFIG": config, "TRADEGUARD_MAX_DRAWDOWN_PERCENTAGE": "12",
           "TRADEGUARD_STOP_TRADING_MINUTES": "13"}

    settings = load_settings(env, {"stop_trading_minutes": "23", "config": None})

    assert settings.daily_max_drawdown_percentage == 1.0  # file
    assert settings.max_drawdown_percentage == 12.0  # env over file
    assert settings.stop_trading_minutes == 23  # flag over env
    assert settings.period_reset_utc == "00:00"  # default
    sources = dict(settings.sources)
    assert sources["stop_trading_minutes"] == "flag --stop-trading-minutes"
    assert sources["max_drawdown_percentage"] == "env TRADEGUARD_MAX_DRAWDOWN_PERCENTAGE"
    line = describe_sources(settings)
    assert "flag > env > file > stored feature flags > default" in line
    assert f"queue_size=77 (file {config}: queue_size)" in line


def test_the_start_up_line_hides_secrets(tmp_path: Path) -> None:
    config = write(tmp_path, "c.json", json.dumps({"admin_token": "ADMIN-SECRET-123456",
                                                   "database_url": "postgresql://u:DB-SECRET-9@h:5432/d"}))

    line = describe_sources(load_settings({}, {"config": config}))

    assert "ADMIN-SECRET" not in line and "DB-SECRET" not in line and "***" in line


def test_a_flag_on_the_command_line_beats_the_seed_flag_in_the_file(tmp_path: Path) -> None:
    config = write(tmp_path, "c.json", json.dumps({"feature_flags": {"enable_risk_enforcement": False}}))

    settings = load_settings({"ENABLE_RISK_ENFORCEMENT": "true"}, {"config": config})

    assert settings.enable_risk_enforcement is True


def test_a_seed_key_and_its_setting_with_different_values_are_refused(tmp_path: Path) -> None:
    config = write(tmp_path, "c.json", json.dumps({"max_daily_loss": 3, "daily_max_drawdown_percentage": 4}))

    with pytest.raises(SettingsError, match="both set daily_max_drawdown_percentage"):
        load_settings({}, {"config": config})


def test_a_fraction_for_a_percentage_is_read_as_written_with_a_warning(tmp_path: Path) -> None:
    config = write(tmp_path, "c.json", json.dumps({"max_daily_loss": 0.05}))

    settings = load_settings({}, {"config": config})

    assert settings.daily_max_drawdown_percentage == 0.05
    assert any("max_daily_loss=0.05 is read as 0.05 %" in w for w in settings.warnings)


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected an object of settings"),
    ('{"queue_size": "many"}', "queue_size: expected int"),
    ('{"queue_size": true}', "queue_size: expected int"),
    ('{"listen": 50051}', "listen: expected str"),
    ('{"feature_flags": true}', "feature_flags: expected an object"),
])
def test_a_bad_file_is_one_error_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    config = write(tmp_path, "bad.json", content)

    with pytest.raises(SettingsError, match=message) as err:
        load_settings({}, {"config": config})
    assert config in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "content", "key"), [
    ("dup.json", '{"max_drawdown": 5, "stop_trading_minutes": 30, "max_drawdown": 50}', "max_drawdown"),
    ("dup.json", '{"feature_flags": {"enable_persistence": true, "enable_persistence": false}}', "enable_persistence"),
    ("dup.json", '{"queue_size": 5, "queue_size": 5}', "queue_size"),
    ("dup", '{"max_drawdown": 5, "max_drawdown": 50}', "max_drawdown"),
    ("dup.toml", "max_drawdown = 5\nstop_trading_minutes = 30\nmax_drawdown = 50\n", "max_drawdown"),
])
def test_a_key_given_twice_in_the_file_is_a_start_up_error_naming_it(tmp_path: Path, name: str, content: str,
                                                                      key: str) -> None:
    """JSON kept the last value without a word (max_drawdown 50 where the operator read 5 at the top)."""
    config = write(tmp_path, name, content)

    with pytest.raises(SettingsError, match=f"key '{key}' is given twice") as err:
        load_settings({}, {"config": config})
    assert config in str(err.value) and "\n" not in str(err.value)


def test_a_missing_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read it"):
        load_settings({}, {"config": str(tmp_path / "nope.json")})


# ---- unknown names ----------------------------------------------------------------------------------


def test_a_misspelled_variable_is_reported_with_the_right_name() -> None:
    settings = load_settings({"TRADEGUARD_DAILY_MAX_DRAWDOWN_PERCENT": "3"})

    assert settings.daily_max_drawdown_percentage == 5.0
    assert settings.warnings == ("unknown environment variable TRADEGUARD_DAILY_MAX_DRAWDOWN_PERCENT (did you mean "
                                 "TRADEGUARD_DAILY_MAX_DRAWDOWN_PERCENTAGE?)",)


def test_strict_refuses_unknown_variables_from_env_or_flag() -> None:
    env = {"TRADEGUARD_DAILY_MAX_DRAWDOWN_PERCENT": "3"}
    with pytest.raises(SettingsError, match=r"did you mean TRADEGUARD_DAILY_MAX_DRAWDOWN_PERCENTAGE.*--strict"):
        load_settings({**env, "TRADEGUARD_STRICT": "true"})
    with pytest.raises(SettingsError, match="--strict"):
        load_settings(env, {"strict": True})


def test_unknown_file_keys_are_reported_and_refused_when_strict(tmp_path: Path) -> None:
    config = write(tmp_path, "c.json", json.dumps({"max_daily_los": 3, "feature_flags": {"enable_persistance": True},
                                                   "config": "other.json"}))

    settings = load_settings({}, {"config": config})

    assert f"unknown key max_daily_los in {config} (did you mean max_daily_loss?)" in settings.warnings
    assert (f"unknown key feature_flags.enable_persistance in {config} (did you mean enable_persistence?)"
            in settings.warnings)
    assert any(w.startswith("unknown key config in") for w in settings.warnings)  # the file cannot name a file
    with pytest.raises(SettingsError, match="unknown key max_daily_los"):
        load_settings({}, {"config": config, "strict": True})


def test_variables_of_the_client_commands_and_the_example_bots_are_not_unknown() -> None:
    env = {"TRADEGUARD_ADDR": "x:1", "TRADEGUARD_HEALTH_ADDRESS": "x:1", "TRADEGUARD_ADMIN_ADDRESS": "x:1",
           "TRADEGUARD_TEST_POSTGRES_URL": "postgresql://x", "TRADEGUARD_CONFIG": "", "TRADEGUARD_STRICT": "1"}

    assert load_settings(env).warnings == ()


# ---- the command line -------------------------------------------------------------------------------


def test_every_setting_has_a_description_for_help() -> None:
    assert {f.name for f in settings_fields()} <= HELP.keys()


def _help(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_serve_help_describes_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("serve", capsys=capsys)

    for f in settings_fields():
        assert f"TRADEGUARD_{f.name.upper()}" in text
    assert "default daily loss limit, % (0 = off" in text
    assert "flag > env > file > stored feature flags > default" in text


def test_migrate_help_lists_only_the_flags_migrate_uses(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help("migrate", capsys=capsys)
    flags = {word.rstrip(",") for word in text.split() if word.startswith("--") and not word.startswith("--no-")}

    assert flags == {"--help"} | {"--" + name.replace("_", "-") for name in MIGRATE_SETTINGS}


@pytest.mark.parametrize("command", ["health", "admin"])
def test_client_command_flags_each_have_a_description(command: str) -> None:
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    sub = subcommands.choices[command]

    undocumented = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
    assert undocumented == []


def test_kubernetes_service_variables_of_a_service_named_tradeguard_are_not_unknown() -> None:
    env = {"TRADEGUARD_SERVICE_HOST": "10.0.0.7", "TRADEGUARD_SERVICE_PORT": "50051",
           "TRADEGUARD_SERVICE_PORT_GRPC": "50051", "TRADEGUARD_PORT": "tcp://10.0.0.7:50051",
           "TRADEGUARD_PORT_50051_TCP": "tcp://10.0.0.7:50051", "TRADEGUARD_PORT_50051_TCP_ADDR": "10.0.0.7",
           "TRADEGUARD_PORT_50051_TCP_PORT": "50051", "TRADEGUARD_PORT_50051_TCP_PROTO": "tcp"}

    assert load_settings({**env, "TRADEGUARD_STRICT": "true"}).warnings == ()
