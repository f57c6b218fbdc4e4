"""Real data files in a run: which file holds which task, and the split rules by name.

A scenario's ``task.source`` names a BIG-Bench Hard task file (``object_counting.json``:
``{"examples": [{"input", "target"}]}``) or a GSM8K folder (``train.jsonl`` and ``test.jsonl``, the
files of openai/grade-school-math, in their published order). ``task.split`` names the rule that
cuts it into train / validation / test:

- ``textgrad``: TextGrad's own loaders. BBH: the first 50 examples train, the next 100 validate, the
  rest test (``textgrad/tasks/big_bench_hard.py``). GSM8K: train[:100] validates, train[100:]
  trains, test[:300] tests (``textgrad/tasks/gsm8k.py``, class ``GSM8K``).
- ``fedtextgrad``: the FedTextGrad authors' (ubc-tea/FedTextGrad). BBH as TextGrad (their copy loads
  ``BigBenchHard``, 50/100/rest). GSM8K: their ``GSM8K_DSPy``: the train and the test list each
  shuffled by a fresh ``random.Random(0)``, then train[:50] trains, train[200:300] validates and
  test[300:400] tests (TextGrad's own ``GSM8K_DSPy`` takes 200 / 300 / all instead).

The sources cross the bus inside ``DataSpec.sources`` as ``task=path`` lines, so every client of the
run reads the same file: a client on another machine needs the same file at the same absolute path.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedbus.tasks.example import Example, Splits
from fedbus.tasks.loaders import (
    BBH_TRAIN,
    BBH_VAL,
    GSM8K_TASK,
    DatasetError,
    load_bbh_json,
    load_gsm8k_jsonl,
    split_bbh,
    split_gsm8k,
)

SPLIT_RULES: tuple[str, ...] = ("textgrad", "fedtextgrad")
DEFAULT_SPLIT = "textgrad"
SOURCE_ONLY_TASKS: tuple[str, ...] = (GSM8K_TASK,)  # tasks without a generator: they need a file
GSM8K_FILES = ("train.jsonl", "test.jsonl")

# FedTextGrad's GSM8K_DSPy (ubc-tea/FedTextGrad, textgrad/tasks/gsm8k.py): after a seed-0 shuffle
DSPY_SEED = 0
FEDTEXTGRAD_GSM8K_TRAIN = (0, 50)
FEDTEXTGRAD_GSM8K_VAL = (200, 300)
FEDTEXTGRAD_GSM8K_TEST = (300, 400)

REMOTE_HINT = "every client of the run reads this file: a client on another machine needs it at the same path"


def check_rule(rule: str) -> None:
    """``ValueError`` unless ``rule`` is a known split rule."""
    if rule not in SPLIT_RULES:
        raise ValueError(f"unknown split rule {rule!r}; known: {', '.join(SPLIT_RULES)}")


def encode_sources(sources: Mapping[str, str]) -> str:
    """``{"gsm8k": "/data/gsm8k"}`` as ``DataSpec.sources``: one ``task=path`` line each, in task order."""
    lines = []
    for task, path in sources.items():
        if not task or "=" in task or "\n" in task or "\n" in path or not path:
            raise ValueError(f"cannot carry the source {task!r}: {path!r}")
        lines.append(f"{task}={path}")
    return "\n".join(lines)


def decode_sources(text: str | None) -> dict[str, str]:
    """``DataSpec.sources`` back to ``{task: path}``; ``ValueError`` for a line without ``task=path``."""
    out: dict[str, str] = {}
    for line in (text or "").splitlines():
        task, sep, path = line.partition("=")
        if not sep or not task or not path:
            raise ValueError(f"a data source must read task=path, got {line!r}")
        out[task] = path
    return out


def gsm8k_files(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The train and test files of a GSM8K folder (or of the folder holding the given file)."""
    where = Path(path)
    folder = where.parent if where.is_file() else where
    if not folder.is_dir():
        raise DatasetError(path, "", f"no such folder or file; expected a GSM8K folder with {' and '.join(GSM8K_FILES)}"
                           f" ({REMOTE_HINT})")
    files = tuple(folder / name for name in GSM8K_FILES)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DatasetError(folder, "", f"a GSM8K folder needs {' and '.join(GSM8K_FILES)}; "
                           f"{' and '.join(missing)} missing")
    return files[0], files[1]


