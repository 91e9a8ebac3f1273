"""Bounded traders' metrics (issue 21, residency.py), read at scrape time:

- `tradeguard_traders_in_memory` (gauge): traders held in memory now (at most max_traders, plus evicted ones that
  came back);
- `tradeguard_traders_evicted_total`: traders evicted from memory (idle, unpinned, stored);
- `tradeguard_traders_loaded_total`: evicted traders loaded back by their next call;
- `tradeguard_traders_rejected_total`: calls refused RESOURCE_EXHAUSTED because max_traders was reached.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class ResidencyCounters(Protocol):
    evicted_total: int
    loaded_total: int
    rejected_total: int

    @property
    def in_memory(self) -> int: ...


class ResidencyCollector(Collector):
    def __init__(self, residency: ResidencyCounters) -> None:
        self.residency = residency

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        r = self.residency
        yield GaugeMetricFamily("tradeguard_traders_in_memory", "Traders whose risk state is held in memory now "
                                "(max_traders bounds the new ones).", value=r.in_memory)
        yield CounterMetricFamily("tradeguard_traders_evicted", "Idle traders evicted from memory (their state "
                                  "stored; loaded again on their next call).", value=r.evicted_total)
        yield CounterMetricFamily("tradeguard_traders_loaded", "Evicted traders loaded back from the store by their "
                                  "next call.", value=r.loaded_total)
        yield CounterMetricFamily("tradeguard_traders_rejected", "Calls refused RESOURCE_EXHAUSTED: a new trader "
                                  "while max_traders were in memory.", value=r.rejected_total)
