"""The Go and TypeScript example traders (package guard / src/guard.ts) against servers that answer wrong.

Each scenario of tests/support/adversary.py, asked once (`--once`): the trader prints a denial (never
an allowed decision) within its deadline plus the scenario's slack (100 ms; measured inside the trader,
so process start-up does not count). An answer with a complete body that no server sends is denied with
DECISION_CODE_INVALID_RESPONSE; a failed call with DECISION_CODE_SIDECAR_UNAVAILABLE.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.test_other_language_clients import Trader, build_go, build_ts, parse_lines
from tests.support.adversary import SCENARIOS, AdversaryFleet, Scenario, fleet, latest_return

pytestmark = pytest.mark.e2e

DEADLINE_MS = 500


@pytest.fixture(scope="module")
def adversaries() -> Iterator[AdversaryFleet]:
    with fleet() as running:
        yield running


@pytest.fixture(scope="module", params=["go", "ts"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Trader:
    return build_go(tmp_path_factory.mktemp("go")) if request.param == "go" else build_ts()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_example_trader_against_an_adversary_denies_within_its_deadline(
        built: Trader, adversaries: AdversaryFleet, scenario: Scenario) -> None:
    # The adversaries speak the unary CanTrade (tests/support/adversary.py): the examples' unary path is what they
    # test (the Session path's fault tests are tests/integration/test_session_faults.py).
    no_session = "-no-session" if built.lang == "go" else "--no-session"
    out = built.run("--addr", adversaries.address(scenario), "--once", "--timeout-ms", str(DEADLINE_MS), no_session)

    lines = parse_lines(out.stdout)
    decision = next(line for line in lines if line["step"] == "can_trade")
    once = next(line for line in lines if line["step"] == "once")
    where = f"{built.lang} {scenario.name}: {out.stdout}{out.stderr}"
    assert decision["allowed"] == "false", where
    assert float(once["elapsed_ms"]) <= latest_return(DEADLINE_MS / 1000, scenario) * 1000, where
    if scenario.expect == "invalid" and scenario.payload is not None:  # a complete body no server sends
        assert decision["code"] == "DECISION_CODE_INVALID_RESPONSE" and out.returncode == 0, where
    elif scenario.expect == "unavailable":
        assert decision["code"] == "DECISION_CODE_SIDECAR_UNAVAILABLE" and out.returncode == 3, where
    else:
        assert decision["code"] in ("DECISION_CODE_INVALID_RESPONSE", "DECISION_CODE_SIDECAR_UNAVAILABLE"), where
    assert once["client_order_id"].startswith("tg-"), where
