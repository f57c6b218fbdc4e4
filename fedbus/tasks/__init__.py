"""The tasks and data of the FedTextGrad experiments, as plain frozen values.

Generated BIG-Bench Hard ``object_counting`` and ``multistep_arithmetic_two`` questions
(seeded, exactly in BBH's format), generated GSM8K-style ``word_problems`` (not GSM8K), loaders for
the real BBH and GSM8K files with TextGrad's and the FedTextGrad authors' splits, IID / Dirichlet /
per-task partitions across clients, and the ``Answer: <number>`` parser that grades replies.
Pure: stdlib only, randomness injected, no IO except the loaders reading the file they are given.

The names below load their module when first used (PEP 562): a scenario that names a source file needs its
loader, not the generators of every task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedbus.lazy import exports

if TYPE_CHECKING:
    from fedbus.tasks.answers import (
        ANSWER_INSTRUCTION,
        ParsedAnswer,
        accuracy,
        extract_answer,
        is_correct,
        parse_answer,
        parse_target,
    )
    from fedbus.tasks.arithmetic import generate_arithmetic
    from fedbus.tasks.example import Example, Splits
    from fedbus.tasks.generate import TASK_NAMES, generate_splits
    from fedbus.tasks.loaders import (
        DatasetError,
        load_bbh_json,
        load_bbh_splits,
        load_gsm8k_jsonl,
        load_gsm8k_splits,
        split_bbh,
        split_gsm8k,
    )
    from fedbus.tasks.object_counting import CATEGORIES, generate_object_counting
    from fedbus.tasks.partition import Partition, dirichlet_partition, iid_partition, per_task_partition
    from fedbus.tasks.sources import SPLIT_RULES, load_source, split_gsm8k_fedtextgrad
    from fedbus.tasks.word_problems import generate_word_problems, worked_solution

__all__ = [
    "ANSWER_INSTRUCTION",
    "CATEGORIES",
    "SPLIT_RULES",
    "TASK_NAMES",
    "DatasetError",
    "Example",
    "ParsedAnswer",
    "Partition",
    "Splits",
    "accuracy",
    "dirichlet_partition",
    "extract_answer",
    "generate_arithmetic",
    "generate_object_counting",
    "generate_splits",
    "generate_word_problems",
    "iid_partition",
    "is_correct",
    "load_bbh_json",
    "load_bbh_splits",
    "load_gsm8k_jsonl",
    "load_gsm8k_splits",
    "load_source",
    "parse_answer",
    "parse_target",
    "per_task_partition",
    "split_bbh",
    "split_gsm8k",
    "split_gsm8k_fedtextgrad",
    "worked_solution",
]
if not TYPE_CHECKING:  # mypy checks the names imported above instead
    __getattr__, __dir__ = exports(__name__, globals(), {  # module -> the names it gives
        "fedbus.tasks.answers": (
            "ANSWER_INSTRUCTION", "ParsedAnswer", "accuracy", "extract_answer", "is_correct", "parse_answer",
            "parse_target",
        ),
        "fedbus.tasks.arithmetic": ("generate_arithmetic",),
        "fedbus.tasks.example": ("Example", "Splits"),
        "fedbus.tasks.generate": ("TASK_NAMES", "generate_splits"),
        "fedbus.tasks.loaders": (
            "DatasetError", "load_bbh_json", "load_bbh_splits", "load_gsm8k_jsonl", "load_gsm8k_splits", "split_bbh",
            "split_gsm8k",
        ),
        "fedbus.tasks.object_counting": ("CATEGORIES", "generate_object_counting"),
        "fedbus.tasks.partition": ("Partition", "dirichlet_partition", "iid_partition", "per_task_partition"),
        "fedbus.tasks.sources": ("SPLIT_RULES", "load_source", "split_gsm8k_fedtextgrad"),
        "fedbus.tasks.word_problems": ("generate_word_problems", "worked_solution"),
    })
