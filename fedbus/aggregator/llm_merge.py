"""The LLM aggregators of FedTextGrad, as pure prompt builders and reply parsers.

The paper's, word for word from the authors' code (ubc-tea/FedTextGrad, ``utils/prompt_template.py`` and
``train_hetero_fed.py``): the clients' prompts joined by newlines go into the template, the template goes to
the engine as the user message under TextGrad's default system prompt (the authors call the engine without
one), and the answer-format instruction is appended to the reply by code, with no separator:

- ``summarize``: "Merge the following list of prompts into a single, cohesive prompt while preserving all
  original information. ..."
- ``uid_summarize``: the same with one more sentence, "Apply Uniform Information Density Principles."

fedbus's own variants, which ask for more and parse a tagged reply:

- ``summarize_tagged``: merge keeping every distinct instruction, the format instruction last, the reply
  between ``<MERGED_PROMPT>`` tags.
- ``uid_guided``: what the Uniform Information Density principle asks of a text spelled out as five rules,
  with a length budget of twice the longest client prompt (so it also compresses).

The runtime sends the request to the engine (an effect carried out at the edge) and hands the reply to
:func:`merged_prompt`; an unusable reply is an outcome (the runtime falls back to ``concat`` and records it),
never an exception. :func:`sentence_overlap` is a lexical figure: the share of the clients' sentences that
reappear nearly verbatim in the global prompt (it does not judge whether their content survived).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fedbus.aggregator.strategies import LLM_STRATEGIES, PAPER_LLM_STRATEGIES, sentences

# The authors' templates (their ``$prompt`` is the prompts joined by newlines), their format line, and the
# system prompt their engine call ran under (TextGrad engines' DEFAULT_SYSTEM_PROMPT).
PAPER_SUMMARIZE = (
    "\nMerge the following list of prompts into a single, cohesive prompt while preserving all original "
    "information. Ensure that the final instruction remains unchanged and is placed as the last sentence. "
    "Provide only the merged prompt.\n\nList of Prompts to Merge:\n{prompts}\n")
PAPER_UID = (
    "\nMerge the following list of prompts into a single, cohesive prompt while preserving all original "
    "information. Apply Uniform Information Density Principles. Ensure that the final instruction remains "
    "unchanged and is placed as the last sentence. Provide only the merged prompt.\n\n"
    "List of Prompts to Merge:\n{prompts}\n")
FORMAT_LINE = ("The last line of your response should be of the following format: 'Answer: $VALUE' where VALUE "
               "is a numerical value.")
PAPER_SYSTEM = "You are a helpful, creative, and smart assistant."

OPEN, CLOSE = "<MERGED_PROMPT>", "</MERGED_PROMPT>"

SYSTEM = ("You merge system prompts written for the same question-answering task by several "
          "collaborators into one system prompt. You never answer the task yourself.")

_SUMMARIZE = """Below are {n} system prompts that different clients wrote for the same kind of reasoning question.
Merge them into ONE system prompt that preserves all of their information: every distinct instruction,
strategy and constraint must be kept. Remove only exact repetitions. The instruction on the format of the
final answer (for example "The last line of your response should be 'Answer: $VALUE'") must come LAST,
copied word for word: the answers are parsed by it.

{prompts}

Reply with the merged prompt between {open} and {close}, and nothing else."""

_UID = """Below are {n} system prompts that different clients wrote for the same kind of reasoning question.
Merge them into ONE system prompt following the Uniform Information Density principle: a reader
understands a text best when information is spread evenly over it, without dense passages that
pack many ideas together and without padding that repeats what was already said. Concretely:
1. Collect every distinct strategy, instruction and constraint across the prompts; keep each exactly once,
   worded once, even if several prompts say it differently.
2. Drop repetition, filler and meta-commentary.
3. Give each strategy its own short sentence, ordered as the steps of solving the question; do not merge
   several ideas into one long sentence, and do not split one idea over several sentences.
4. Stay within {budget} characters.
5. End with the instruction on the format of the final answer, copied word for word (for example
   "The last line of your response should be 'Answer: $VALUE'"): the answers are parsed by it.

{prompts}

Reply with the merged prompt between {open} and {close}, and nothing else."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeRequest:
    """One LLM call: the system and user messages."""

    system: str
    prompt: str
    paper: bool = False  # the authors' template: the reply is the prompt, the format line appended by code


@dataclass(frozen=True, slots=True, kw_only=True)
class Merged:
    """A parsed reply: the merged prompt, or ``None`` and why not."""

    prompt: str | None
    problem: str = ""  # missing-tags | empty | truncated


