"""``fedbus report``: charts and an HTML page over sweep folders and run folders.

Reads the runs (``collect``), groups them by the settings that vary between them (``grouping``), computes the
means and Student-t intervals over seeds (``stats``), draws the charts (``plots``, matplotlib) and writes
``index.html`` (``page``) beside them in the report folder.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedbus.errors import FedbusError, ScenarioError
from fedbus.experiments.collect import collect
from fedbus.experiments.costs import Price, cost_estimate, parse_prices
from fedbus.experiments.grid import short_names
from fedbus.experiments.grouping import (
    Group,
    RunRecord,
    Series,
    against,
    final_estimate,
    final_prompt_chars,
    final_test_accuracy,
    final_val_accuracy,
    group_runs,
    initial_test_accuracy,
    numeric_keys,
    prompt_chars,
    rejection_counts,
    round_series,
    shown,
    timeline,
    val_accuracy,
    varied_keys,
)
from fedbus.experiments.page import Image, Table, render
from fedbus.experiments.stats import DEFAULT_CONFIDENCE, Estimate

INSTALL_HINT = "matplotlib is not installed: pip install 'fedbus[report]' (or pip install 'matplotlib>=3.8,<4')"
INDEX = "index.html"
MAX_PRICE_FILE_BYTES = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportOptions:
    paths: tuple[Path, ...]
    out: Path
    prices: Path | None = None
    confidence: float = DEFAULT_CONFIDENCE


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportResult:
    index: Path
    images: tuple[Path, ...]
    runs: int
    completed: int
    varied: tuple[str, ...]


def read_prices(path: Path) -> dict[str, Price]:
    """A YAML or JSON price table (see ``costs``); a ScenarioError naming the file and the entry."""
    try:
        data = path.read_bytes()[:MAX_PRICE_FILE_BYTES + 1]
        if len(data) > MAX_PRICE_FILE_BYTES:
            raise ScenarioError([("", "larger than 1 MiB: not a price table")], str(path))
        doc = yaml.safe_load(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ScenarioError([("", f"not a readable YAML/JSON price table ({type(exc).__name__})")], str(path)) from exc
    return parse_prices(doc, str(path))


def _test_series(group: Group, label: str, confidence: float) -> Series:
    """Test accuracy of the initial prompt (x = 0) and of the final one (x = the group's last round)."""
    last = max((len(s.get("rounds", ())) for s in group.summaries()), default=0)
    initial = final_estimate(group, initial_test_accuracy, confidence)
    final = final_estimate(group, final_test_accuracy, confidence)
    points = [(x, e) for x, e in ((0.0, initial), (float(last), final)) if e is not None]
    return Series(label=label, points=tuple(points))


def _estimate_text(estimate: Estimate | None, digits: int = 3) -> str:
    return "-" if estimate is None else estimate.text(digits)


def _runs_text(group: Group) -> str:
    done = [r for r in group.runs if r.summary is not None]
    others = Counter(r.status for r in group.runs if r.summary is None)
    extra = "".join(f", {n} {status}" for status, n in sorted(others.items()))
    return f"{len(done)} of {len(group.runs)} completed{extra}"


def _file_name(stem: str) -> str:
    return _UNSAFE.sub("_", stem) + ".png"


def build_report(options: ReportOptions) -> ReportResult:
    """Write the charts and index.html into ``options.out``; FedbusError when there is nothing to report."""
    from fedbus.experiments import plots

    prices = read_prices(options.prices) if options.prices is not None else None
    found = collect(options.paths)
    done = [r for r in found.runs if r.summary is not None]
    if not done:
        raise FedbusError(f"{', '.join(map(str, options.paths))}: no completed run to report on "
                          f"({len(found.runs)} runs found)")
    keys = varied_keys([r.settings for r in found.runs if r.settings], first=found.grid_keys)
    names = short_names(list(keys))
    groups = group_runs(found.runs, keys)
    labels = [g.label(names) for g in groups]
    c = options.confidence
    percent = f"{c:.0%}"
    options.out.mkdir(parents=True, exist_ok=True)
    images: list[Image] = []
    files: list[Path] = []

    def chart(file: str, heading: str, caption: str, path: Path) -> None:
        files.append(path)
        images.append(Image(file=file, heading=heading, caption=caption))

    per_seed = f"mean over seeds, bars and band: {percent} Student-t confidence interval"
    val = tuple(Series(label=label, points=round_series(g, val_accuracy, c)) for g, label in zip(groups, labels,
                                                                                                  strict=True))
    test = tuple(_test_series(g, label, c) for g, label in zip(groups, labels, strict=True))
    chart("accuracy.png", "Accuracy per round",
          f"Left: validation accuracy of the global prompt after each round; right: test accuracy of the initial "
          f"prompt (round 0) and of the final prompt; {per_seed}.",
          plots.line_panels(options.out / "accuracy.png", [
              plots.Panel(title="validation accuracy", xlabel="round", ylabel="accuracy", series=val,
                          ylim=(0.0, 1.0)),
              plots.Panel(title="test accuracy: initial and final prompt", xlabel="round (0: initial prompt)",
                          ylabel="accuracy", series=test, ylim=(0.0, 1.0))]))
    length = tuple(Series(label=label, points=round_series(g, prompt_chars, c))
                   for g, label in zip(groups, labels, strict=True))
    chart("prompt_length.png", "Prompt length per round",
          f"Characters of the global prompt after each round; {per_seed}.",
          plots.line_panels(options.out / "prompt_length.png", [
              plots.Panel(title="global prompt length", xlabel="round", ylabel="characters", series=length)]))
    for key in numeric_keys(done, keys):
        file = _file_name(f"final_accuracy_vs_{names[key]}")
        chart(file, f"Final test accuracy against {key}",
              f"Test accuracy of the final prompt for each value of {key}"
              f"{', one line per value of the other varied settings' if len(keys) > 1 else ''}; {per_seed}.",
              plots.line_panels(options.out / file, [
                  plots.Panel(title=f"final test accuracy vs {names[key]}", xlabel=key, ylabel="accuracy",
                              series=against(done, key, keys, final_test_accuracy, c), ylim=(0.0, 1.0),
                              integer_x=all(isinstance(r.settings.get(key), int) for r in done))]))
    sample = done[0]
    line = timeline(sample.summary or {})
    if line.rounds and line.clients:
        chart("participation.png", "Participation timeline (one run)",
              f"Run {line.run} ({sample.folder}): what each client was in each round.",
              plots.timeline_chart(options.out / "participation.png", line, f"participation: {line.run}"))
    reasons = rejection_counts(r.summary for r in done if r.summary is not None)
    sections: list[tuple[str, str]] = []
    if reasons:
        chart("rejections.png", "Rejection reasons",
              f"Updates rejected, by reason, over every round of the {len(done)} completed runs.",
              plots.bar_chart(options.out / "rejections.png", reasons, "rejected updates by reason", "updates"))
    else:
        sections.append(("Rejection reasons", f"No update was rejected in the {len(done)} completed runs."))
    table = _table(groups, keys, names, prices, c)
    notes = _notes(found.runs, groups, percent)
    html = render(title="fedbus report", intro=_intro(options, found.runs, done, keys), table=table, images=images,
                  notes=notes, sections=sections)
    index = options.out / INDEX
    index.write_text(html, encoding="utf-8")
    return ReportResult(index=index, images=tuple(files), runs=len(found.runs), completed=len(done), varied=keys)


def _table(groups: Sequence[Group], keys: Sequence[str], names: Mapping[str, str],
           prices: Mapping[str, Price] | None, confidence: float) -> Table:
    ci = f"mean ± {confidence:.0%} CI"
    header = [*(names[k] for k in keys), "runs", f"final test accuracy ({ci})", f"initial test accuracy ({ci})",
              f"last validation accuracy ({ci})", f"final prompt chars ({ci})"]
    if prices is not None:
        header.append(f"cost per run ({ci})")
    rows = []
    for group in groups:
        row = [shown(v) for _, v in group.values]
        row += [_runs_text(group),
                _estimate_text(final_estimate(group, final_test_accuracy, confidence)),
                _estimate_text(final_estimate(group, initial_test_accuracy, confidence)),
                _estimate_text(final_estimate(group, final_val_accuracy, confidence)),
                _estimate_text(final_estimate(group, final_prompt_chars, confidence), digits=0)]
        if prices is not None:
            cost = cost_estimate(group.summaries(), prices, confidence)
            row.append(cost if isinstance(cost, str) else cost.text(4))
        rows.append(tuple(row))
    return Table(header=tuple(header), rows=tuple(rows), numeric=frozenset(range(len(keys) + 1, len(header))))


def _intro(options: ReportOptions, runs: Sequence[RunRecord], done: Sequence[RunRecord],
           keys: Sequence[str]) -> list[str]:
    seeds = sorted({r.seed for r in done if r.seed is not None})
    lines = [f"From {', '.join(str(p) for p in options.paths)}: {len(runs)} runs, {len(done)} completed; "
             f"seeds {', '.join(map(str, seeds)) or 'unknown'}.",
             f"Varied settings: {', '.join(keys)}." if keys else "No setting varies between these runs: one group."]
    engines = {str((r.summary or {}).get("engine", {}).get("name", "")) for r in done}
    if "surrogate" in engines:
        lines.append("Engine surrogate: a seeded model of textual-gradient updates, NOT an LLM; its accuracies are "
                     "not benchmark results.")
    return lines


def _notes(runs: Sequence[RunRecord], groups: Sequence[Group], percent: str) -> list[str]:
    notes = [f"Intervals: mean ± t(1-α/2, n-1) · s / √n over the n completed seeds of a cell (the two-sided "
             f"{percent} Student-t interval, s the sample standard deviation)."]
    single = [g for g in groups if sum(r.summary is not None for r in g.runs) == 1]
    if single:
        notes.append(f"{len(single)} of {len(groups)} cells have one completed seed: no interval can be drawn for "
                     "them (shown as '1 seed: no interval', without error bars).")
    left = [r for r in runs if r.summary is None]
    if left:
        notes.append("Left out of the statistics (not completed): "
                     + "; ".join(f"{r.folder} ({r.status})" for r in left[:20])
                     + (f"; and {len(left) - 20} more" if len(left) > 20 else "") + ".")
    return notes
