"""Tiny causal LM + tokenizer built in code for the LLM-trainer tests, and the 2-process JSRLOOTrainer run.

Imported by `tests/test_rloo.py` and `tests/test_recipe_rloo_js_llm.py` (`build_tiny_lm`, `save_tiny_lm`,
...). Run as a script under two processes (gloo on CPU):

    torchrun --nproc_per_node 2 tests/_rloo_two_process.py --model_dir <saved tiny lm> --out <dir>

Each rank trains 2 steps and writes `<out>/rank<r>.json` with, per generation call: its local prompts and
local reward-function outputs, the gathered reward matrix `_calculate_rewards` returned, the estimator's
inputs and outputs, and the advantages this rank handed to the loss.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from _distributed import end_distributed_run
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(61)]
TARGET_WORD = "w7"


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over `WORDS` (64 tokens), with pad and eos; no hub access."""
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", model_max_length=64
    )


def build_tiny_lm(seed: int = 0) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A seeded 1-layer Llama causal LM (hidden 16, vocab 64) and its tokenizer.

    Llama, not Qwen2: transformers 5 reloads a saved Qwen2 tokenizer as `Qwen2Tokenizer` (its BPE, not ours),
    while a Llama checkpoint reloads the saved `tokenizer.json` as is.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config), build_tiny_tokenizer()


def save_tiny_lm(path: str | os.PathLike, seed: int = 0) -> str:
    """Save `build_tiny_lm(seed)` (model + tokenizer) to `path`, to load by path (e.g. as reference model)."""
    model, tokenizer = build_tiny_lm(seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def prompt_texts(n: int = 12) -> list[str]:
    """`n` distinct 3-word prompts."""
    return [f"w{i} w{i + 1} w{i + 2}" for i in range(10, 10 + n)]


def tiny_prompt_dataset(n: int = 12) -> Dataset:
    """An in-memory dataset with a "prompt" column of `n` plain-text prompts."""
    return Dataset.from_dict({"prompt": prompt_texts(n)})


def target_reward(completions, **kwargs) -> list[float]:
    """Reward = count of `TARGET_WORD` + 0.1 * number of words: varies across completions of one prompt."""
    return [float(c.split().count(TARGET_WORD)) + 0.1 * len(c.split()) for c in completions]


def main() -> None:
    from trl import RLOOConfig

    from trl_schedule.estimators import JamesSteinBaseline
    from trl_schedule.rloo import JSRLOOTrainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--beta", type=float, default=0.05)
    cli = parser.parse_args()

    records: list[dict] = []
    local_rewards: list[dict] = []

    def reward(prompts, completions, **kwargs):
        values = target_reward(completions)
        local_rewards.append({"prompts": list(prompts), "rewards": values})
        return values

    args = RLOOConfig(
        output_dir=str(Path(cli.out) / "trainer"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=3,  # 2 ranks x 3 = 6 rows = 3 groups of 2; group 1 straddles the ranks
        num_generations=2,
        max_completion_length=6,
        max_steps=2,
        beta=cli.beta,
        learning_rate=1e-2,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    trainer = JSRLOOTrainer(
        model=cli.model_dir,
        reward_funcs=reward,
        args=args,
        train_dataset=tiny_prompt_dataset(),
        processing_class=build_tiny_tokenizer(),
        estimator=JamesSteinBaseline(),
    )

    estimator, calculate_rewards, generate = (
        trainer.estimator,
        trainer._calculate_rewards,
        trainer._generate_and_score_completions,
    )

    def recording_estimator(rewards, group_ids):
        out = estimator(rewards, group_ids)
        records[-1]["estimator"] = {
            "rewards": rewards.tolist(),
            "group_ids": group_ids.tolist(),
            "advantages": out.advantages.tolist(),
            "alpha": out.alpha.tolist(),
        }
        return out

    def recording_calculate_rewards(*a, **k):
        rewards_per_func = calculate_rewards(*a, **k)
        records.append({"gathered_rewards_per_func": rewards_per_func.tolist()})
        return rewards_per_func

    def recording_generate(inputs):
        out = generate(inputs)
        records[-1]["advantages"] = out["advantages"].tolist()
        records[-1]["local"] = local_rewards[-1]
        return out

    trainer.estimator = recording_estimator
    trainer._calculate_rewards = recording_calculate_rewards
    trainer._generate_and_score_completions = recording_generate
    trainer.train()

    rank = trainer.accelerator.process_index
    result = {"rank": rank, "world_size": trainer.accelerator.num_processes, "records": records}
    (Path(cli.out) / f"rank{rank}.json").write_text(json.dumps(result))
    live_ddp = end_distributed_run(trainer)
    (Path(cli.out) / f"teardown{rank}.json").write_text(json.dumps({"live_ddp_modules": live_ddp}))


if __name__ == "__main__":
    main()
