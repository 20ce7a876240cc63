"""The LLM testbed: the addition task (split, difficulty, parsing, reward, datasets), the character tokenizer,
the tiny Llama and the shipped weights. Offline, a few seconds."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_schedule.llm_testbed import (
    CHARACTERS,
    LEVELS,
    MODEL_MAX_LENGTH,
    SPECIAL_TOKENS,
    WEIGHTS_DIR,
    Problem,
    build_llm_testbed,
    build_llm_testbed_tokenizer,
    count_carries,
    exact_match_reward,
    load_llm_testbed,
    make_dataset,
    make_datasets,
    parse_answer,
    sample_problems,
    split_of,
)

# Measured on the shipped weights (benchmarks/results/llm_testbed_base.md, greedy, held-out): d = 1 and d = 2.
EASY_LEVELS = (1, 2)
EASY_ACCURACY_FLOOR = 0.8


def _pairs(problems) -> set[tuple[int, int]]:
    return {(min(p.a, p.b), max(p.a, p.b)) for p in problems}


# ----------------------------------------------------------------------------------------------------------
# the task


def test_split_is_disjoint_deterministic_and_commutative():
    train = sample_problems(2000, "train", seed=0)
    test = sample_problems(2000, "test", seed=0)
    assert not _pairs(train) & _pairs(test)
    assert all(p.split == "train" for p in train) and all(p.split == "test" for p in test)
    assert sample_problems(2000, "test", seed=0) == test  # same seed, same problems
    assert sample_problems(50, "test", seed=1) != test[:50]
    assert all(split_of(p.a, p.b) == split_of(p.b, p.a) for p in train + test)
    # d = 1 (the documented count): 7 of the 45 unordered pairs, 13 ordered problems, are test problems
    held_out = [(a, b) for a in range(1, 10) for b in range(1, 10) if split_of(a, b) == "test"]
    assert len(held_out) == 13
    assert {(p.a, p.b) for p in sample_problems(500, "test", seed=0, levels=(1,))} == set(held_out)
    # about HELD_OUT_FRACTION of the larger levels
    fraction = sum(split_of(a, b) == "test" for a in range(10, 100) for b in range(10, 100)) / 90**2
    assert 0.17 < fraction < 0.23


def test_difficulty_varies_and_levels_are_balanced():
    ds = make_dataset(600, "train", seed=0)
    assert ds.column_names == ["prompt", "answer", "difficulty", "carries"]
    assert sorted(set(ds["difficulty"])) == list(LEVELS)
    assert all(ds["difficulty"].count(d) == 600 // len(LEVELS) for d in LEVELS)
    assert len(set(ds["carries"])) >= 6  # 0 .. 6 carries occur
    for row in ds:
        a, b = row["prompt"].removesuffix("=").split("+")
        assert len(a) == len(b) == row["difficulty"] and int(a) + int(b) == row["answer"]
        assert row["carries"] == count_carries(int(a), int(b)) <= row["difficulty"]
    assert make_dataset(600, "train", seed=0).to_dict() == ds.to_dict()
    data = make_datasets(20, 10, seed=3, levels=(2, 3))
    assert data["train"].num_rows == 20 and set(data["test"]["difficulty"]) == {2, 3}
    assert not set(data["train"]["prompt"]) & set(make_dataset(2000, "test", seed=3, levels=(2, 3))["prompt"])


def test_problem_properties():
    p = Problem(95, 17)
    assert (p.prompt, p.answer, p.completion, p.difficulty, p.carries) == ("95+17=", 112, "112", 2, 2)
    assert count_carries(12, 34) == 0 and count_carries(999, 1) == 3 and count_carries(5, 4) == 0


@pytest.mark.parametrize(
    "completion, parsed, reward",
    [
        ("46", 46, 1.0),  # correct
        ("47", 47, 0.0),  # wrong
        ("", None, 0.0),  # unparsable: empty
        ("+46", None, 0.0),  # unparsable: starts with a non-digit
        ("=", None, 0.0),
        ("46 is the answer", 46, 1.0),  # extra text after the answer is ignored
        ("46+1=47", 46, 1.0),
        ("4 6", 4, 0.0),  # the number ends at the first non-digit
        ("   46", 46, 1.0),  # leading spaces
        ("\n46", 46, 1.0),
        ("046", 46, 1.0),  # an integer is compared, not a string
        ("460", 460, 0.0),
        ([{"role": "assistant", "content": " 46"}], 46, 1.0),  # a conversational completion
    ],
)
def test_parse_and_reward_hand_examples(completion, parsed, reward):
    assert parse_answer(completion) == parsed
    assert exact_match_reward(prompts=["12+34="], completions=[completion], answer=[46]) == [reward]


def test_reward_takes_trl_keyword_arguments():
    # TRL calls reward_func(prompts=..., completions=..., completion_ids=..., **other_columns, trainer_state=...)
    out = exact_match_reward(
        prompts=["1+2=", "9+9="],
        completions=["3", "17"],
        completion_ids=[[8], [6, 12]],
        answer=[3, "18"],
        difficulty=[1, 1],
        carries=[0, 1],
        trainer_state=None,
    )
    assert out == [1.0, 0.0]


def test_task_errors_name_the_field_and_the_fix():
    with pytest.raises(ValueError, match=r"n=0 must be an int >= 1"):
        sample_problems(0, "train")
    with pytest.raises(ValueError, match=r"num_problems=-1 must be an int >= 1"):
        make_dataset(-1)
    with pytest.raises(ValueError, match=r"split='val'.*\('train', 'test'\)"):
        make_dataset(10, split="val")
    with pytest.raises(ValueError, match=r"levels=\(0,\).*digit counts >= 1"):
        make_dataset(10, levels=(0,))
    with pytest.raises(ValueError, match=r"levels=\(2, 2\)"):
        sample_problems(10, "test", levels=(2, 2))
    with pytest.raises(ValueError, match=r"a=12, b=3.*same number of digits"):
        Problem(12, 3)
    with pytest.raises(ValueError, match=r"Problem.a=-1"):
        Problem(-1, 2)
    with pytest.raises(ValueError, match=r"2 completions but 1 answers"):
        exact_match_reward(completions=["1", "2"], answer=[1])
    with pytest.raises(ValueError, match=r"'answer' column"):
        exact_match_reward(completions=["1"])
    with pytest.raises(TypeError, match=r"string or a list of chat messages"):
        parse_answer(46)


# ----------------------------------------------------------------------------------------------------------
# tokenizer and model


def test_tokenizer_round_trips_every_task_string_and_pads_left():
    tok = build_llm_testbed_tokenizer()
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS) and tok.model_max_length == MODEL_MAX_LENGTH
    assert tok.padding_side == "left" and tok.pad_token == "<pad>" and tok.eos_token == "<eos>"
    problems = sample_problems(200, "train", seed=0) + sample_problems(200, "test", seed=0)
    strings = [p.prompt for p in problems] + [p.completion for p in problems] + [CHARACTERS, " 46 ", ""]
    for s in strings:
        ids = tok(s).input_ids
        assert ids[0] == tok.bos_token_id and len(ids) == len(s) + 1 and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == s
    assert tok("a").input_ids == [tok.bos_token_id, tok.unk_token_id]
    batch = tok(["1+2=", "12345+67890="], padding=True)
    assert batch.input_ids[0][:8] == [tok.pad_token_id] * 8 and batch.attention_mask[0][:9] == [0] * 8 + [1]
    assert batch.input_ids[0][8:] == tok("1+2=").input_ids


def test_build_model_sizes_and_errors(tmp_path):
    model, tok = build_llm_testbed(size="tiny")
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    assert model.config.tie_word_embeddings and model.generation_config.eos_token_id == tok.eos_token_id
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    base, _ = build_llm_testbed(size="base")
    assert sum(p.numel() for p in base.parameters()) < 5_000_000
    with pytest.raises(ValueError, match=r"size='huge': pass one of \['base', 'tiny'\]"):
        build_llm_testbed(size="huge")
    with pytest.raises(ValueError, match=r"Unknown size overrides \['layers'\]"):
        build_llm_testbed(size="tiny", layers=2)
    with pytest.raises(ValueError, match=r"No testbed model at .*train_base.py"):
        load_llm_testbed(tmp_path)


# ----------------------------------------------------------------------------------------------------------
# the shipped weights


@pytest.fixture(scope="module")
def shipped():
    return load_llm_testbed()


def test_shipped_folder_loads_with_auto_classes_fp16_under_5m():
    names = {f.name for f in WEIGHTS_DIR.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert sum(f.stat().st_size for f in WEIGHTS_DIR.iterdir()) < 10e6
    with safe_open(WEIGHTS_DIR / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    model = AutoModelForCausalLM.from_pretrained(WEIGHTS_DIR)
    tok = AutoTokenizer.from_pretrained(WEIGHTS_DIR)
    assert model.dtype == torch.float16 and sum(p.numel() for p in model.parameters()) < 5_000_000
    assert (
        tok.padding_side == "left"
        and tok("12+34=").input_ids == build_llm_testbed_tokenizer()("12+34=").input_ids
    )
    assert (
        json.loads((WEIGHTS_DIR / "generation_config.json").read_text())["eos_token_id"] == tok.eos_token_id
    )


def test_shipped_model_generates_left_padded_batches_like_single_prompts(shipped):
    model, tok = shipped
    prompts = ["3+4=", "57+68=", "12345+67890="]
    batch = tok(prompts, padding=True, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    batched = tok.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    for prompt, text in zip(prompts, batched):
        single = tok(prompt, return_tensors="pt")
        ids = model.generate(**single, max_new_tokens=8, do_sample=False)
        assert tok.decode(ids[0, single.input_ids.shape[1] :], skip_special_tokens=True) == text
        assert parse_answer(text) is not None


def test_shipped_model_solves_easy_held_out_problems(shipped):
    model, tok = shipped
    test = make_dataset(100, "test", seed=7, levels=EASY_LEVELS)
    batch = tok(list(test["prompt"]), padding=True, return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    completions = tok.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    accuracy = sum(exact_match_reward(completions=completions, answer=test["answer"])) / len(completions)
    assert accuracy >= EASY_ACCURACY_FLOOR


# ----------------------------------------------------------------------------------------------------------
# the training script


def test_train_base_quick_run_writes_weights_and_report(load_script, tmp_path):
    script = load_script("benchmarks/llm_testbed/train_base.py", "llm_testbed_train_base")
    result = script.main(["--quick", "--out", str(tmp_path / "w"), "--report", str(tmp_path / "r.md")])
    report = (tmp_path / "r.md").read_text()
    assert "pass@8" in report and "unparsable" in report and result["stats"]["steps"] == 6
    model, _ = load_llm_testbed(tmp_path / "w")
    assert sum(p.numel() for p in model.parameters()) == result["stats"]["num_params"]
    assert script.pass_at_k(8, 2, 1) == pytest.approx(0.25) and script.pass_at_k(8, 7, 2) == 1.0
    assert script.pass_at_k(4, 1, 2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"--samples=4: pass >= 8"):
        script.parse_args(["--samples", "4"])
    with pytest.raises(ValueError, match=r"--minutes=0.0"):
        script.parse_args(["--minutes", "0"])


# ----------------------------------------------------------------------------------------------------------
# held-out evaluation


def test_held_out_accuracy_matches_a_per_problem_loop_and_checks_its_inputs(shipped):
    from trl_schedule.llm_testbed.evaluate import generate_completions, held_out_accuracy

    model, tok = shipped
    test = make_dataset(18, "test", seed=3)
    result = held_out_accuracy(model, tok, test, batch_size=5)  # batches of unequal prompt lengths
    singles = [generate_completions(model, tok, [p])[0] for p in test["prompt"]]
    scores = exact_match_reward(completions=singles, answer=test["answer"])
    assert result["accuracy"] == pytest.approx(sum(scores) / 18) and result["num_problems"] == 18
    for d, accuracy in result["by_difficulty"].items():
        mine = [s for s, x in zip(scores, test["difficulty"]) if x == d]
        assert accuracy == pytest.approx(sum(mine) / len(mine))
    with pytest.raises(ValueError, match=r"lacks columns \['answer', 'difficulty'\]"):
        held_out_accuracy(model, tok, test.select_columns(["prompt"]))
    right = build_llm_testbed_tokenizer()
    right.padding_side = "right"
    with pytest.raises(ValueError, match="padding_side is 'right'"):
        generate_completions(model, right, ["1+2="])
