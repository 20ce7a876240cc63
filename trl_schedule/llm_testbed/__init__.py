"""The embedded LLM testbed: a verifiable task (addition of two d-digit numbers, exact-match reward, a held-out
split) and a tiny Llama pretrained to partial skill on it, shipped in the package (no downloads needed).

    >>> from trl_schedule.llm_testbed import WEIGHTS_DIR, exact_match_reward, load_llm_testbed, make_datasets
    >>> data = make_datasets(num_train=1000, num_test=500, seed=0)  # DatasetDict "train"/"test": prompt, answer, ...
    >>> model, tokenizer = load_llm_testbed()  # the shipped fp16 weights, as float32
    >>> batch = tokenizer(data["test"]["prompt"][:4], padding=True, return_tensors="pt")
    >>> out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    >>> completions = tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    >>> exact_match_reward(completions=completions, answer=data["test"]["answer"][:4])  # e.g. [1.0, 1.0, 0.0, 1.0]

For TRL, pass ``str(WEIGHTS_DIR)`` as the model, :func:`exact_match_reward` as the reward function and the
``"train"`` split as the dataset. The task and its choices (parse rule, unparsable = 0, the split, what
difficulty means) are documented in :mod:`trl_schedule.llm_testbed.task`; the model and tokenizer in
:mod:`trl_schedule.llm_testbed.model`.
"""

from .model import (
    CHARACTERS,
    MODEL_MAX_LENGTH,
    SIZES,
    SPECIAL_TOKENS,
    WEIGHTS_DIR,
    build_llm_testbed,
    build_llm_testbed_tokenizer,
    load_llm_testbed,
)
from .task import (
    HELD_OUT_FRACTION,
    LEVELS,
    SPLITS,
    Problem,
    completion_text,
    count_carries,
    exact_match_reward,
    make_dataset,
    make_datasets,
    parse_answer,
    sample_problem,
    sample_problems,
    split_of,
)

__all__ = [
    "CHARACTERS",
    "HELD_OUT_FRACTION",
    "LEVELS",
    "MODEL_MAX_LENGTH",
    "SIZES",
    "SPECIAL_TOKENS",
    "SPLITS",
    "WEIGHTS_DIR",
    "Problem",
    "build_llm_testbed",
    "build_llm_testbed_tokenizer",
    "completion_text",
    "count_carries",
    "exact_match_reward",
    "load_llm_testbed",
    "make_dataset",
    "make_datasets",
    "parse_answer",
    "sample_problem",
    "sample_problems",
    "split_of",
]
