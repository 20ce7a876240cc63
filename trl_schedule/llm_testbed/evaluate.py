"""Held-out accuracy of a causal LM on the testbed task: batched, left-padded generation as TRL generates, scored
with :func:`~trl_schedule.llm_testbed.task.exact_match_reward`, overall and per difficulty."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

from .task import exact_match_reward

MAX_NEW_TOKENS = 8
"""Enough for the longest answer (a 7-digit sum) and ``<eos>``."""


@torch.no_grad()
def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_size: int = 1024,
    temperature: float | None = None,
) -> list[str]:
    """Completions of `prompts` (special tokens stripped, as TRL decodes them), `batch_size` rows per
    `generate` call, left-padded; greedy when `temperature` is None, else sampled at it with top-k and top-p off
    (TRL's defaults). Sampling draws from torch's global generator: seed it for reproducible samples."""
    if tokenizer.padding_side != "left":
        raise ValueError(
            f"tokenizer.padding_side is {tokenizer.padding_side!r}: batched generation needs 'left' "
            "(set tokenizer.padding_side = 'left')."
        )
    device = next(model.parameters()).device
    options = (
        dict(do_sample=False)
        if temperature is None
        else dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    )
    was_training = model.training
    model.eval()
    texts: list[str] = []
    for lo in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[lo : lo + batch_size], padding=True, return_tensors="pt").to(device)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **options
        )
        texts += tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    return texts


def held_out_accuracy(model: Any, tokenizer: Any, dataset: Any, batch_size: int = 1024) -> dict[str, Any]:
    """Greedy exact-match accuracy on `dataset` (columns ``prompt``, ``answer``, ``difficulty``, as
    :func:`~trl_schedule.llm_testbed.task.make_dataset` writes).

    Returns:
        `dict` with ``accuracy`` (float), ``by_difficulty`` (``{digits: accuracy}``) and ``num_problems``.
    """
    missing = {"prompt", "answer", "difficulty"} - set(dataset.column_names)
    if missing:
        raise ValueError(
            f"The evaluation dataset lacks columns {sorted(missing)}: build it with "
            "trl_schedule.llm_testbed.make_dataset(n, 'test')."
        )
    completions = generate_completions(model, tokenizer, list(dataset["prompt"]), batch_size=batch_size)
    scores = exact_match_reward(completions=completions, answer=dataset["answer"])
    per_level: dict[int, list[float]] = defaultdict(list)
    for score, level in zip(scores, dataset["difficulty"]):
        per_level[int(level)].append(score)
    return {
        "accuracy": sum(scores) / len(scores),
        "by_difficulty": {d: sum(v) / len(v) for d, v in sorted(per_level.items())},
        "num_problems": len(scores),
    }
