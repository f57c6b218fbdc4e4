"""A seeded generator of BIG-Bench Hard ``object_counting`` questions.

The phrasing follows the BBH file exactly: "I have a flute, a piano, and two violins. How many
musical instruments do I have?" Items are joined with ", " and the last one with ", and " (BBH
writes the comma even for two items: "I have a car, and a toaster."). A quantity of one is
"a"/"an", larger ones are "two" to "five". The vocabulary is BBH's own. Some questions list
distractors from other categories, which the target does not count; a question about
"objects" never has distractors, as in BBH (any thing is an object). Calibrated to BBH's file: the
answers average about 8.3 and about 18% of the questions list distractors (tests/unit/test_tasks_generators.py).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fedbus.tasks.example import Example

TASK = "object_counting"
CATEGORIES: tuple[str, ...] = ("fruits", "vegetables", "animals", "musical instruments", "objects")
NUMBER_WORDS: tuple[str, ...] = ("two", "three", "four", "five")
MAX_COUNT = 1 + len(NUMBER_WORDS)

# BBH's object_counting: mean answer 8.3, distractors in 18% of the questions (9.8 and 25% before calibration)
_SINGLE_P = 0.785  # chance that an item is listed once ("a flute"), as most BBH items are
_DISTRACTOR_P = 0.225  # chance that a question not about "objects" (4 in 5) lists items from other categories
_MAX_DISTRACTORS = 3
_MIN_ITEMS = 2
_MAX_ITEMS = 9


@dataclass(frozen=True, slots=True, kw_only=True)
class Item:
    """One countable noun of the BBH vocabulary."""

    singular: str
    plural: str
    category: str

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown category {self.category!r}")
        if not self.singular or not self.plural:
            raise ValueError("an item needs a singular and a plural")

    def phrase(self, count: int) -> str:
        """``a yam``, ``an apple``, ``three heads of broccoli``."""
        if count == 1:
            article = "an" if self.singular[0] in "aeiou" else "a"
            return f"{article} {self.singular}"
        if not 2 <= count <= MAX_COUNT:
            raise ValueError(f"count must be within [1, {MAX_COUNT}], got {count}")
        return f"{NUMBER_WORDS[count - 2]} {self.plural}"


def _items(category: str, *nouns: str | tuple[str, str]) -> tuple[Item, ...]:
    out = []
    for noun in nouns:
        singular, plural = noun if isinstance(noun, tuple) else (noun, noun + "s")
        out.append(Item(singular=singular, plural=plural, category=category))
    return tuple(out)


ITEMS: tuple[Item, ...] = (
    *_items("fruits", "apple", "banana", ("blackberry", "blackberries"), "grape", "nectarine", "orange",
            ("peach", "peaches"), "plum", ("raspberry", "raspberries"), ("strawberry", "strawberries")),
    *_items("vegetables", "cabbage", "carrot", "cauliflower", "garlic", ("head of broccoli", "heads of broccoli"),
            "lettuce head", "onion", ("potato", "potatoes"), ("stalk of celery", "stalks of celery"), "yam"),
    *_items("animals", "bear", "cat", "chicken", "cow", "dog", "donkey", "duck", ("fish", "fish"), "frog", "goat",
            ("mouse", "mice"), "pig", "rabbit", "snail", "snake"),
    *_items("musical instruments", "accordion", "clarinet", "drum", "flute", "piano", "trombone", "trumpet",
            "violin"),
    *_items("objects", "bed", "car", "chair", ("couch", "couches"), "fridge", "lamp", "microwave", "oven", "stove",
            "table", "toaster"),
)


def items_in(category: str) -> tuple[Item, ...]:
    """The vocabulary of one category."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    return tuple(item for item in ITEMS if item.category == category)


def _count(rng: random.Random) -> int:
    return 1 if rng.random() < _SINGLE_P else rng.randint(2, MAX_COUNT)


def render(listed: Sequence[tuple[Item, int]], category: str) -> str:
    """The BBH question for items with their counts, in the given order."""
    if not listed:
        raise ValueError("a question lists at least one item")
    phrases = [item.phrase(count) for item, count in listed]
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + ", and " + phrases[-1]
    return f"I have {body}. How many {category} do I have?"


def draw_listing(rng: random.Random) -> tuple[str, tuple[tuple[Item, int], ...]]:
    """The asked category and the listed items with their counts, in the order the question lists them."""
    category = rng.choice(CATEGORIES)
    pool = items_in(category)
    asked = rng.sample(pool, rng.randint(_MIN_ITEMS, min(_MAX_ITEMS, len(pool))))
    listed = [(item, _count(rng)) for item in asked]
    if category != "objects" and rng.random() < _DISTRACTOR_P:
        others = [item for item in ITEMS if item.category != category]
        listed += [(item, _count(rng)) for item in rng.sample(others, rng.randint(1, _MAX_DISTRACTORS))]
    rng.shuffle(listed)
    return category, tuple(listed)


def generate_object_counting(rng: random.Random) -> Example:
    """One question; its target counts the listed items of the asked category."""
    category, listed = draw_listing(rng)
    target = sum(count for item, count in listed if item.category == category)
    return Example(input=render(listed, category), target=str(target), task=TASK, category=category)


_ASKED = re.compile(r"How many (.+?) do I have\?\s*$")


def asked_category(question: str) -> str | None:
    """The category a BBH object-counting question asks about, or None if it names none we know."""
    match = _ASKED.search(question)
    if match is None or match.group(1) not in CATEGORIES:
        return None
    return match.group(1)