def _shuffled(examples: Sequence[Example]) -> list[Example]:
    items = list(examples)
    random.Random(DSPY_SEED).shuffle(items)  # a fresh Random(0) for each list, as the authors do
    return items


def split_gsm8k_fedtextgrad(train: Sequence[Example], test: Sequence[Example]) -> Splits:
    """The FedTextGrad authors' GSM8K split (their ``GSM8K_DSPy``): seed-0 shuffles, then train[:50],
    validation train[200:300], test test[300:400]."""
    tr, te = _shuffled(train), _shuffled(test)
    return Splits(train=tuple(tr[slice(*FEDTEXTGRAD_GSM8K_TRAIN)]), val=tuple(tr[slice(*FEDTEXTGRAD_GSM8K_VAL)]),
                  test=tuple(te[slice(*FEDTEXTGRAD_GSM8K_TEST)]))


def _check_nonempty(path: str | os.PathLike[str], splits: Splits, rule: str) -> Splits:
    for name in ("train", "val", "test"):
        if not getattr(splits, name):
            raise DatasetError(path, "", f"too few examples: the {rule} split leaves {name} empty")
    return splits


def load_source(task: str, path: str | os.PathLike[str], rule: str = DEFAULT_SPLIT) -> Splits:
    """``task``'s train / validation / test from its file, cut by ``rule``. Raises ``DatasetError``
    (naming the file and the line or entry) and ``ValueError`` for an unknown rule."""
    check_rule(rule)
    if task == GSM8K_TASK:
        train_file, test_file = gsm8k_files(path)
        train, test = load_gsm8k_jsonl(train_file), load_gsm8k_jsonl(test_file)
        splits = split_gsm8k(train, test) if rule == "textgrad" else split_gsm8k_fedtextgrad(train, test)
        return _check_nonempty(path, splits, rule)
    if not Path(path).is_file():
        raise DatasetError(path, "", f"no such file; expected a BBH task JSON ({REMOTE_HINT})")
    # the authors load BBH through TextGrad's BigBenchHard: both rules are 50 / 100 / the rest
    return _check_nonempty(path, split_bbh(load_bbh_json(path, task), BBH_TRAIN, BBH_VAL), rule)


def scenario_sources(raw: Any, tasks: Sequence[str], base: Path,
                     rule: str = DEFAULT_SPLIT) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """A scenario's ``task.source`` as ``{task: absolute path}``, each file read once to check it, and the
    problems as ``(yaml path, message)``. ``raw`` is one path (a run of one task) or a mapping task -> path;
    a relative path is taken from ``base`` (the scenario file's folder)."""
    problems: list[tuple[str, str]] = []
    given: dict[str, tuple[str, Any]] = {}  # task -> (yaml path, the path as written)
    if raw is None:
        pass
    elif isinstance(raw, str):
        if len(tasks) == 1:
            given[tasks[0]] = ("task.source", raw)
        else:
            problems.append(("task.source", f"the run has {len(tasks)} tasks: give a mapping of task to file, "
                             f"e.g. {{{tasks[-1]}: PATH}}"))
    elif isinstance(raw, Mapping):
        for task, path in raw.items():
            if task not in tasks:
                problems.append((f"task.source.{task}", f"not one of the run's tasks ({', '.join(tasks)})"))
            else:
                given[task] = (f"task.source.{task}", path)
    else:
        problems.append(("task.source", f"must be a file path or a mapping of task to path, got {type(raw).__name__}"))
    out: dict[str, str] = {}
    for task, (where, path) in given.items():
        if not isinstance(path, str) or not path.strip() or "\n" in path:
            problems.append((where, f"must be a file or folder path, got {path!r}"))
            continue
        resolved = Path(path).expanduser()
        resolved = (resolved if resolved.is_absolute() else base / resolved).resolve()
        try:
            load_source(task, resolved, rule)
        except DatasetError as exc:
            problems.append((where, str(exc)))
            continue
        out[task] = str(resolved)
    for task in tasks:
        if task in SOURCE_ONLY_TASKS and task not in out and task not in given:
            problems.append(("task.source", f"{task} is real data, not generated: give its folder "
                             f"({' and '.join(GSM8K_FILES)}) as task.source"
                             + ("" if len(tasks) == 1 else f" ({{{task}: PATH}})")))
    return out, problems
