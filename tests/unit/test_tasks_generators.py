"""Generated BBH questions match the real files' format and carry the right targets."""

from __future__ import annotations

import ast
import random
import re
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbus.tasks import Example, Splits, generate_splits
from fedbus.tasks.arithmetic import evaluate, generate_arithmetic, outer_operator
from fedbus.tasks.generate import draw_distinct
from fedbus.tasks.object_counting import asked_category, draw_listing, generate_object_counting, items_in, render

# Verbatim inputs and targets from suzgunmirac/BIG-Bench-Hard bbh/object_counting.json: they pin the
# regexes and the oracles below to the real format, so the generator is checked against BBH, not itself.
REAL_OBJECT_COUNTING = [
    ("I have a flute, a piano, a trombone, four stoves, a violin, an accordion, a clarinet, a drum, two lamps, "
     "and a trumpet. How many musical instruments do I have?", "8"),
    ("I have a car, and a toaster. How many objects do I have?", "2"),
    ("I have a yam, a cauliflower, a garlic, two lettuce heads, a head of broccoli, a potato, a stalk of celery, "
     "and an onion. How many vegetables do I have?", "9"),
    ("I have a cow, three mice, a dog, a duck, and two snakes. How many animals do I have?", "8"),
    ("I have two fish, four cats, two chickens, a mouse, and a goat. How many animals do I have?", "10"),
    ("I have a peach, three cats, and a raspberry. How many fruits do I have?", "2"),
    ("I have two couches, a toaster, two chairs, four microwaves, a table, and a lamp. How many objects do I have?",
     "11"),
    ("I have three blackberries, two strawberries, an apple, three oranges, a nectarine, a grape, a peach, "
     "a banana, and a plum. How many fruits do I have?", "14"),
]
REAL_ARITHMETIC = [
    ("((-1 + 2 + 9 * 5) - (-2 + -4 + -4 * -7)) =", "24"),
    ("((3 * -3 * 6 + -5) - (-2 + -7 - 7 - -7)) =", "-50"),
    ("((6 * -6 * 8 * 1) * (-1 * 7 * -6 + -2)) =", "-11520"),
    ("((-9 - -3 * 1 - -3) * (-9 - 5 - -2 * -7)) =", "84"),
    ("((-7 * -6 * 0 - 5) * (-3 - 9 * -8 * -9)) =", "3255"),
]

QUANTITY = r"(?:a|an|two|three|four|five)"
PHRASE = rf"{QUANTITY} [a-z]+(?: [a-z]+)*"
CATEGORY = r"fruits|vegetables|animals|musical instruments|objects"
OBJECT_COUNTING_RE = re.compile(rf"^I have (?:{PHRASE}, )+and {PHRASE}\. How many ({CATEGORY}) do I have\?$")
GROUP = r"\((-?\d) ([-+*]) (-?\d) ([-+*]) (-?\d) ([-+*]) (-?\d)\)"
ARITHMETIC_RE = re.compile(rf"^\({GROUP} ([-+*]) {GROUP}\) =$")

# The test's own reading of the BBH vocabulary (singular and plural), independent of the module's table.
NOUNS: dict[str, str] = {}
for _category, _words in {
    "fruits": "apple banana blackberry/blackberries grape nectarine orange peach/peaches plum "
              "raspberry/raspberries strawberry/strawberries",
    "vegetables": "cabbage carrot cauliflower garlic head_of_broccoli/heads_of_broccoli lettuce_head onion "
                  "potato/potatoes stalk_of_celery/stalks_of_celery yam",
    "animals": "bear cat chicken cow dog donkey duck fish/fish frog goat mouse/mice pig rabbit snail snake",
    "musical instruments": "accordion clarinet drum flute piano trombone trumpet violin",
    "objects": "bed car chair couch/couches fridge lamp microwave oven stove table toaster",
}.items():
    for _word in _words.split():
        _singular, _, _plural = _word.replace("_", " ").partition("/")
        NOUNS[_singular] = _category
        NOUNS[_plural or _singular + "s"] = _category
NUMBER = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4, "five": 5}


def read_items(question: str) -> tuple[list[tuple[str, int, str]], str]:
    """(noun, count, category) for each listed item, and the asked category, parsed from the text."""
    match = OBJECT_COUNTING_RE.match(question)
    assert match is not None, question
    body = question.removeprefix("I have ").split(". How many")[0]
    phrases = [p.removeprefix("and ") for p in body.split(", ")]
    items = []
    for phrase in phrases:
        quantity, noun = phrase.split(" ", 1)
        items.append((noun, NUMBER[quantity], NOUNS[noun]))
        if quantity in ("a", "an"):
            assert (quantity == "an") == (noun[0] in "aeiou"), phrase
    return items, match.group(1)


def count_asked(question: str) -> int:
    items, asked = read_items(question)
    return sum(count for _, count, category in items if category == asked)


