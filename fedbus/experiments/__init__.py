"""Experiments over many runs: ``fedbus sweep`` (a grid of scenario settings by seeds, each cell a run) and
``fedbus report`` (plots and an HTML page with means and confidence intervals over seeds).

Pure: ``grid`` (grid and seed expansion, scenario overrides), ``stats`` (mean, Student-t interval) and
``grouping`` (runs grouped by their varied settings, per-round series, timelines, costs), ``page`` (the
HTML). Edges: ``manifest`` (sweep.json, run folders), ``sweep`` (runs the cells in subprocesses),
``collect`` (reads run folders), ``plots`` (matplotlib, imported there only) and ``report``.
"""
