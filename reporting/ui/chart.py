"""The archive dashboard's chart: rows archived per day and table, as stacked SVG bars.

Drawn on the server: the page needs no script and no chart library, and the figure is the
same in every browser (and in a test's parser). Colours are SVG ``fill`` attributes, which
the Content Security Policy allows where an inline ``style`` would not be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta

#: Colour-blind-safe (Okabe-Ito), one per table in order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000")
WIDTH, HEIGHT = 900, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 36


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    fill: str
    table: str
    day: date
    rows: int


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    legend: list[tuple[str, str, int]]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    first_day: date
    last_day: date

    @property
    def baseline(self) -> float:
        return self.height - BOTTOM

    @property
    def left(self) -> int:
        return LEFT

    @property
    def right(self) -> int:
        return self.width - RIGHT


def stacked_bars(per_table: Mapping[str, Mapping[date, int]], last_day: date,
                 days: int = 90) -> Chart:
    """Bars for the ``days`` days up to ``last_day``, one stack per day, one segment per
    table with rows that day."""
    first_day = last_day - timedelta(days=days - 1)
    tables = list(per_table)
    fills = {table: PALETTE[i % len(PALETTE)] for i, table in enumerate(tables)}
    totals = {first_day + timedelta(days=i): 0 for i in range(days)}
    for counts in per_table.values():
        for day, rows in counts.items():
            if day in totals:
                totals[day] += rows
    top = _nice_ceiling(max(totals.values(), default=0))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / days
    bars: list[Bar] = []
    for index, day in enumerate(totals):
        stacked = 0
        for table in tables:
            rows = per_table[table].get(day, 0)
            if rows <= 0:
                continue
            height = rows / top * plot_height
            y = HEIGHT - BOTTOM - (stacked + rows) / top * plot_height
            bars.append(Bar(x=round(LEFT + index * slot + slot * 0.1, 2), y=round(y, 2),
                            width=round(slot * 0.8, 2), height=round(max(height, 0.5), 2),
                            fill=fills[table], table=table, day=day, rows=rows))
            stacked += rows
    y_ticks = [Tick(round(HEIGHT - BOTTOM - plot_height * step / 4, 2), f"{top * step // 4:,}")
               for step in range(5)]
    x_ticks = [Tick(round(LEFT + i * slot + slot / 2, 2), day.strftime("%b %d"))
               for i, day in enumerate(totals) if i % 15 == 0]
    legend = [(table, fills[table], sum(per_table[table].values())) for table in tables]
    return Chart(WIDTH, HEIGHT, bars, legend, y_ticks, x_ticks, first_day, last_day)


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (at least 4,
    so that four gridlines fall on whole numbers)."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= max(value, 4):
                return step * magnitude
        magnitude *= 10