def safe_eval(expression: str) -> int:
    """Evaluate + - * and unary minus over integer literals with Python's own precedence, nothing else."""

    def walk(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
        raise AssertionError(f"unexpected syntax {ast.dump(node)}")

    return walk(ast.parse(expression.removesuffix(" =").strip(), mode="eval").body)


@pytest.mark.parametrize(("question", "target"), REAL_OBJECT_COUNTING)
def test_the_oracle_reads_real_bbh_object_counting(question: str, target: str) -> None:
    """The format regex and the independent counter agree with BBH's own questions and targets."""
    assert str(count_asked(question)) == target
    assert asked_category(question) in {"fruits", "vegetables", "animals", "musical instruments", "objects"}


@pytest.mark.parametrize(("question", "target"), REAL_ARITHMETIC)
def test_the_oracle_reads_real_bbh_arithmetic(question: str, target: str) -> None:
    """The arithmetic regex and the ast evaluator agree with BBH's own questions and targets."""
    assert str(safe_eval(question)) == target
    match = ARITHMETIC_RE.match(question)
    assert match is not None
    assert outer_operator(question) == match.group(8)


def test_generated_object_counting_has_bbh_format_and_right_targets() -> None:
    """Many generated questions: exact BBH format, correct a/an, target = count of the asked category."""
    rng = random.Random(7)
    examples = [generate_object_counting(rng) for _ in range(600)]
    for example in examples:
        assert example.task == "object_counting"
        assert example.target == str(count_asked(example.input))
        assert example.category == asked_category(example.input)
    assert {e.category for e in examples} == {"fruits", "vegetables", "animals", "musical instruments", "objects"}
    words = Counter(w for e in examples for w in e.input.replace(",", "").split())
    assert all(words[w] > 0 for w in ("a", "an", "two", "three", "four", "five"))


def test_some_questions_have_distractors_but_never_objects_questions() -> None:
    """Distractors from other categories appear in some questions; 'objects' questions have none, as in BBH."""
    rng = random.Random(11)
    with_distractors = 0
    for _ in range(500):
        example = generate_object_counting(rng)
        items, asked = read_items(example.input)
        others = [item for item in items if item[2] != asked]
        if asked == "objects":
            assert not others
        with_distractors += bool(others)
    assert 50 < with_distractors < 400


def test_generated_object_counting_is_calibrated_to_bbh() -> None:
    """Over 2,000 questions the answers average about 8.3 and about 18% list distractors, as BBH's file does."""
    rng = random.Random(20)
    answers, with_distractors = [], 0
    for _ in range(2000):
        category, listed = draw_listing(rng)
        answers.append(sum(count for item, count in listed if item.category == category))
        with_distractors += any(item.category != category for item, _ in listed)
    assert abs(sum(answers) / len(answers) - 8.3) < 0.35
    assert abs(with_distractors / 2000 - 0.18) < 0.03


def test_items_are_distinct_within_a_question() -> None:
    """A noun is listed once per question, its quantity carried by the number word."""
    rng = random.Random(3)
    for _ in range(300):
        items, _ = read_items(generate_object_counting(rng).input)
        nouns = [noun for noun, _, _ in items]
        assert len(nouns) == len(set(nouns))


def test_two_items_are_joined_with_a_comma_and() -> None:
    """BBH writes 'a car, and a toaster' even for two items."""
    car, toaster = (next(i for i in items_in("objects") if i.singular == n) for n in ("car", "toaster"))
    assert render([(car, 1), (toaster, 1)], "objects") == REAL_OBJECT_COUNTING[1][0]
    with pytest.raises(ValueError, match="count"):
        car.phrase(6)


def test_the_module_vocabulary_is_bbh_vocabulary() -> None:
    """Every noun the generator can write is one the test's BBH reading knows, in its category."""
    for category in ("fruits", "vegetables", "animals", "musical instruments", "objects"):
        for item in items_in(category):
            assert NOUNS[item.singular] == category
            assert NOUNS[item.plural] == category


@given(seed=st.integers())
@settings(max_examples=200)
def test_any_seed_gives_a_well_formed_counting_question(seed: int) -> None:
    """Property: for every seed, the question parses and its target is the asked count."""
    example = generate_object_counting(random.Random(seed))
    assert example.target == str(count_asked(example.input))


def test_generated_arithmetic_has_bbh_format_and_right_targets() -> None:
    """Operands in -9..9 (negatives present), operators + - *, target = ordinary precedence."""
    rng = random.Random(5)
    operands: Counter[int] = Counter()
    outer: Counter[str] = Counter()
    for _ in range(600):
        example = generate_arithmetic(rng)
        match = ARITHMETIC_RE.match(example.input)
        assert match is not None, example.input
        assert example.target == str(safe_eval(example.input))
        assert example.category == match.group(8) == outer_operator(example.input)
        operands.update(int(match.group(i)) for i in (1, 3, 5, 7, 9, 11, 13, 15))
        outer[match.group(8)] += 1
    assert set(operands) == set(range(-9, 10))
    assert set(outer) == {"+", "-", "*"}
    assert any(int(generate_arithmetic(random.Random(s)).target) < 0 for s in range(50))


@given(seed=st.integers())
def test_any_seed_gives_a_well_formed_arithmetic_question(seed: int) -> None:
    """Property: for every seed the expression matches BBH and its target is exact."""
    example = generate_arithmetic(random.Random(seed))
    assert ARITHMETIC_RE.match(example.input)
    assert int(example.target) == safe_eval(example.input)


@given(
    operands=st.lists(st.integers(-9, 9), min_size=1, max_size=8).flatmap(
        lambda xs: st.tuples(st.just(xs), st.lists(st.sampled_from("+-*"), min_size=len(xs) - 1,
                                                     max_size=len(xs) - 1))
    )
)
def test_evaluate_matches_python_precedence(operands: tuple[list[int], list[str]]) -> None:
    """Property: the module's evaluator agrees with Python on any + - * chain."""
    values, ops = operands
    text = " ".join([str(values[0]), *(f"{o} {v}" for o, v in zip(ops, values[1:], strict=True))])
    assert evaluate(values, ops) == safe_eval(text)


@pytest.mark.parametrize("task", ["object_counting", "multistep_arithmetic_two", "word_problems"])
def test_splits_are_disjoint_sized_and_deterministic(task: str) -> None:
    """Same seed, same splits; no input in two splits; sizes as asked."""
    splits = generate_splits(task, 3, 40, 30, 50)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 30, 50)
    inputs = [e.input for e in (*splits.train, *splits.val, *splits.test)]
    assert len(inputs) == len(set(inputs))
    assert generate_splits(task, 3, 40, 30, 50) == splits
    assert generate_splits(task, 4, 40, 30, 50) != splits
    assert splits.tasks() == frozenset({task})


