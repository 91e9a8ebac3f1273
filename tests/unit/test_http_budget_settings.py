"""The HTTP listener's budgets (README "Fairness and overload"): http_max_concurrent for requests in progress and
http_max_streams, apart from it, for server-sent event streams; each from its flag or TRADEGUARD_ variable, and
checked at start."""

from __future__ import annotations

import pytest

from tradeguard_server.main import build_parser
from tradeguard_server.settings import SettingsError, load_settings


def test_the_http_budgets_default_to_64_requests_and_256_streams() -> None:
    settings = load_settings({}, {})

    assert (settings.http_max_concurrent, settings.http_max_streams) == (64, 256)


def test_http_max_streams_comes_from_its_variable_and_its_flag_wins() -> None:
    assert load_settings({"TRADEGUARD_HTTP_MAX_STREAMS": "12"}, {}).http_max_streams == 12
    flags = vars(build_parser().parse_args(["serve", "--http-max-streams", "7"]))

    settings = load_settings({"TRADEGUARD_HTTP_MAX_STREAMS": "12"}, {"http_max_streams": flags["http_max_streams"]})

    assert settings.http_max_streams == 7
    assert dict(settings.sources)["http_max_streams"] == "flag --http-max-streams"


def test_zero_http_max_streams_is_no_limit_and_a_negative_one_is_refused_naming_it() -> None:
    assert load_settings({}, {"http_max_streams": 0}).http_max_streams == 0
    with pytest.raises(SettingsError, match=r"^http_max_streams: must be >= 0 \(0 = no limit\)"):
        load_settings({}, {"http_max_streams": -1})
