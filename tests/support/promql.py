"""Which series a PromQL expression reads, and which series a /metrics scrape exports.

Enough of PromQL's lexer to tell a series selector (`risk_trading_paused{trader_id=~"$trader"}`) from a function
(`rate(`), an aggregation (`sum by (job) (`), a keyword (`and`, `offset`), a label name in a grouping clause
(`by (trader_id)`), a number (`14.4`, `1e3`), a duration (`[5m]`) or a string. Grafana's template variables
(`$instance`, `${datasource}`, `$__rate_interval`) are accepted where PromQL has a value.

The exposition side follows the text format's naming rules: a counter's series is its TYPE name (prometheus_client
writes `x_total`), a histogram `x` exports `x_bucket`, `x_count` and `x_sum`, a summary `x`, `x_count` and `x_sum`;
every sample line's name is exported too (so families with samples need no rule at all).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    |(?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
    |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    |(?P<var>\$\{[^}]*\}|\$\w+)
    |(?P<space>\s+|\#[^\n]*)
    |(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){}\[\],@:])
    """,
    re.VERBOSE,
)
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                          "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}) | GROUPING | AGGREGATIONS
MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds",
                               "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                               "scrape_series_added"})
"""Series Prometheus writes itself (per target, per alert): not the sidecar's to export."""


class PromQLSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Selector:
    """One series selector: the metric name and its label matchers (label, op, value without quotes)."""

    name: str
    matchers: tuple[tuple[str, str, str], ...] = ()

    def label_names(self) -> set[str]:
        return {label for label, _, _ in self.matchers}


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) of every token but white space and comments; PromQLSyntaxError on a character PromQL lacks."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if m is None:
            raise PromQLSyntaxError(f"unexpected {expr[pos]!r} at {pos} in {expr!r}")
        kind = m.lastgroup or ""
        if kind != "space":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return bytes(text[1:-1], "utf-8").decode("unicode_escape")


def _skip_to(toks: list[tuple[str, str]], i: int, close: str) -> int:
    """Index just past the token `close` that ends the bracket opened at toks[i]."""
    opening = toks[i][1]
    depth = 0
    for j in range(i, len(toks)):
        text = toks[j][1] if toks[j][0] == "op" else ""
        if text == opening:
            depth += 1
        elif text == close:
            depth -= 1
            if depth == 0:
                return j + 1
    raise PromQLSyntaxError(f"unclosed {opening!r}")


def _matchers(toks: list[tuple[str, str]], i: int) -> tuple[tuple[tuple[str, str, str], ...], int]:
    """Parse `{label op "value", ...}` starting at toks[i] == '{'; returns the matchers and the index past '}'."""
    out: list[tuple[str, str, str]] = []
    j = i + 1
    while j < len(toks) and toks[j] != ("op", "}"):
        if toks[j] == ("op", ","):
            j += 1
            continue
        if j + 2 >= len(toks) or toks[j][0] != "ident" or toks[j + 1][1] not in MATCH_OPS \
                or toks[j + 2][0] not in ("string", "var"):
            raise PromQLSyntaxError(f"bad label matcher near {toks[j][1]!r}")
        value = _unquote(toks[j + 2][1]) if toks[j + 2][0] == "string" else toks[j + 2][1]
        out.append((toks[j][1], toks[j + 1][1], value))
        j += 3
    if j >= len(toks):
        raise PromQLSyntaxError("unclosed '{'")
    return tuple(out), j + 1


def selectors(expr: str) -> list[Selector]:
    """The series selectors of a PromQL expression, in order."""
    toks = tokens(expr)
    out: list[Selector] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ("", "")
        if kind == "op" and text == "[":  # range or subquery: durations only
            i = _skip_to(toks, i, "]")
        elif kind == "ident" and text in GROUPING and nxt == ("op", "("):  # by (label, ...): label names
            i = _skip_to(toks, i + 1, ")")
        elif kind == "ident" and text == "offset":
            i += 2 + (nxt == ("op", "-"))
        elif kind == "op" and text == "@":  # @ <timestamp> or @ start()/end()
            i += 2
        elif kind == "ident" and (nxt == ("op", "(") or text.lower() in KEYWORDS):  # a function, a keyword
            i += 1
        elif kind == "ident":
            matchers: tuple[tuple[str, str, str], ...] = ()
            i += 1
            if nxt == ("op", "{"):
                matchers, i = _matchers(toks, i)
            out.append(Selector(text, matchers))
        elif kind == "op" and text == "{":  # {__name__="x", ...}
            matchers, i = _matchers(toks, i)
            names = [v for label, op, v in matchers if label == "__name__" and op == "="]
            if not names:
                raise PromQLSyntaxError(f"a selector without a metric name in {expr!r}")
            out.append(Selector(names[0], tuple(m for m in matchers if m[0] != "__name__")))
        else:
            i += 1
    return out


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr)}


GRAFANA_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$")


def grafana_variable_query(query: str) -> tuple[list[Selector], str | None]:
    """A Grafana Prometheus variable query: `label_values(selector, label)`, `label_values(label)` or PromQL.
    Returns its selectors and the label it lists (None for a PromQL query)."""
    m = GRAFANA_LABEL_VALUES.match(query)
    if m is None:
        return selectors(query), None
    return (selectors(m["selector"]) if m["selector"] else []), m["label"]


@dataclass
class Exposition:
    """What a /metrics scrape exports: series names, and per series the label names and values seen."""

    types: dict[str, str] = field(default_factory=dict)  # TYPE name -> type
    labels: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # series -> label -> values

    @property
    def names(self) -> set[str]:
        """Every series name a query can select: sample names, plus the names the TYPE lines promise."""
        out = set(self.labels)
        for name, typ in self.types.items():
            out.update(series_names(name, typ))
        return out


SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
            "summary": ("", "_count", "_sum"), "info": ("_info",)}


def series_names(type_name: str, typ: str) -> set[str]:
    """The series a family of this TYPE line exports (text format 0.0.4: a counter's TYPE name is its series)."""
    return {type_name + suffix for suffix in SUFFIXES.get(typ, ("",))}


SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+\S+")
LABEL_PAIR = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse_exposition(text: str) -> Exposition:
    """Parse Prometheus text format 0.0.4 (what prometheus_client serves)."""
    out = Exposition()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(maxsplit=3)
            out.types[name] = typ.strip()
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            if m is None:
                raise ValueError(f"not a sample line: {line!r}")
            seen = out.labels.setdefault(m["name"], {})
            for label, value in LABEL_PAIR.findall(m["labels"] or ""):
                seen.setdefault(label, set()).add(value)
    return out


def unknown_names(referenced: Iterable[Selector], exported: Exposition, recorded: Iterable[str] = ()) -> set[str]:
    """Names referenced that neither the scrape exports, nor a recording rule records, nor Prometheus writes."""
    known = exported.names | set(recorded) | PROMETHEUS_SERIES
    return {s.name for s in referenced} - known
