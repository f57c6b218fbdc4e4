"""Mutation testing of the pure core: do the fast tests fail when its behaviour breaks?

mutmut 3 (in the ``test`` extra) changes the code under PATH one small edit at a time (``<`` becomes
``<=``, a constant changes, an argument goes missing) and runs the fast tests (tests/unit, tests/stateful)
against each such mutant. A mutant the tests fail on is *killed*; one they pass on *survived*: a behaviour
no test pins. Each mutant runs only the tests that call the mutated function, under the Hypothesis
profile ``mutation`` (tests/conftest.py: 40 examples per test and per state machine instead of 200, a
fixed seed, no shrinking), so a run is short and its score repeatable. tests/unit/test_core_imports.py
is left out: every mutated module imports mutmut, which imports socket and threading.

Some survivors cannot be killed: the edit does not change behaviour (an *equivalent* mutant).
bench/mutation-equivalent.toml lists them, each with the reason, keyed on the file, the function and
the changed source line (not on mutmut's mutant numbers, which shift when a function changes).
Listed equivalents are *excluded* from the score:

    score = killed / (mutants - listed equivalents)

where killed counts mutants the tests failed on, timed out on or crashed on. The check fails (exit 1)
when the score is below ``--fail-under`` (90 %), and with ``--strict`` also when any survivor is
neither killed nor listed. Exit 2: mutmut itself could not run (for instance a test fails without
any mutant).

mutmut works in a scratch directory, ``.mutation/<paths>/`` (git-ignored): symbolic links to fedbus/,
tests/ and scenarios/, and this project's pyproject.toml plus a ``[tool.mutmut]`` table for the chosen
paths; its mutants and caches land in ``.mutation/<paths>/mutants/``, its progress (when the output is
not a terminal) in ``.mutation/<paths>/mutmut.log``. Every run starts afresh unless ``--incremental``:
then mutmut keeps the verdicts of unchanged functions and the survivors are tested again, so a new test
counts (a killed verdict is kept even if the test that killed it is gone; a fresh run settles that).

    .venv/bin/python bench/mutation.py                      # fedbus/aggregator, the required target
    .venv/bin/python bench/mutation.py fedbus/protocol fedbus/faults [--strict] [--incremental]
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "bench" / "mutation-equivalent.toml"
SCRATCH = ROOT / ".mutation"
DEFAULT_PATHS = ("fedbus/aggregator",)
CORE = ("fedbus/aggregator", "fedbus/protocol", "fedbus/scenario", "fedbus/faults")
# the fast tests; not the import-purity check, which mutmut's own imports in every mutated module break
TESTS = ("tests/unit", "tests/stateful", "--ignore=tests/unit/test_core_imports.py")
LINKED = ("fedbus", "tests", "scenarios")  # what the tests need from the project, linked into the scratch directory
KILLED = frozenset({"killed", "timeout", "segfault", "caught by type check"})
FAIL_UNDER = 90.0
# a mutant's name: module, then x_function or xǁClassǁmethod, then __mutmut_<n>
NAME = re.compile(r"^(?P<module>[\w.]+?)\.x(?:ǁ(?P<cls>[^ǁ]+)ǁ|_)(?P<func>\w+?)__mutmut_(?P<n>\d+)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Mutant:
    """One mutant that was not killed: where it is, what it changes, and what mutmut made of it."""

    name: str
    status: str
    file: str
    function: str
    line: int
    before: str  # the original source line(s) the mutant changes, whitespace-normalized
    after: str  # what the mutant has instead
    diff: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Equivalent:
    """A listed equivalent mutant: the same key as ``Mutant`` and the reason no test can kill it."""

    file: str
    function: str
    before: str
    after: str
    reason: str

    def matches(self, mutant: Mutant) -> bool:
        return (self.file, self.function, self.before, self.after) == (
            mutant.file, mutant.function, mutant.before, mutant.after)


def normalized(lines: list[str]) -> str:
    return "\n".join(" ".join(line.split()) for line in lines)


def load_equivalents(path: Path = EQUIVALENTS) -> list[Equivalent]:
    """The checked-in list; ``ValueError`` names an entry that lacks a field."""
    if not path.exists():
        return []
    entries = tomllib.loads(path.read_text(encoding="utf-8")).get("equivalent", [])
    out = []
    for i, entry in enumerate(entries):
        missing = [k for k in ("file", "function", "before", "after", "reason") if not str(entry.get(k, "")).strip()]
        if missing:
            raise ValueError(f"{path.name}: equivalent[{i}] lacks {', '.join(missing)}")
        out.append(Equivalent(file=entry["file"], function=entry["function"], before=normalized(
            entry["before"].splitlines()), after=normalized(entry["after"].splitlines()), reason=entry["reason"]))
    return out


# ---------------------------------------------------------------------- the scratch directory
def scratch_dir(paths: list[str]) -> Path:
    return SCRATCH / "+".join(p.removesuffix(".py").replace("/", "-") for p in paths)


def mutmut_table(paths: list[str]) -> str:
    def strings(items: list[str] | tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"

    only = [p if p.endswith(".py") else f"{p.rstrip('/')}/*" for p in paths]
    return "\n".join([
        "",
        "# written by bench/mutation.py",
        "[tool.mutmut]",
        'source_paths = ["fedbus"]',
        f"only_mutate = {strings(only)}",
        f"pytest_add_cli_args_test_selection = {strings(TESTS)}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]',
        'also_copy = ["scenarios"]',
        "use_git_change_detection = false",  # the scratch directory is not the repository
        "",
    ])


def prepare(paths: list[str], *, fresh: bool) -> tuple[Path, bool]:
    """Create (or reuse) the scratch directory; return it and whether mutmut has results there already."""
    work = scratch_dir(paths)
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in LINKED:
        link = work / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    if "[tool.mutmut]" in pyproject:
        raise SystemExit("pyproject.toml has its own [tool.mutmut] table: bench/mutation.py writes that table itself")
    wanted = pyproject + mutmut_table(paths)
    target = work / "pyproject.toml"
    if not target.exists() or target.read_text(encoding="utf-8") != wanted:
        target.write_text(wanted, encoding="utf-8")
    return work, (work / "mutants" / "mutmut-stats.json").exists()


# ---------------------------------------------------------------------- running mutmut
def mutmut_env() -> dict[str, str]:
    """The environment of every mutmut process: the tests load the Hypothesis profile for mutation runs."""
    return dict(os.environ, FEDBUS_HYPOTHESIS_PROFILE="mutation")


def mutmut(work: Path, *args: str, stdout: int | IO[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the mutmut command in ``work``."""
    binary = Path(sys.executable).with_name("mutmut")
    return subprocess.run([str(binary), *args], cwd=work, env=mutmut_env(), text=True, check=False, stdout=stdout,
                          stderr=None if stdout is None else subprocess.STDOUT)


