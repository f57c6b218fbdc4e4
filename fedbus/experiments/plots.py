"""The report's PNG charts, drawn with matplotlib (the ``report`` extra). matplotlib is imported here only, inside
the functions, and through its object API with the Agg canvas: no pyplot, no global backend, no window.

Each function takes plain values (``grouping``'s Series and Timeline) and writes one PNG.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fedbus.experiments.grouping import STATES, Series, Timeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
STATE_COLOURS = {"accepted": "#2e7d32", "rejected": "#c62828", "failed": "#6a1b9a", "dropped": "#ef6c00",
                 "missing": "#f9a825", "selected": "#90caf9", "not selected": "#eeeeee"}
LEGEND_WRAP = 100  # characters per legend line
LEGEND_INCHES_PER_CHAR = 0.065  # at font size 8: how wide a legend column is, to choose how many fit
MAX_CLIENT_LABELS = 40  # more clients than this: no names on the timeline's axis


@dataclass(frozen=True, slots=True, kw_only=True)
class Panel:
    """One set of axes: its title, axis labels and lines."""

    title: str
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]
    ylim: tuple[float, float] | None = None
    integer_x: bool = True


def _figure(width: float, height: float, columns: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    return figure, list(axes)


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _draw(axes: Axes, panel: Panel) -> None:
    for series in panel.series:
        if not series.points:
            continue
        xs = [x for x, _ in series.points]
        means = [e.mean for _, e in series.points]
        errors = [e.half_width or 0.0 for _, e in series.points]
        line = axes.errorbar(xs, means, yerr=errors, marker="o", markersize=4, capsize=3, label=series.label)
        lows = [e.low for _, e in series.points]
        highs = [e.high for _, e in series.points]
        if len(xs) > 1 and any(errors):
            axes.fill_between(xs, lows, highs, alpha=0.15, color=line.lines[0].get_color(), linewidth=0)
    axes.set_title(panel.title, fontsize=10)
    axes.set_xlabel(panel.xlabel)
    axes.set_ylabel(panel.ylabel)
    if panel.ylim is not None:
        axes.set_ylim(*panel.ylim)
    if panel.integer_x:
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)


def line_panels(path: Path, panels: Sequence[Panel], title: str = "") -> Path:
    """Side-by-side line charts, each line with error bars (and a band) of its confidence interval; one legend
    below them all (the panels show the same groups, in the same colours)."""
    labels = [textwrap.fill(s.label, LEGEND_WRAP) for s in panels[0].series] if panels else []
    width = max(6.0, 5.2 * len(panels))
    widest = max((len(line) for label in labels for line in label.splitlines()), default=1)
    columns = max(1, min(len(labels), int(width // (LEGEND_INCHES_PER_CHAR * widest + 0.6))))
    legend_rows = math.ceil(len(labels) / columns) * max((label.count("\n") + 1 for label in labels), default=1)
    figure, axes = _figure(width, 4.2 + 0.2 * legend_rows, columns=len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        _draw(ax, panel)
    handles, _ = axes[0].get_legend_handles_labels() if axes else ([], [])
    if handles and any(labels):
        shown = [textwrap.fill(str(h.get_label()), LEGEND_WRAP) for h in handles]
        figure.legend(handles, shown, loc="outside lower center", ncols=columns, fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def timeline_chart(path: Path, timeline: Timeline, title: str) -> Path:
    """Rounds (x) by clients (y), each cell coloured by what the client was in that round."""
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Patch

    rows = len(timeline.clients)
    figure, (axes,) = _figure(8.0, min(9.0, 2.2 + 0.18 * rows))
    image: list[list[tuple[float, float, float]]] = [
        [to_rgb(STATE_COLOURS[timeline.states[r][c]]) for r in range(len(timeline.rounds))]
        for c in range(rows)]
    if image and image[0]:
        axes.imshow(image, aspect="auto", interpolation="nearest",
                    extent=(timeline.rounds[0] - 0.5, timeline.rounds[-1] + 0.5, rows - 0.5, -0.5))
    axes.set_xlabel("round")
    axes.set_ylabel("client")
    if rows <= MAX_CLIENT_LABELS:
        axes.set_yticks(range(rows), labels=list(timeline.clients), fontsize=7)
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    seen = {s for row in timeline.states for s in row}
    axes.legend(handles=[Patch(color=STATE_COLOURS[s], label=s) for s in STATES if s in seen],
                loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes.set_title(title, fontsize=10)
    return _save(figure, path)


def bar_chart(path: Path, counts: Mapping[str, int], title: str, xlabel: str) -> Path:
    """Horizontal bars, the first key on top."""
    labels = list(counts)
    figure, (axes,) = _figure(7.0, 1.6 + 0.35 * len(labels))
    axes.barh(range(len(labels)), [counts[k] for k in labels], color="#c62828")
    axes.set_yticks(range(len(labels)), labels=labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    axes.set_axisbelow(True)
    return _save(figure, path)


def available() -> bool:
    """Whether matplotlib is installed (``fedbus report`` needs it), found without importing it."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None
