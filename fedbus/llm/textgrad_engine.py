"""FedTextGrad's local step, and the only module that imports textgrad.

textgrad misbehaves at import and at run time in ways this module contains:

- at import it writes a log file into ``./logs`` (``TEXTGRAD_LOG_DIR``): we point it into the run
  directory before the first import, and move its file handler when a later run asks for another;
- litellm, which textgrad imports, fetches a price table from the network at import unless
  ``LITELLM_LOCAL_MODEL_COST_MAP`` is set: we set it first;
- it keeps a process-wide backward engine: we never set it and pass our engine to every call;
- its optimizer indexes the reply with ``split("<IMPROVED_VARIABLE>")[1]``, an ``IndexError`` when a
  model ignores the tags: the step keeps the old prompt and says why.

Our engines reach textgrad as ``EngineLM``s wrapping a synchronous ``chat(prompt, system)``, one per role
(:class:`StepChats`: the forward pass, the backward pass's feedback, the optimizer's update, as TextGrad
separates them; one ``chat`` serves all three where they share an engine); the caller runs :func:`local_step`
in a worker thread and bridges each ``chat`` to its async engine, so clients in one process optimize
concurrently. Nothing here keeps state between calls.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from fedbus.errors import EngineError
from fedbus.llm.extras import not_installed
from fedbus.llm.judge import JUDGE_INSTRUCTION, JUDGE_SYSTEM, PARSE_TAGS, ROLE_DESCRIPTIONS, judge_prompt, verdict

SyncChat = Callable[[str, "str | None"], str]
ROLE = ("structured system prompt to a somewhat capable language model that specifies the behavior and "
        "strategies for the QA task")
_IMPORT_LOCK = threading.Lock()
_LOG_FILE = "textgrad.jsonl"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepChats:
    """The chat of each role a local step uses: ``forward`` answers the questions under the prompt (and
    re-checks the new prompt), ``backward`` writes TextGrad's feedback, ``optimizer`` rewrites the prompt."""

    forward: SyncChat
    backward: SyncChat
    optimizer: SyncChat
    judge: SyncChat | None = None  # grades the answers (task.grader: judge): the loss is the authors' LLM judge

    @classmethod
    def one(cls, chat: SyncChat) -> StepChats:
        return cls(forward=chat, backward=chat, optimizer=chat)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepOutcome:
    """One local step: the prompt it leaves, whether it changed, why, and what it cost."""

    prompt: str
    accepted: bool
    reason: str  # improved | no-drop | perfect-batch | reverted-accuracy-dropped | optimizer-missing-tags |
    #             reverted-no-improvement (strict) | optimizer-empty-reply | optimizer-empty-prompt |
    #             engine-error: ...
    acc_before: float
    acc_after: float
    llm_calls: int


def load_textgrad(log_dir: Path | None = None) -> ModuleType:
    """Import textgrad with its side effects contained; its log goes to ``log_dir/textgrad.jsonl``."""
    with _IMPORT_LOCK:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        first = "textgrad" not in sys.modules
        if first:
            os.environ["TEXTGRAD_LOG_DIR"] = str(log_dir or Path(os.environ.get("TMPDIR", "/tmp")) / "fedbus-textgrad")
        try:
            import textgrad
        except ModuleNotFoundError as exc:
            if exc.name != "textgrad":
                raise
            raise EngineError(not_installed("textgrad")) from exc

        textgrad.logger.propagate = False  # its INFO records go to its own file, not to our console
        if log_dir is not None:
            _log_into(textgrad.logger, log_dir)
        module: ModuleType = textgrad
        return module


def _log_into(logger: logging.Logger, log_dir: Path) -> None:
    target = (log_dir / _LOG_FILE).resolve()
    handlers = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    if any(Path(h.baseFilename) == target for h in handlers):
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(target)
    if handlers:
        handler.setFormatter(handlers[0].formatter)
    for old in handlers:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)


class _InValueOrder(set):  # type: ignore[type-arg]
    """textgrad keeps a variable's gradients in a set of objects hashed by id, so the optimizer's prompt
    lists the feedback in a different order on every run and a rerun misses the response cache.
    Iterating in order of the feedback text, then of the context it was given for (the question and answer it
    criticizes: two questions can get the same feedback), makes the prompt, and so the cache key, repeatable."""

    def __init__(self, gradients: Iterable[Any], context: Mapping[Any, Any]) -> None:
        super().__init__(gradients)
        self._context = context

    def __iter__(self) -> Iterator[Any]:
        return iter(sorted(set.__iter__(self),
                           key=lambda gradient: (str(gradient.value), str(self._context.get(gradient)))))


class _Calls:
    """Counts the calls one step makes, whatever the role, and remembers the last reply (to tell an empty
    optimizer reply from a tagless one)."""

    def __init__(self) -> None:
        self.count = 0
        self.last_reply = ""

    def counted(self, chat: SyncChat) -> SyncChat:
        def call(prompt: str, system: str | None) -> str:
            self.count += 1
            self.last_reply = chat(prompt, system)
            return self.last_reply
        return call


def _engine(tg: ModuleType, calls: SyncChat) -> Any:
    class FedbusEngine(tg.EngineLM):  # type: ignore[misc, name-defined]
        """textgrad's view of our engine: every generate() is one chat call."""

        model_string = "fedbus"
        system_prompt = "You are a helpful, creative, and smart assistant."

        def generate(self, prompt: Any, system_prompt: str | None = None, **kwargs: Any) -> str:
            if not isinstance(prompt, str):
                raise EngineError("fedbus engines take text prompts only")
            return calls(prompt, system_prompt or self.system_prompt)

        def __call__(self, prompt: Any, **kwargs: Any) -> str:
            return self.generate(prompt, **kwargs)

    return FedbusEngine()