def run_mutmut(work: Path, *args: str) -> bool:
    """``mutmut run``: its progress on a terminal; elsewhere (CI, a log) into mutmut.log, the tail if it fails."""
    if sys.stdout.isatty():
        return mutmut(work, "run", *args).returncode == 0
    log = work / "mutmut.log"
    print(f"mutmut run {' '.join(args)[:80]} (progress in {log.relative_to(ROOT)})", flush=True)
    with log.open("w", encoding="utf-8") as sink:
        done = mutmut(work, "run", *args, stdout=sink)
    if done.returncode != 0:
        print(log.read_text(encoding="utf-8")[-6000:])
    return done.returncode == 0


def statuses(work: Path) -> dict[str, str]:
    """Every mutant of the chosen paths and its verdict, from ``mutmut results --all true``."""
    done = mutmut(work, "results", "--all", "true", stdout=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(f"mutmut results failed:\n{done.stdout}")
    out = {}
    for line in done.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and NAME.match(name):
            out[name] = status
    return out


# ``mutmut show`` (its command-line entry point) for many mutants in one process: one ``mutmut show`` each
# costs a second
SHOW = """
import sys
from mutmut.__main__ import cli
for name in sys.argv[1:]:
    print("\\0" + name, flush=True)
    cli(["show", name], standalone_mode=False)
"""


def describe(work: Path, verdicts: dict[str, str]) -> list[Mutant]:
    """File, function, line and changed text of each mutant in ``verdicts``, from ``mutmut show``."""
    if not verdicts:
        return []
    shown = subprocess.run([sys.executable, "-c", SHOW, *verdicts], cwd=work, env=mutmut_env(), text=True,
                           check=True, capture_output=True).stdout
    out = []
    for chunk in shown.split("\0")[1:]:
        name, _, text = chunk.partition("\n")
        diff = "\n".join(line for line in text.splitlines() if not line.startswith("# "))
        body = [line for line in diff.splitlines() if not line.startswith(("---", "+++"))]
        removed = [line[1:] for line in body if line.startswith("-")]
        added = [line[1:] for line in body if line.startswith("+")]
        match = NAME.match(name)
        assert match is not None, name
        module = match["module"].replace(".", "/")
        file = f"{module}.py" if (ROOT / f"{module}.py").exists() else f"{module}/__init__.py"
        function = f"{match['cls']}.{match['func']}" if match["cls"] else match["func"]
        out.append(Mutant(name=name, status=verdicts[name], file=file, function=function,
                          line=source_line(ROOT / file, function, removed), before=normalized(removed),
                          after=normalized(added), diff=diff))
    return sorted(out, key=lambda m: (m.file, m.line, m.name))


def source_line(path: Path, function: str, removed: list[str]) -> int:
    """The line of ``path`` where ``function``'s first changed line is (the function's own line if not found)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    scope: list[ast.stmt] = tree.body
    node: ast.AST | None = None
    for part in function.split("."):
        node = next((n for n in scope if isinstance(n, ast.ClassDef | ast.FunctionDef) and n.name == part), None)
        if node is None:
            return 0
        scope = node.body
    assert isinstance(node, ast.ClassDef | ast.FunctionDef)
    lines = path.read_text(encoding="utf-8").splitlines()
    wanted = " ".join(removed[0].split()) if removed else None
    for number in range(node.lineno, (node.end_lineno or node.lineno) + 1):
        if wanted is not None and " ".join(lines[number - 1].split()) == wanted:
            return number
    return node.lineno


# ---------------------------------------------------------------------- the report
def report(verdicts: dict[str, str], survivors: list[Mutant], equivalents: list[Equivalent], *, paths: list[str],
           fail_under: float, strict: bool) -> int:
    counts = Counter(verdicts.values())
    total = len(verdicts)
    killed = sum(n for status, n in counts.items() if status in KILLED)
    listed = [m for m in survivors if any(e.matches(m) for e in equivalents)]
    unlisted = [m for m in survivors if m not in listed]
    print(f"\nmutants of {', '.join(paths)}: {total}  ({', '.join(f'{s}: {n}' for s, n in sorted(counts.items()))})")
    for m in unlisted:
        print(f"\nSURVIVED ({m.status}) {m.file}:{m.line} in {m.function}  [{m.name}]\n{m.diff}")
    for m in listed:
        reason = next(e.reason for e in equivalents if e.matches(m))
        print(f"equivalent: {m.file}:{m.line} {m.function}: {m.before!r} -> {m.after!r}  ({reason})")
    stale = [e for e in equivalents if any(e.file.startswith(p.removesuffix(".py")) for p in paths)
             and not any(e.matches(m) for m in survivors)]
    for e in stale:
        print(f"note: listed equivalent no longer survives (killed, or its line changed): {e.file} {e.function}: "
              f"{e.before!r} -> {e.after!r}")
    counted = total - len(listed)
    score = 100.0 * killed / counted if counted else 100.0
    raw = 100.0 * killed / total if total else 100.0
    print(f"\nraw score: {killed}/{total} killed = {raw:.1f} %")
    print(f"score: {killed}/{counted} = {score:.1f} %  (the {len(listed)} listed equivalents are excluded; "
          f"{len(unlisted)} unlisted survivors; threshold {fail_under:g} %)")
    if score < fail_under:
        print(f"FAIL: mutation score {score:.1f} % < {fail_under:g} %")
        return 1
    if strict and unlisted:
        print(f"FAIL (--strict): {len(unlisted)} survivors are neither killed nor listed in {EQUIVALENTS.name}")
        return 1
    print("OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("paths", nargs="*", default=list(DEFAULT_PATHS),
                        help=f"packages or modules to mutate (default: {DEFAULT_PATHS[0]}; the pure core: "
                             f"{', '.join(CORE)})")
    parser.add_argument("--fail-under", type=float, default=FAIL_UNDER, help="minimum score, percent (default 90)")
    parser.add_argument("--strict", action="store_true", help="also fail on any survivor not listed as equivalent")
    parser.add_argument("--incremental", action="store_true",
                        help="keep mutmut's earlier verdicts for unchanged functions (survivors are tested again)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2, help="parallel mutant runs")
    args = parser.parse_args(argv)
    paths = [p.rstrip("/") for p in args.paths]
    for p in paths:
        if not (ROOT / p).exists() or not p.startswith("fedbus/"):
            parser.error(f"{p}: not a path under fedbus/")
    equivalents = load_equivalents()

    started = time.monotonic()
    work, had_results = prepare(paths, fresh=not args.incremental)
    if not run_mutmut(work, "--max-children", str(args.max_children)):
        print("mutmut could not run (see above)", file=sys.stderr)
        return 2
    verdicts = statuses(work)
    if had_results:  # cached survivors were judged by older tests: judge them again
        again = [name for name, status in verdicts.items() if status not in KILLED]
        if again:
            print(f"\ntesting the {len(again)} earlier survivors again")
            if not run_mutmut(work, "--max-children", str(args.max_children), *again):
                print("mutmut could not run (see above)", file=sys.stderr)
                return 2
            verdicts = statuses(work)
    if not verdicts:
        print(f"no mutants found in {', '.join(paths)}", file=sys.stderr)
        return 2
    survivors = describe(work, {name: status for name, status in verdicts.items() if status not in KILLED})
    code = report(verdicts, survivors, equivalents, paths=paths, fail_under=args.fail_under, strict=args.strict)
    print(f"wall time: {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
