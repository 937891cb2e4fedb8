"""The open period's charges per day and category, as a PNG stacked bar chart."""

from __future__ import annotations

import io
from decimal import Decimal

from babel import Locale
from babel.dates import format_skeleton
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ticker import FuncFormatter, MaxNLocator

from billing_core.model import DailyCharges
from billing_core.money import Money, minor_unit_exponent, total
from bot import format as fmt
from bot.documents import FONT_FAMILIES, fold_to_font

# Below this the title, axes and a full legend leave no room for the bars.
MIN_WIDTH_PX, MIN_HEIGHT_PX = 480, 320
_MAX_SERIES = 8  # categories in the legend, so that it always fits
_DPI = 100
_PX_PER_LEGEND_COLUMN = 300
_TITLE_CHARS = 60  # of the group's name
_LEGEND_CHARS = 30  # of a category name; a column holds about this many at 9 pt


def render_usage_chart(
    daily: DailyCharges, *, locale: Locale, width_px: int = 1200, height_px: int = 600
) -> bytes:
    """A PNG of exactly ``width_px`` × ``height_px``: a stacked bar per day, one per category."""
    if width_px < MIN_WIDTH_PX or height_px < MIN_HEIGHT_PX:
        raise ValueError(f"a usage chart needs at least {MIN_WIDTH_PX} × {MIN_HEIGHT_PX} pixels")
    figure = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout="constrained")
    # The Agg backend, chosen by attaching its canvas to this figure alone: no display, and no
    # pyplot global state, so charts can be drawn from several threads at once.
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    span = _draw_bars(axes, daily)
    _format_days(axes, daily, locale)
    _format_amounts(axes, daily.group.currency, locale, span=span)
    _decorate(figure, axes, daily, locale, width_px=width_px, empty=span == (0.0, 0.0))
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _draw_bars(axes: Axes, daily: DailyCharges) -> tuple[float, float]:
    """Stack each category's daily amounts; returns the lowest and highest stack ends."""
    count = len(daily.days)
    above, below = [0.0] * count, [0.0] * count
    for category, amounts in _series(daily):
        # Floats only place bars on screen; no figure computed here is ever billed.
        values = [float(m.amount) for m in amounts]
        bottoms = [below[i] if v < 0 else above[i] for i, v in enumerate(values)]
        label = _shorten(category, _LEGEND_CHARS)
        axes.bar(range(count), values, bottom=bottoms, width=0.8, label=label)
        for i, v in enumerate(values):
            if v < 0:
                below[i] += v
            else:
                above[i] += v
    return min(below, default=0.0), max(above, default=0.0)


def _series(daily: DailyCharges) -> list[tuple[str, tuple[Money, ...]]]:
    """Categories, largest first; past ``_MAX_SERIES`` the smallest are summed into "Other"."""
    currency = daily.group.currency

    def weight(item: tuple[str, tuple[Money, ...]]) -> tuple[Decimal, str]:
        return (-total(item[1], currency).amount, item[0])

    ranked = sorted(daily.by_category.items(), key=weight)
    if len(ranked) <= _MAX_SERIES:
        return ranked
    kept, rest = ranked[: _MAX_SERIES - 1], ranked[_MAX_SERIES - 1 :]
    other = tuple(total(day, currency) for day in zip(*(a for _, a in rest), strict=True))
    return [*kept, (f"Other ({len(rest)} categories)", other)]


def _shorten(text: str, limit: int) -> str:
    # Legend columns are as wide as their longest label: bound it, or one name takes the row.
    return fold_to_font(text if len(text) <= limit else text[: limit - 1] + "…")


def _format_days(axes: Axes, daily: DailyCharges, locale: Locale) -> None:
    labels = [fold_to_font(format_skeleton("Md", d, locale=locale)) for d in daily.days]

    def label(x: float, _: int | None) -> str:
        i = round(x)
        return labels[i] if 0 <= i < len(labels) else ""

    # "auto" fits as many whole-day ticks as the drawn axis has room for, at any image width.
    axes.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True, min_n_ticks=1))
    axes.xaxis.set_major_formatter(FuncFormatter(label))
    axes.set_xlim(-0.6, max(len(labels), 1) - 0.4)
    if not labels:
        axes.set_xticks([])


def _format_amounts(
    axes: Axes, currency: str, locale: Locale, *, span: tuple[float, float]
) -> None:
    # An empty period still gets a sensible axis, from zero to one major unit.
    axes.set_ylim(bottom=span[0] * 1.08, top=max(span[1] * 1.08, 1.0))
    whole = minor_unit_exponent(currency) == 0  # no ticks between yen
    axes.yaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 5, 10], integer=whole))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda y, _: _amount(y, currency, locale)))
    axes.tick_params(labelfontfamily=FONT_FAMILIES, labelsize=9)
    axes.grid(axis="y", color="0.9")
    axes.set_axisbelow(True)
    axes.spines[["top", "right"]].set_visible(False)


def _amount(value: float, currency: str, locale: Locale) -> str:
    amount = Decimal(str(float(value)))  # numpy hands in float64, whose repr is no number
    # A tick at -0.0 would otherwise read "-0.00".
    return fold_to_font(fmt.money(Money.of(amount if amount else Decimal(0), currency), locale))


def _decorate(
    figure: Figure, axes: Axes, daily: DailyCharges, locale: Locale, *, width_px: int, empty: bool
) -> None:
    name = _shorten(daily.group.name, _TITLE_CHARS)
    title = f"{name} · charges per day · {fmt.period(daily.period, locale)}"
    figure.suptitle(fold_to_font(title), fontfamily=FONT_FAMILIES, fontsize=13, wrap=True)
    if empty:
        axes.text(
            0.5, 0.5, "No charges yet", transform=axes.transAxes, ha="center",
            va="center", fontfamily=FONT_FAMILIES, fontsize=12, color="0.4",
        )  # fmt: skip
        return
    # Under the plot, where it never hides a bar nor runs into the title.
    series = min(len(daily.by_category), _MAX_SERIES)
    columns = min(series, max(1, width_px // _PX_PER_LEGEND_COLUMN))
    font = FontProperties(family=FONT_FAMILIES, size=9)
    figure.legend(loc="outside lower center", ncols=columns, prop=font, frameon=False)