def local_step(prompt: str, batch: Sequence[tuple[str, str]], chat: SyncChat | StepChats,
               is_correct: Callable[[str, str], bool], *, strict: bool = False, step_on_perfect_batch: bool = False,
               log_dir: Path | None = None) -> StepOutcome:
    """One FedTextGrad local step on ``batch`` (question, target) pairs; never raises for a model's mistakes.

    Forward every question with ``prompt`` as the system prompt, score the replies, backpropagate
    textual feedback to the prompt, let TextGrad's optimizer rewrite it, then answer the same
    questions with the new prompt. Keep the new prompt if batch accuracy did not drop (``strict``:
    only if it rose, or the batch is now perfect); otherwise revert.

    A batch answered all right is not stepped on (``perfect-batch``: it saves the 2B feedback calls, the
    update and the B re-check answers of a batch of B) unless ``step_on_perfect_batch``, as the authors'
    code does. ``chat``: one chat for every role, or :class:`StepChats`. With a ``judge`` chat the answers are
    graded, and the loss computed, by the authors' LLM judge (TextGrad's ``MultiFieldTokenParsedEvaluation``)
    instead of ``is_correct``: B more calls forward and B more in the re-check.
    """
    if not batch:
        raise ValueError("local_step needs at least one (question, target) pair")
    tg = load_textgrad(log_dir)
    from textgrad.autograd.string_based_ops import StringBasedFunction
    from textgrad.config import SingletonBackwardEngine

    if SingletonBackwardEngine().get_engine() is not None:  # backward(engine) would raise a bare Exception
        raise EngineError("textgrad's global backward engine is set in this process; fedbus passes its engine "
                          "explicitly and cannot run beside it")

    chats = chat if isinstance(chat, StepChats) else StepChats.one(chat)
    calls = _Calls()
    forward = calls.counted(chats.forward)
    backward_engine = _engine(tg, calls.counted(chats.backward))
    variable = tg.Variable(prompt, requires_grad=True, role_description=ROLE)
    model = tg.BlackboxLLM(_engine(tg, forward), system_prompt=variable)
    optimizer = tg.TextualGradientDescent(engine=_engine(tg, calls.counted(chats.optimizer)), parameters=[variable])

    def equality(prediction: Any, ground_truth_answer: Any) -> int:
        return int(is_correct(str(prediction.value), str(ground_truth_answer.value)))

    check = StringBasedFunction(equality, function_purpose="The runtime of string-based function that checks if "
                                                           "the prediction is correct.")
    judge = None if chats.judge is None else calls.counted(chats.judge)
    judged = None
    if judge is not None:
        from textgrad.loss import MultiFieldTokenParsedEvaluation

        instruction = tg.Variable(JUDGE_INSTRUCTION, requires_grad=False,
                                  role_description="evaluation instruction for the task")
        judged = MultiFieldTokenParsedEvaluation(instruction, engine=_engine(tg, judge),
                                                 role_descriptions=list(ROLE_DESCRIPTIONS), parse_tags=list(PARSE_TAGS))

    def graded(question: str, target: str, reply: str) -> bool:  # the re-check's grading
        if judge is None:
            return is_correct(reply, target)
        return verdict(judge(judge_prompt(question, target, reply), JUDGE_SYSTEM)) is True

    def outcome(new: str, accepted: bool, reason: str, before: float, after: float) -> StepOutcome:
        return StepOutcome(prompt=new, accepted=accepted, reason=reason, acc_before=before, acc_after=after,
                           llm_calls=calls.count)

    before = 0.0
    try:
        losses, right = [], []
        for question, target in batch:
            x = tg.Variable(question, requires_grad=False, role_description="question to the language model")
            y = tg.Variable(target, requires_grad=False, role_description="correct answer for the question")
            response = model(x)
            if judged is None:
                right.append(is_correct(str(response.value), target))
                losses.append(check(inputs={"prediction": response, "ground_truth_answer": y}))
            else:
                loss = judged([x, y, response])
                right.append(verdict(str(loss.value)) is True)
                losses.append(loss)
        before = sum(right) / len(right) if right else 0.0
        if right and all(right) and not step_on_perfect_batch:
            return outcome(prompt, False, "perfect-batch", before, before)
        tg.sum(losses).backward(backward_engine)
        variable.gradients = _InValueOrder(variable.gradients, variable.gradients_context)
        try:
            optimizer.step()
        except IndexError:  # only the optimizer's reply parsing: a bug elsewhere must not read as a model's mistake
            reason = "optimizer-empty-reply" if not calls.last_reply.strip() else "optimizer-missing-tags"
            return outcome(prompt, False, reason, before, before)
    except EngineError as exc:
        return outcome(prompt, False, f"engine-error: {str(exc)[:200]}", before, before)
    new_prompt = str(variable.value).strip()
    if not new_prompt:
        return outcome(prompt, False, "optimizer-empty-prompt", before, before)
    try:
        after_right = [graded(question, target, forward(question, new_prompt)) for question, target in batch]
    except EngineError as exc:
        return outcome(prompt, False, f"engine-error: {str(exc)[:200]}", before, before)
    after = sum(after_right) / len(after_right)
    improved = after > before or after == 1.0
    if improved or (not strict and after >= before):
        return outcome(new_prompt, True, "improved" if after > before else "no-drop", before, after)
    return outcome(prompt, False, "reverted-accuracy-dropped" if after < before else "reverted-no-improvement",
                   before, after)
