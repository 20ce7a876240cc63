"""The LLM testbed's model: a character-level tokenizer and a tiny Llama, both built in code.

The shipped model (:data:`WEIGHTS_DIR`) is an ordinary transformers folder (``config.json``,
``generation_config.json``, ``model.safetensors`` in fp16, the tokenizer files), so TRL takes it as
``model_name_or_path`` and the usual classes load it::

    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> from trl_schedule.llm_testbed import WEIGHTS_DIR, load_llm_testbed
    >>> model = AutoModelForCausalLM.from_pretrained(WEIGHTS_DIR, dtype="float32")  # stored in fp16
    >>> tokenizer = AutoTokenizer.from_pretrained(WEIGHTS_DIR)
    >>> model, tokenizer = load_llm_testbed()  # the same, in eval mode

The tokenizer has one token per character of :data:`CHARACTERS` after the special tokens of
:data:`SPECIAL_TOKENS`. Encoding prepends ``<bos>`` (TRL tokenizes plain-text prompts with the default
``add_special_tokens=True``, so its prompts look exactly like the training prompts); the model ends its answer
with ``<eos>``; batches pad on the left with ``<pad>``, as generation needs. Decoding joins the characters
(``decode(encode(s), skip_special_tokens=True) == s`` for every string over :data:`CHARACTERS`). Trained by
``benchmarks/llm_testbed/train_base.py``; its report is ``benchmarks/results/llm_testbed_base.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""The shipped base model: a transformers folder (fp16 safetensors, config, tokenizer)."""

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
"""Ids 0-3 of the tokenizer; the characters of :data:`CHARACTERS` follow."""

CHARACTERS = "0123456789+= "
"""The characters the tokenizer knows, one token each (the task uses all but the space)."""

MODEL_MAX_LENGTH = 64
"""The tokenizer's and the model's maximum length; the longest task sequence (d = 6) takes 23 tokens."""

SIZES: dict[str, dict[str, int]] = {
    # the shipped base model
    "base": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
    # a few thousand parameters: tests and smoke runs
    "tiny": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
}
"""Named model sizes for :func:`build_llm_testbed`."""


def build_llm_testbed_tokenizer(model_max_length: int = MODEL_MAX_LENGTH):
    """The character-level fast tokenizer, built in code with `tokenizers`.

    Args:
        model_max_length (`int`): Stored as the tokenizer's `model_max_length`.

    Returns:
        `transformers.PreTrainedTokenizerFast` with ``len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS)``,
        ``padding_side="left"``; unknown characters map to ``<unk>``.
    """
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tokenizer.decoder = decoders.Fuse()  # join the characters, no spaces in between
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def build_llm_testbed(seed: int = 0, size: str = "base", **overrides: Any):
    """A randomly initialised testbed model and its tokenizer (float32, eval mode).

    Args:
        seed (`int`): Seeds the weight initialisation.
        size (`str`): A key of :data:`SIZES` (``"base"``: the shipped architecture; ``"tiny"``: tests).
        **overrides: Override entries of the size (e.g. ``num_hidden_layers=2``).

    Returns:
        `tuple`: (`transformers.LlamaForCausalLM`, `transformers.PreTrainedTokenizerFast`). The config ties the
        input and output embeddings and carries the tokenizer's pad/bos/eos ids; the model's
        `generation_config` stops at ``<eos>`` and pads with ``<pad>``.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise ValueError(f"size={size!r}: pass one of {sorted(SIZES)}.")
    unknown = set(overrides) - set(SIZES[size])
    if unknown:
        raise ValueError(f"Unknown size overrides {sorted(unknown)}: the fields are {sorted(SIZES[size])}.")
    tokenizer = build_llm_testbed_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MODEL_MAX_LENGTH,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{**SIZES[size], **overrides},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.eval().requires_grad_(False), tokenizer


def load_llm_testbed(
    path: str | Path | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
):
    """Load a saved testbed model and its tokenizer (default: the shipped ones, :data:`WEIGHTS_DIR`).

    Args:
        path (`str` or `Path`, *optional*): A folder written by `save_pretrained` (model and tokenizer).
        dtype (`torch.dtype`, defaults to float32): The weights are stored in fp16 and cast to this.
        device: Where to put the model.

    Returns:
        `tuple`: (model in eval mode without gradients, tokenizer).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path) if path is not None else WEIGHTS_DIR
    if not (path / "config.json").is_file():
        raise ValueError(
            f"No testbed model at {path} (no config.json). Train one with "
            "`python benchmarks/llm_testbed/train_base.py` or pass the folder a `save_pretrained` call wrote."
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model.eval().requires_grad_(False), tokenizer