def merge_request(strategy: str, prompts: Sequence[tuple[str, str]], max_chars: int) -> MergeRequest:
    """The request for ``strategy`` over (client, prompt) pairs; ``KeyError`` for another strategy."""
    if strategy not in LLM_STRATEGIES:
        raise KeyError(f"{strategy!r} is not an LLM strategy; known: {', '.join(LLM_STRATEGIES)}")
    if strategy in PAPER_LLM_STRATEGIES:
        template = PAPER_SUMMARIZE if strategy == "summarize" else PAPER_UID
        joined = "\n".join(text for _c, text in prompts)
        return MergeRequest(system=PAPER_SYSTEM, prompt=template.format(prompts=joined), paper=True)
    listed = "\n\n".join(f"<PROMPT {i}>\n{text.strip()}\n</PROMPT {i}>" for i, (_c, text) in enumerate(prompts, 1))
    template = _SUMMARIZE if strategy == "summarize_tagged" else _UID
    budget = max(200, min(max_chars, max((len(p) for _c, p in prompts), default=0) * 2))
    return MergeRequest(system=SYSTEM, prompt=template.format(n=len(prompts), prompts=listed, open=OPEN,
                                                              close=CLOSE, budget=budget))


def merge_inputs(current: str, prompts: Sequence[tuple[str, str]],
                 weights: Sequence[float] = ()) -> tuple[tuple[str, str], ...]:
    """The prompts an LLM merge is given. In sync mode the round's updates, as the paper merges them. In buffered
    and async mode (``weights`` given) an update is a change to a global prompt the others never saw, so the
    current global prompt comes first, then the updates (an LLM cannot apply a numeric staleness weight: it is
    recorded, and updates past ``max_staleness`` were rejected before they got here)."""
    if not weights:
        return tuple(prompts)
    return (("global", current), *prompts)


def merged_prompt(request: MergeRequest, reply: str, format_line: str = FORMAT_LINE, *,
                  truncated: bool = False) -> Merged:
    """The global prompt a reply to ``request`` gives: the authors' way (the reply as it came, then the format
    line, no separator; an empty reply is unusable), or fedbus's tagged way (:func:`parse_merged`). A reply the
    server cut at max_tokens (``truncated``) is unusable either way: it lost the end of the merged prompt."""
    if truncated:
        return Merged(prompt=None, problem="truncated")
    if not request.paper:
        return parse_merged(reply)
    if not reply.strip():
        return Merged(prompt=None, problem="empty")
    return Merged(prompt=reply + format_line)


def parse_merged(reply: str) -> Merged:
    """The text between the tags (the last complete pair); tolerant of markdown fences around it."""
    start = reply.rfind(OPEN)
    end = reply.find(CLOSE, start + len(OPEN)) if start >= 0 else -1
    if start < 0 or end < 0:
        return Merged(prompt=None, problem="missing-tags")
    text = reply[start + len(OPEN):end].strip().strip("`").strip()
    if not text:
        return Merged(prompt=None, problem="empty")
    return Merged(prompt=text)


_WORD = re.compile(r"[a-z0-9$']+")


@functools.lru_cache(maxsize=4096)  # a round's clients often send the same sentences, and rounds repeat them
def instructions(prompt: str) -> tuple[str, ...]:
    """The prompt's distinct instructions: its sentences, normalized (lower case, words only), deduplicated."""
    seen: dict[str, None] = {}
    for sentence in sentences(prompt):
        words = " ".join(_WORD.findall(sentence.lower()))
        if words:
            seen.setdefault(words, None)
    return tuple(seen)


def _similar(a: str, b: str, threshold: float) -> bool:
    sa, sb = set(a.split()), set(b.split())
    return bool(sa and sb) and len(sa & sb) / len(sa | sb) >= threshold


def sentence_overlap(client_prompts: Sequence[str], global_prompt: str, threshold: float = 0.6) -> float:
    """The share of the clients' distinct sentences that reappear nearly verbatim in ``global_prompt``.

    A sentence reappears when some sentence of the global prompt shares at least ``threshold`` of its words
    (Jaccard similarity of word sets). Lexical only: a faithful paraphrase scores low and a prompt that kept
    the clients' wording but dropped their point scores high; concatenation always scores 1.0. 1.0 when the
    clients sent nothing.
    """
    wanted: dict[str, None] = {}
    for prompt in client_prompts:
        for instruction in instructions(prompt):
            wanted.setdefault(instruction, None)
    if not wanted:
        return 1.0
    kept = instructions(global_prompt)
    return sum(any(_similar(w, k, threshold) for k in kept) for w in wanted) / len(wanted)
