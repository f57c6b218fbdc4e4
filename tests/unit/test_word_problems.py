"""The generated GSM8K-style word problems: seeded, multi-step, whole-number answers in GSM8K's answer style."""

from __future__ import annotations

import ast
import json
import operator
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.tasks import generate_splits, load_gsm8k_jsonl
from fedbus.tasks.generate import TASK_NAMES
from fedbus.tasks.loaders import gsm8k_target
from fedbus.tasks.word_problems import (
    TASK,
    TEMPLATES,
    WordProblem,
    generate_word_problem,
    generate_word_problems,
    worked_solution,
)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def arithmetic(text: str) -> float:
    """The value of an expression of numbers and + - * / (an oracle independent of the generator)."""
    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return float(_OPS[type(node.op)](walk(node.left), walk(node.right)))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return float(node.value)
        raise ValueError(f"not arithmetic: {ast.dump(node)}")
    return walk(ast.parse(text, mode="eval").body)


@given(seed=st.integers(0, 2**32))
@settings(max_examples=200, deadline=None)
def test_every_step_computes_what_it_says_and_the_answer_is_a_whole_number(seed: int) -> None:
    """Property: each step's expression evaluates to its value, there are 3-4 steps, the answer is the last one."""
    problem = generate_word_problem(random.Random(seed))
    assert 3 <= len(problem.steps) <= 4
    for expression, value, _ in problem.steps:
        assert arithmetic(expression) == value
    assert problem.answer == problem.steps[-1][1] >= 0
    assert problem.question.endswith("?")


def test_the_answer_style_is_gsm8k_and_reads_back_through_the_gsm8k_loader(tmp_path: Path) -> None:
    """worked_solution ends in "#### N" after <<a*b=c>> steps; as JSONL, the GSM8K loader reads the same targets."""
    rng = random.Random(5)
    problems = [generate_word_problem(rng) for _ in range(30)]
    solution = worked_solution(problems[0])
    assert solution.splitlines()[-1] == f"#### {problems[0].answer}"
    assert "<<" in solution and ">>" in solution
    assert gsm8k_target(solution) == str(problems[0].answer)
    path = tmp_path / "generated.jsonl"
    path.write_text("".join(json.dumps({"question": p.question, "answer": worked_solution(p)}) + "\n"
                            for p in problems), encoding="utf-8")
    assert [e.target for e in load_gsm8k_jsonl(path)] == [str(p.answer) for p in problems]


def test_generation_is_seeded_and_covers_every_template() -> None:
    """The same seed gives the same problems; 500 draws use every template; the task says it is generated."""
    first = [generate_word_problems(random.Random(9)) for _ in range(3)]
    assert first == [generate_word_problems(random.Random(9)) for _ in range(3)]
    rng = random.Random(1)
    seen = {generate_word_problems(rng).category for _ in range(500)}
    assert seen == set(TEMPLATES)
    assert TASK == "word_problems" and TASK in TASK_NAMES and "gsm8k" not in TASK_NAMES


def test_splits_of_the_paper_sizes_are_distinct() -> None:
    """50/100/100 problems, no question twice: the generator's space is large enough for the paper's splits."""
    splits = generate_splits(TASK, 42, 50, 100, 100)
    inputs = [e.input for e in (*splits.train, *splits.val, *splits.test)]
    assert len(set(inputs)) == 250
    assert splits.tasks() == frozenset({TASK})


def test_a_problem_is_checked_at_construction() -> None:
    """A last step that is not the answer, or a negative answer, is refused."""
    with pytest.raises(ValueError, match="last step"):
        WordProblem(question="q?", steps=(("1 + 1", 2, "two"),), answer=3, template="t")
    with pytest.raises(ValueError, match="whole number"):
        WordProblem(question="q?", steps=(("1 - 2", -1, "minus"),), answer=-1, template="t")
