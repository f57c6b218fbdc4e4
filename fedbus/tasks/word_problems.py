"""A seeded generator of GSM8K-style word problems, for offline runs: ``word_problems``. Generated, NOT GSM8K.

Multi-step grade-school arithmetic stories (two to four steps of + - * /), each with a whole-number
answer, written in the spirit of GSM8K but drawn from a handful of templates here: a model's score on
them says nothing about its GSM8K score. For the real data set give ``task.source`` a GSM8K folder
(task ``gsm8k``). :func:`worked_solution` writes the reasoning in GSM8K's answer style
(``3 * 4 = <<3*4=12>>12`` steps and a last ``#### 12`` line), so a generated set can also be saved
as GSM8K-format JSONL and read back by the GSM8K loader. ``Example.category`` is the template.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from fedbus.tasks.example import Example

TASK = "word_problems"
NAMES: tuple[tuple[str, str], ...] = (  # (name, pronoun)
    ("Ava", "she"), ("Ben", "he"), ("Carla", "she"), ("Diego", "he"), ("Emma", "she"), ("Farid", "he"),
    ("Grace", "she"), ("Hiro", "he"), ("Isla", "she"), ("Jamal", "he"), ("Keiko", "she"), ("Liam", "he"),
    ("Maya", "she"), ("Noah", "he"), ("Olivia", "she"), ("Pedro", "he"), ("Quinn", "she"), ("Ravi", "he"),
    ("Sofia", "she"), ("Tomas", "he"), ("Uma", "she"), ("Victor", "he"), ("Wendy", "she"), ("Yusuf", "he"),
)
GOODS: tuple[tuple[str, str], ...] = (  # (singular, plural)
    ("notebook", "notebooks"), ("pencil case", "pencil cases"), ("sandwich", "sandwiches"), ("ticket", "tickets"),
    ("plant", "plants"), ("T-shirt", "T-shirts"), ("puzzle", "puzzles"), ("mug", "mugs"), ("kite", "kites"),
)
TREATS: tuple[str, ...] = ("cookies", "muffins", "cupcakes", "brownies", "pretzels", "dumplings")
THINGS: tuple[str, ...] = ("marbles", "stickers", "stamps", "seashells", "trading cards", "beads")
PETS: tuple[tuple[str, int], ...] = (("cows", 4), ("sheep", 4), ("goats", 4), ("pigs", 4))
BIRDS: tuple[str, ...] = ("chickens", "ducks", "geese", "turkeys")
FRACTIONS: tuple[tuple[str, int], ...] = (("half", 2), ("third", 3), ("quarter", 4), ("fifth", 5))


EXTRAS: tuple[str, ...] = ("backpack", "water bottle", "lunch box", "scarf", "cap")

Step = tuple[str, int, str]  # (expression as written, its value, what it computes)


@dataclass(frozen=True, slots=True, kw_only=True)
class WordProblem:
    """A generated problem: its text, its worked steps and its whole-number answer."""

    question: str
    steps: tuple[Step, ...]
    answer: int
    template: str

    def __post_init__(self) -> None:
        if not self.steps or self.steps[-1][1] != self.answer:
            raise ValueError("the last step must compute the answer")
        if self.answer < 0:
            raise ValueError(f"a word problem's answer is a whole number, got {self.answer}")


def _pronouns(pronoun: str) -> tuple[str, str]:
    """(subject capitalised, reflexive): ('She', 'herself')."""
    return pronoun.capitalize(), "herself" if pronoun == "she" else "himself"


def _shopping(rng: random.Random) -> WordProblem:
    name, pronoun = rng.choice(NAMES)
    _, many = rng.choice(GOODS)
    extra_item = rng.choice(EXTRAS)
    count, price, extra = rng.randint(2, 9), rng.randint(2, 15), rng.randint(2, 12)
    goods = count * price
    spent = goods + extra
    bill = next(b for b in (20, 50, 100, 200) if b > spent)
    steps = ((f"{count} * {price}", goods, f"The {many} cost"), (f"{goods} + {extra}", spent, "In all it costs"),
             (f"{bill} - {spent}", bill - spent, "The change is"))
    question = (f"{name} buys {count} {many} for ${price} each and a {extra_item} for ${extra}. "
                f"{_pronouns(pronoun)[0]} pays with a ${bill} bill. How many dollars of change does {pronoun} get?")
    return WordProblem(question=question, steps=steps, answer=bill - spent, template="shopping")


def _sharing(rng: random.Random) -> WordProblem:
    name, pronoun = rng.choice(NAMES)
    treat = rng.choice(TREATS)
    friends, each, trays = rng.randint(2, 8), rng.randint(2, 9), rng.randint(2, 5)
    kept = rng.randint(1, 12)
    kept += -(friends * each + kept) % trays  # the trays come out even
    per_tray = (friends * each + kept) // trays
    baked = trays * per_tray
    steps = ((f"{trays} * {per_tray}", baked, f"{name} bakes"), (f"{baked} - {kept}", baked - kept, "Left to share"),
             (f"{baked - kept} / {friends}", each, "Each friend gets"))
    subject, self_ = _pronouns(pronoun)
    question = (f"{name} bakes {trays} trays of {per_tray} {treat}. {subject} keeps {kept} for {self_} and "
                f"shares the rest equally among {friends} friends. How many {treat} does each friend get?")
    return WordProblem(question=question, steps=steps, answer=each, template="sharing")


def _wages(rng: random.Random) -> WordProblem:
    name, pronoun = rng.choice(NAMES)
    wage, hours, weeks = rng.randint(8, 25), rng.randint(3, 20), rng.randint(2, 6)
    weekly = wage * hours
    earned = weekly * weeks
    spent = rng.randint(10, earned - 1)
    steps = ((f"{wage} * {hours}", weekly, "A week's pay is"), (f"{weekly} * {weeks}", earned, "Over the weeks"),
             (f"{earned} - {spent}", earned - spent, "Left after the purchase"))
    question = (f"{name} earns ${wage} an hour and works {hours} hours a week. After {weeks} weeks "
                f"{pronoun} spends ${spent} on a bike. How many dollars does {pronoun} have left?")
    return WordProblem(question=question, steps=steps, answer=earned - spent, template="wages")


def _farm(rng: random.Random) -> WordProblem:
    name, _ = rng.choice(NAMES)
    animals, legs = rng.choice(PETS)
    birds = rng.choice(BIRDS)
    count, times = rng.randint(2, 30), rng.randint(2, 5)
    flock = count * times
    steps = ((f"{count} * {times}", flock, f"There are {birds}"), (f"{count} * {legs}", count * legs,
                                                                  f"The {animals} have"),
             (f"{flock} * 2", flock * 2, f"The {birds} have"),
             (f"{count * legs} + {flock * 2}", count * legs + flock * 2, "In all"))
    question = (f"{name}'s farm has {count} {animals} and {times} times as many {birds}. "
                f"How many legs do the {animals} and {birds} have altogether?")
    return WordProblem(question=question, steps=steps, answer=count * legs + flock * 2, template="farm")


def _fraction(rng: random.Random) -> WordProblem:
    name, pronoun = rng.choice(NAMES)
    thing = rng.choice(THINGS)
    part, denominator = rng.choice(FRACTIONS)
    start, bought = denominator * rng.randint(3, 20), rng.randint(2, 30)
    given = start // denominator
    steps = ((f"{start} / {denominator}", given, "Given away"), (f"{start} - {given}", start - given, "Kept"),
             (f"{start - given} + {bought}", start - given + bought, "Now"))
    question = (f"{name} has {start} {thing}. {_pronouns(pronoun)[0]} gives a {part} of them to a friend and then "
                f"buys {bought} more. How many {thing} does {name} have now?")
    return WordProblem(question=question, steps=steps, answer=start - given + bought, template="fraction")


def _discount(rng: random.Random) -> WordProblem:
    name, pronoun = rng.choice(NAMES)
    _, many = rng.choice(GOODS)
    price, off, count = 20 * rng.randint(1, 10), rng.choice((10, 20, 25, 50)), rng.randint(2, 6)
    cut = price * off // 100  # exact: price is a multiple of 20
    sale = price - cut
    steps = ((f"{price} * {off} / 100", cut, "The discount is"), (f"{price} - {cut}", sale, "The sale price is"),
             (f"{sale} * {count}", sale * count, "For all of them"))
    question = (f"A shop sells {many} for ${price} each. During a sale everything is {off}% off. "
                f"{name} buys {count} {many} in the sale. How many dollars does {pronoun} pay?")
    return WordProblem(question=question, steps=steps, answer=sale * count, template="discount")


def _reading(rng: random.Random) -> WordProblem:
    name, pronoun = rng.choice(NAMES)
    first, days, more, left = rng.randint(5, 30), rng.randint(3, 9), rng.randint(2, 10), rng.randint(10, 120)
    later = first + more
    rest = later * (days - 1)
    total = first + rest + left
    steps = ((f"{first} + {more}", later, "From the second day on, a day's pages"),
             (f"{later} * {days - 1}", rest, f"The other {days - 1} days"),
             (f"{first} + {rest}", first + rest, "Read in all"), (f"{first + rest} + {left}", total, "The book has"))
    question = (f"{name} reads {first} pages of a book on the first day and {more} more pages than that on each of "
                f"the next {days - 1} days. Then {pronoun} still has {left} pages to read. "
                "How many pages does the book have?")
    return WordProblem(question=question, steps=steps, answer=total, template="reading")


TEMPLATES: Mapping[str, Callable[[random.Random], WordProblem]] = MappingProxyType({
    "shopping": _shopping, "sharing": _sharing, "wages": _wages, "farm": _farm, "fraction": _fraction,
    "discount": _discount, "reading": _reading,
})


def generate_word_problem(rng: random.Random) -> WordProblem:
    """One problem with its worked steps, from a template chosen by ``rng``."""
    return TEMPLATES[rng.choice(tuple(TEMPLATES))](rng)


def generate_word_problems(rng: random.Random) -> Example:
    """One generated problem as an :class:`Example` (task ``word_problems``; target: the whole-number answer)."""
    problem = generate_word_problem(rng)
    return Example(input=problem.question, target=str(problem.answer), task=TASK, category=problem.template)


def worked_solution(problem: WordProblem) -> str:
    """The reasoning in GSM8K's answer style: one calculator-annotated line a step, then ``#### ANSWER``."""
    lines = [f"{what}: {expression} = <<{expression.replace(' ', '')}={value}>>{value}."
             for expression, value, what in problem.steps]
    return "\n".join([*lines, f"#### {problem.answer}"])