@given(seed=st.integers(0, 2**32), sizes=st.tuples(st.integers(0, 15), st.integers(0, 15), st.integers(0, 15)))
@settings(max_examples=40, deadline=None)
def test_any_sizes_give_disjoint_splits(seed: int, sizes: tuple[int, int, int]) -> None:
    """Property: for any seed and sizes, splits have the asked sizes and share no input."""
    splits = generate_splits("multistep_arithmetic_two", seed, *sizes)
    assert (len(splits.train), len(splits.val), len(splits.test)) == sizes
    inputs = {e.input for e in (*splits.train, *splits.val, *splits.test)}
    assert len(inputs) == sum(sizes)


def few_questions(rng: random.Random) -> Example:
    """A generator with only ten questions, so repeats are certain."""
    n = rng.randint(0, 9)
    return Example(input=f"q{n}", target=str(n), task="tiny")


def test_repeated_draws_are_skipped() -> None:
    """Drawing all ten questions of a tiny space gives each once; an eleventh cannot be drawn."""
    drawn = draw_distinct(few_questions, random.Random(0), 10)
    assert sorted(e.input for e in drawn) == [f"q{n}" for n in range(10)]
    with pytest.raises(ValueError, match="only draw 10 distinct"):
        draw_distinct(few_questions, random.Random(0), 11)


def test_zero_sizes_give_empty_splits() -> None:
    """Asking for nothing is allowed and gives nothing."""
    assert generate_splits("object_counting", 1, 0, 0, 0) == Splits(train=(), val=(), test=())


def test_bad_arguments_are_refused() -> None:
    """Unknown tasks, negative sizes and non-integer seeds raise ValueError naming the problem."""
    with pytest.raises(ValueError, match="unknown task"):
        generate_splits("word_sorting", 0, 1, 1, 1)
    with pytest.raises(ValueError, match="val"):
        generate_splits("object_counting", 0, 1, -1, 1)
    with pytest.raises(ValueError, match="seed"):
        generate_splits("object_counting", 1.5, 1, 1, 1)  # type: ignore[arg-type]


def test_example_and_splits_check_their_fields() -> None:
    """Empty text and non-tuple splits are refused at construction."""
    with pytest.raises(ValueError, match="input"):
        Example(input=" ", target="1", task="t")
    with pytest.raises(ValueError, match="category"):
        Example(input="q", target="1", task="t", category="")
    ok = Example(input="q", target="1", task="t")
    with pytest.raises(ValueError, match="train"):
        Splits(train=[ok], val=(), test=())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"test\[0\]"):
        Splits(train=(), val=(), test=("q",))  # type: ignore[arg-type]


def test_the_tasks_package_is_pure() -> None:
    """Importing fedbus.tasks in a fresh interpreter pulls in no I/O or third-party library."""
    forbidden = ["asyncio", "aiomqtt", "paho", "aiohttp", "structlog", "textgrad", "yaml", "socket", "threading"]
    code = f"import sys, fedbus.tasks; print(','.join(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
