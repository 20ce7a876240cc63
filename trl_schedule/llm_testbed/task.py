"""The LLM testbed's verifiable task: addition of two d-digit numbers, written as plain text, scored by exact match.

    >>> from trl_schedule.llm_testbed.task import exact_match_reward, make_dataset
    >>> test = make_dataset(500, split="test", seed=0)   # columns prompt, answer, difficulty, carries
    >>> test[0]["prompt"], test[0]["answer"]             # e.g. ("4821+3390=", 8211)
    >>> exact_match_reward(["12+34="], ["46"], answer=[46])
    [1.0]

Choices, and why:

- **The task.** ``a+b=`` with ``a`` and ``b`` both d-digit numbers (``10**(d-1) <= a, b < 10**d``, ``d`` in
  :data:`LEVELS`). Written the usual way, most significant digit first, the model must emit each digit before the digits
  to its right, so it has to look ahead along the carry chain, and it has to line up digits further apart
  the longer the operands: 1-2 digit sums are learnt quickly, 5-6 digit sums and long carry chains
  (``59999+40001``) last. That is the "partial skill is easy, the last points are hard"
  shape that RL needs, and the accuracy varies strongly from problem to problem (the context heterogeneity a
  James-Stein baseline exploits). Addition was preferred to multiplication (too hard for a tiny model in a
  CPU budget) and to countdown puzzles (many correct answers, a verifier but no single target for SFT).
- **Difficulty** (dataset column ``difficulty``) is d, the number of digits of each operand. Rows of a dataset
  cycle through the levels, so every level has the same number of rows. The column ``carries`` (the number of
  digit positions that carry, 0..d) is recorded too: within a level it is the finer measure of difficulty.
- **Prompt and answer.** The prompt is ``f"{a}+{b}="`` (no spaces, no instruction: the model is trained on
  this format only); the target completion is the decimal sum followed by the end-of-sequence token. The
  dataset column ``answer`` holds the sum as an `int`.
- **Parse rule** (:func:`parse_answer`): skip leading whitespace, then read the longest run of ASCII digits;
  the integer it spells is the answer, and whatever follows the first non-digit is ignored. So ``" 46"``,
  ``"46"``, ``"46 is it"`` all read 46; ``"046"`` reads 46 too (an integer is compared, not a string); ``"4 6"``
  reads 4. A completion that does not start (after whitespace) with a digit, such as ``""``, ``"+46"`` or
  ``"x"``, is *unparsable*. The rule reads the number where a reader would: the arithmetic is scored, the
  decoration is not, and text after the number cannot change it (TRL strips the end-of-sequence token before
  the reward sees the text, and a completion cut at ``max_completion_length`` is read the same way).
- **Reward** (:func:`exact_match_reward`): 1.0 if the parsed answer equals ``answer``, else 0.0; an unparsable
  completion scores **0.0**, not None. It is a wrong answer of the policy, not a failure of the scorer: the
  scorer always knows the verdict. Returning None would make the row unscorable (`ScheduleRLTrainer` and the
  estimators drop NaN rewards from the baseline and give the row advantage 0; TRL's RLOO turns None into NaN
  likewise), so a policy would never be pushed away from garbage, and emitting garbage would even be a way
  to escape negative advantages. With 0 it is an ordinary failure.
- **Held-out split** (:func:`split_of`): a problem belongs to ``"test"`` when a hash (BLAKE2b) of its
  *unordered* operand pair falls in the lowest :data:`HELD_OUT_FRACTION` of the hash range, else to
  ``"train"``. It is a pure function of the problem, so the split is deterministic, the same on every machine
  and never overlaps; ``a+b`` and ``b+a`` always fall in the same split (commutativity cannot leak a test
  problem into training). Every digit pattern still occurs in training; only the pairs are new. At d = 1 the
  test split has only a handful of distinct problems (see :func:`split_of`), so test datasets repeat them.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

LEVELS = (1, 2, 3, 4, 5, 6)
"""Difficulty levels: the number of digits of each operand."""

SPLITS = ("train", "test")
"""The two disjoint splits of the problem set (:func:`split_of`)."""

HELD_OUT_FRACTION = 0.2
"""Fraction of the unordered operand pairs that belong to the ``"test"`` split."""

_ANSWER = re.compile(r"\s*(\d+)")


@dataclass(frozen=True)
class Problem:
    """One addition problem ``a + b`` with two operands of the same number of digits.

    Args:
        a (`int`): First operand (>= 0).
        b (`int`): Second operand (>= 0), with as many digits as `a`.
    """

    a: int
    b: int

    def __post_init__(self):
        for name, value in (("a", self.a), ("b", self.b)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Problem.{name}={value!r}: pass a non-negative int.")
        if len(str(self.a)) != len(str(self.b)):
            raise ValueError(
                f"Problem(a={self.a}, b={self.b}): the operands have {len(str(self.a))} and {len(str(self.b))} "
                "digits; a testbed problem adds two numbers with the same number of digits."
            )

    @property
    def prompt(self) -> str:
        """The prompt text, ``"a+b="``."""
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> int:
        """The sum."""
        return self.a + self.b

    @property
    def completion(self) -> str:
        """The target completion text (the sum in decimal; the tokenizer's end-of-sequence token follows it)."""
        return str(self.answer)

    @property
    def difficulty(self) -> int:
        """The number of digits of each operand (a level of :data:`LEVELS` for sampled problems)."""
        return len(str(self.a))

    @property
    def carries(self) -> int:
        """How many digit positions produce a carry (0 .. difficulty)."""
        return count_carries(self.a, self.b)

    @property
    def split(self) -> str:
        """``"train"`` or ``"test"`` (:func:`split_of`)."""
        return split_of(self.a, self.b)


def count_carries(a: int, b: int) -> int:
    """Number of digit positions of ``a + b`` (written in base 10) that carry into the next position.

    Args:
        a (`int`), b (`int`): Non-negative operands.

    Returns:
        `int`: e.g. 0 for ``12 + 34``, 1 for ``15 + 17``, 3 for ``999 + 1``.
    """
    carries = carry = 0
    while a or b:
        carry = int(a % 10 + b % 10 + carry >= 10)
        carries += carry
        a, b = a // 10, b // 10
    return carries


def split_of(a: int, b: int) -> str:
    """The split a problem belongs to: ``"test"`` for a fixed :data:`HELD_OUT_FRACTION` of the problems.

    The key is the unordered pair ``f"{min(a, b)}+{max(a, b)}"``; its 64-bit BLAKE2b digest divided by
    ``2**64`` is compared with :data:`HELD_OUT_FRACTION`. Deterministic and machine-independent (no Python
    ``hash``). At d = 1 there are 45 unordered pairs, of which 7 (13 ordered problems) are test problems.

    Returns:
        `str`: ``"test"`` or ``"train"``.
    """
    key = f"{min(a, b)}+{max(a, b)}".encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    return "test" if value < HELD_OUT_FRACTION * 2**64 else "train"


def sample_problem(rng: random.Random, difficulty: int, split: str) -> Problem:
    """Draw one problem of the given difficulty, uniformly among that split's problems (by rejection).

    Args:
        rng (`random.Random`): The random source.
        difficulty (`int`): Digits per operand, >= 1.
        split (`str`): ``"train"`` or ``"test"``.

    Returns:
        :class:`Problem`.
    """
    low, high = 10 ** (difficulty - 1), 10**difficulty - 1
    while True:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if split_of(a, b) == split:
            return Problem(a, b)


def sample_problems(n: int, split: str, seed: int = 0, levels: Sequence[int] = LEVELS) -> list[Problem]:
    """`n` problems of one split, the levels balanced: row ``i`` has level ``levels[i % len(levels)]`` before a
    seeded shuffle. Problems are independent draws, so they can repeat (they do at d = 1, whose test split has 13).

    Args:
        n (`int`): Number of problems (>= 1).
        split (`str`): ``"train"`` or ``"test"``.
        seed (`int`): Same seed (and split and levels), same problems.
        levels (`Sequence[int]`): Difficulty levels to draw from (distinct ints >= 1; default :data:`LEVELS`).

    Returns:
        `list` of :class:`Problem`.
    """
    _check_count("n", n, 1)
    split = _check_split(split)
    levels = _check_levels(levels)
    rng = random.Random(f"trl_schedule.llm_testbed/{split}/{seed}")
    order = [levels[i % len(levels)] for i in range(n)]
    rng.shuffle(order)
    return [sample_problem(rng, d, split) for d in order]


def make_dataset(num_problems: int, split: str = "train", seed: int = 0, levels: Sequence[int] = LEVELS):
    """A `datasets.Dataset` of problems of one split, for TRL trainers and for evaluation.

    Args:
        num_problems (`int`): Rows (>= 1).
        split (`str`): ``"train"`` or ``"test"``; the two never share a problem.
        seed (`int`): Same seed, same rows.
        levels (`Sequence[int]`): Difficulty levels, balanced over rows (default :data:`LEVELS`).

    Returns:
        `datasets.Dataset` with columns ``prompt`` (str, e.g. ``"12+34="``), ``answer`` (int), ``difficulty``
        (int, digits per operand) and ``carries`` (int). TRL passes the non-prompt columns to reward
        functions as keyword arguments, so :func:`exact_match_reward` receives ``answer``.
    """
    from datasets import Dataset, Features, Value

    _check_count("num_problems", num_problems, 1)
    problems = sample_problems(num_problems, split, seed, levels)
    features = Features(
        {
            "prompt": Value("string"),
            "answer": Value("int64"),
            "difficulty": Value("int64"),
            "carries": Value("int64"),
        }
    )
    rows = {
        "prompt": [p.prompt for p in problems],
        "answer": [p.answer for p in problems],
        "difficulty": [p.difficulty for p in problems],
        "carries": [p.carries for p in problems],
    }
    return Dataset.from_dict(rows, features=features)


def make_datasets(num_train: int, num_test: int, seed: int = 0, levels: Sequence[int] = LEVELS):
    """Train and test datasets (:func:`make_dataset` for each split, the same seed).

    Returns:
        `datasets.DatasetDict` with splits ``"train"`` and ``"test"``.
    """
    from datasets import DatasetDict

    return DatasetDict(
        {
            "train": make_dataset(num_train, "train", seed, levels),
            "test": make_dataset(num_test, "test", seed, levels),
        }
    )


def completion_text(completion: Any) -> str:
    """Plain text of a TRL completion: a string, or the content of the last message of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(
        f"A completion must be a string or a list of chat messages, got {type(completion).__name__}: "
        f"{completion!r}."
    )


def parse_answer(completion: Any) -> int | None:
    """The integer a completion answers, or None when it is unparsable (the rule is in the module docstring).

    Args:
        completion (`str` or chat messages): Generated text, e.g. ``" 46"``.

    Returns:
        `int` or `None`.
    """
    match = _ANSWER.match(completion_text(completion))
    return int(match.group(1)) if match else None


def exact_match_reward(
    prompts: Any = None, completions: Any = None, answer: Any = None, **kwargs: Any
) -> list[float]:
    """TRL reward function: 1.0 for a completion whose parsed answer equals `answer`, else 0.0 (unparsable: 0.0).

    Pass it as ``reward_funcs=exact_match_reward`` with a dataset from :func:`make_dataset` (TRL passes the
    ``answer`` column).

    Args:
        prompts (`list`, *optional*): The prompts (unused; TRL passes them).
        completions (`list[str]` or chat messages): N completions.
        answer (`list[int]` or `list[str]`): The N correct sums (a digit string is read as an int).
        **kwargs: Other dataset columns and TRL's extras (ignored).

    Returns:
        `list[float]` of length N.
    """
    if completions is None or answer is None:
        raise ValueError(
            "exact_match_reward needs completions= and answer=: use a dataset with an 'answer' column "
            "(trl_schedule.llm_testbed.make_dataset), which TRL passes to reward functions."
        )
    if len(completions) != len(answer):
        raise ValueError(
            f"Got {len(completions)} completions but {len(answer)} answers: pass one answer per completion."
        )
    return [float(parse_answer(c) == int(a)) for c, a in zip(completions, answer)]


def _check_count(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}.")


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: pass one of {SPLITS}.")
    return split


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
    levels = tuple(levels)
    bad = [d for d in levels if not isinstance(d, int) or isinstance(d, bool) or d < 1]
    if not levels or bad or len(set(levels)) != len(levels):
        raise ValueError(f"levels={levels!r}: pass distinct digit counts >= 1, e.g. {LEVELS} (the default).")
    return levels
