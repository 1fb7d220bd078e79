"""Bar charts drawn on the server as SVG: no script (the CSP allows none inline), readable without one.

``grouped_bars`` computes the geometry; ``templates/reports/_chart.html`` draws it. Every bar carries its
value in a ``<title>``; the table next to each chart has the same figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from flask_babel import gettext as _

from portal import formatting
from portal.i18n import current_language
from portal.reports.services import Table, percent

WIDTH = 720
HEIGHT = 220
LEFT = 48
BOTTOM = 40
TOP = 12
#: Labels are cut to this many characters; a character of the 10 px label font is about this wide.
LABEL_CHARS = 18
CHAR_WIDTH = 6.0


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: int
    title: str


@dataclass
class Chart:
    title: str
    legend: list[str]
    bars: list[Bar] = field(default_factory=list)
    #: (x of the group's centre, label)
    labels: list[tuple[float, str]] = field(default_factory=list)
    #: (y, label) of the value axis
    ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    #: Baseline of the group labels, and their angle: 0, or -40 when they would not fit side by side.
    label_y: float = HEIGHT - BOTTOM + 16
    label_angle: int = 0

    @property
    def plot(self) -> tuple[int, int, int, int]:
        """The box of the bars (x, y, width, height): the SVG draws only this; the axes' text is HTML around it."""
        return LEFT, TOP, WIDTH - LEFT - 8, HEIGHT - TOP - BOTTOM

    @property
    def empty(self) -> bool:
        return not any(b.height > 0 for b in self.bars)


def grouped_bars(
    title: str,
    groups: list[str],
    series: dict[str, list[float | None]],
    *,
    show: Callable[[float], str] | None = None,
    maximum: float | None = None,
    names: list[str] | None = None,
) -> Chart:
    """Vertical bars, one group per label and one bar per series in each group; None draws no bar.
    ``names``: the groups' full names for the bars' titles, where the labels under the axis are short."""
    show = show or _figure(1)
    full_names = names or groups
    names = list(series)
    chart = Chart(title, names)
    values = [v for vs in series.values() for v in vs if v is not None]
    top = maximum if maximum is not None else max(values, default=0.0)
    top = max(top, max(values, default=0.0)) or 1.0
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(groups))
    bar_w = max(1.0, (slot * 0.8) / max(1, len(names)))
    longest = max((min(len(g), LABEL_CHARS) for g in groups), default=0)
    if longest * CHAR_WIDTH > slot:  # slanted labels need room below the plot instead of beside each other
        chart.label_angle = -40
        chart.height = TOP + plot_h + 16 + round(longest * CHAR_WIDTH * 0.65)
    for g, label in enumerate(groups):
        left = LEFT + g * slot + slot * 0.1
        short = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"
        chart.labels.append((round(LEFT + g * slot + slot / 2, 1), short))
        for s, name in enumerate(names):
            value = series[name][g]
            if value is None:
                continue
            h = plot_h * max(0.0, value) / top
            chart.bars.append(
                Bar(
                    round(left + s * bar_w, 1),
                    round(TOP + plot_h - h, 1),
                    round(bar_w - 1, 1),
                    round(h, 1),
                    s,
                    f"{full_names[g]}, {name}: {show(value)}",
                )
            )
    for i in range(5):
        value = top * i / 4
        chart.ticks.append((round(TOP + plot_h - plot_h * i / 4, 1), show(value)))
    return chart


def _kinds(table: Table) -> list[str]:
    return list(dict.fromkeys(str(r["kind"]) for r in table.rows))


def _percent_by(
    table: Table, label_key: str, value_key: str, word: Callable[[str, str], str]
) -> tuple[list[str], dict[str, list[float | None]]]:
    labels = list(dict.fromkeys(str(r[label_key]) for r in table.rows))
    series: dict[str, list[float | None]] = {}
    for kind in _kinds(table):
        values = {str(r[label_key]): r[value_key] for r in table.rows if r["kind"] == kind}
        series[_unit_name(kind)] = [values.get(label) for label in labels]
    return [word(label_key, label) for label in labels], series


def _unit_name(kind: str) -> str:
    return {"gpu": "GPU", "cpu": "CPU", "storage": _("Storage")}.get(kind, kind)


def _figure(places: int) -> Callable[[float], str]:
    """A bar's value as the page's language writes it, rounded as Python's format rounds (``f"{v:,.1f}"``)."""
    return lambda v: formatting.number(Decimal(f"{v:.{places}f}"), places=places, locale=current_language())


def _percent(v: float) -> str:
    return f"{_figure(1)(v)} %"


def chart_for(table: Table, word: Callable[[str, str], str] = lambda _key, value: value) -> Chart | None:
    """The chart drawn above a table, where one says something the table alone says less clearly. ``word(key,
    value)``: a stored word of the table (a sector, a side) as the page writes it."""
    if table.name == "capacity":
        # "Gdańsk · H100" under the axis; "Gdańsk AI Centre · H100 GPU-hours" in each bar's title
        labels = [f"{str(r['site']).split()[0]} · {str(r['resource']).split()[0]}" for r in table.rows]
        return grouped_bars(
            _("Allocated and used, in % of capacity"),
            labels,
            {
                _("Allocated"): [r["allocated_percent"] for r in table.rows],
                _("Used"): [r["used_percent"] for r in table.rows],
            },
            names=[f"{r['site']} · {r['resource']}" for r in table.rows],
            show=_percent,
            maximum=100.0,
        )
    if table.name == "utilisation":
        months = list(dict.fromkeys(str(r["month"]) for r in table.rows))
        series: dict[str, list[float | None]] = {}
        for kind in _kinds(table):
            rows = [r for r in table.rows if r["kind"] == kind]
            series[_unit_name(kind)] = [
                percent(
                    sum(r["used"] for r in rows if r["month"] == m), sum(r["capacity"] for r in rows if r["month"] == m)
                )
                for m in months
            ]
        title = _("Used, in % of capacity, by month and kind")
        return grouped_bars(title, months, series, show=_percent, maximum=100.0)
    if table.name in ("sectors", "countries", "public_private"):
        labels, series = _percent_by(table, "group", "used_share_percent", word)
        title = _("%(table)s: share of use, by kind", table=_(table.title))
        return grouped_bars(title, labels, series, show=_percent, maximum=100.0)
    if table.name == "revenue_by_month":
        months = list(dict.fromkeys(str(r["month"]) for r in table.rows))
        net = {(str(r["month"]), r["currency"]): r["net_cents"] / 100 for r in table.rows}
        currencies = list(dict.fromkeys(str(r["currency"]) for r in table.rows))
        return grouped_bars(
            _("Net revenue by month (%(currencies)s)", currencies=", ".join(currencies)),
            months,
            {_("Net, %(currency)s", currency=c): [net[(m, c)] for m in months] for c in currencies},
            show=_figure(2),
        )
    if table.name == "funnel":
        rows = table.rows[:12]
        return grouped_bars(
            _("Applications per call"),
            [str(r["call"])[:24] for r in rows],
            {
                name: [r[key] for r in rows]
                for key, name in (("started", _("Started")), ("submitted", _("Submitted")), ("accepted", _("Accepted")))
            },
            show=_figure(0),
        )
    return None
