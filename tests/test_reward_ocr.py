"""OCRReward (GOT-OCR 2.0 + word / character recall / Flow-GRPO edit distance), offline and tiny.

- the metrics on hand-worked examples, and LCS / Levenshtein against a plain dynamic programme;
- the Flow-GRPO option against Flow-GRPO's own scoring code run with the real ``Levenshtein.distance``
  (``tests/fixtures/ocr/flow_grpo_cases.json``, made by ``tests/fixtures/make_ocr.py`` in the side venv);
- the torch preprocessing against transformers' PIL processor (live) and its torchvision processor (fixture);
- the model path on a tiny random GOT-OCR 2.0 (SAM-style vision tower + Qwen2 decoder + a byte-level Qwen2
  tokenizer built in code), saved with ``save_pretrained`` in the published checkpoint's layout and loaded by
  path, against the model card's recipe (``processor(image)`` -> ``generate(do_sample=False,
  stop_strings="<|im_end|>")`` -> ``decode(skip_special_tokens=True)``);
- the full-size architecture on the meta device against the published checkpoint's key layout.

GOT-OCR 2.0 is transformers-native, so there is no other "original" implementation of the model to compare to.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from trl_schedule.rewards.ocr import (
    OCR_METRICS,
    OCRReward,
    char_recall,
    extract_quoted_text,
    flow_grpo_ocr_reward,
    flow_grpo_target,
    got_ocr2_preprocess,
    lcs_length,
    levenshtein_distance,
    normalize_ocr_text,
    word_recall,
)

FIXTURES = Path(__file__).parent / "fixtures" / "ocr"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_SIZE = 64
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<imgpad>"]


# ----------------------------------------------------------------------------------------------------------
# Target text
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ('a sign that says "hello world"', "hello world"),
        ('"OPEN" above "24 hours"', "OPEN 24 hours"),  # several spans, joined by a space
        ("a sign that says \u201ccaf\u00e9\u201d", "caf\u00e9"),  # curly quotes
        ('\u201ca "b" c\u201d', 'a "b" c'),  # a curly span may contain straight quotes
        ('  "  spaced  " ', "spaced"),  # spans are stripped
        ('say "hi" and "', "hi"),  # unpaired last quote ignored
        ('a "" b', None),  # empty span: no target
        ("a cat's 'hat'", None),  # single quotes are not quotes
        ("a cat", None),
    ],
)
def test_extract_quoted_text(prompt, expected):
    assert extract_quoted_text(prompt) == expected


def test_flow_grpo_target_is_split_on_straight_quotes():
    assert flow_grpo_target('a "b" c "d"') == "b"  # the first span only
    assert flow_grpo_target('a "b c') == "b c"  # unpaired: the rest of the prompt
    assert flow_grpo_target("a \u201cb\u201d") is None  # curly quotes are not split on
    assert flow_grpo_target('a "" c') == ""


# ----------------------------------------------------------------------------------------------------------
# Metrics on hand-worked examples
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hello,  WORLD!\n(don\u2019t)", "hello world dont"),  # case, punctuation, whitespace, apostrophe
        ("\uff28\uff25\uff2c\uff2c\uff2f", "hello"),  # NFKC: full-width letters
        ("\ufb01ne", "fine"),  # NFKC: the fi ligature
        ("Stra\u00dfe", "strasse"),  # casefold: sharp s
        ("cafe\u0301", "caf\u00e9"),  # NFKC composes e + combining acute; accents are kept
        ("e-mail 50%", "e mail 50"),  # punctuation and symbols separate words
        ("  \t\n ", ""),
    ],
)
def test_normalize_ocr_text(text, expected):
    assert normalize_ocr_text(text) == expected


@pytest.mark.parametrize(
    "ocr, target, expected",
    [
        ("HELLO WORLD", "hello world", 1.0),  # case-insensitive
        ("hello", "hello world", 1 / 2),  # one of two words missing
        ("world hello and more text", "hello world", 1.0),  # order and extra words do not matter
        ("LA LAND", "la la land", 2 / 3),  # "la" twice in the target, once read: 1 + 1 (land) of 3
        ("la la la land", "la land", 1.0),  # extra repetitions do not matter
        ("hello world", "Hello, world!", 1.0),  # punctuation
        ("", "hello world", 0.0),  # empty OCR output
        ("DONT STOP", "don't stop", 1.0),  # apostrophes are deleted on both sides
        ("CAF\u00c9", "caf\u00e9", 1.0),  # unicode case
        ("cafe", "caf\u00e9", 0.0),  # accents are kept
        ("sale 50", "\uff33\uff21\uff2c\uff25 50\uff05", 1.0),  # full-width target
        ("hello world", "helloworld", 0.0),  # one target word, not read as a word
    ],
)
def test_word_recall(ocr, target, expected):
    assert word_recall(ocr, target) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "ocr, target, expected",
    [
        ("helo", "hello", 4 / 5),  # LCS "helo" = 4 of 5
        ("HELLO\nWORLD", "hello world", 1.0),  # spaces / line breaks removed: "helloworld" both
        ("hello world", "helloworld", 1.0),  # (word recall gives 0 here)
        ("cba", "abc", 1 / 3),  # order counts: LCS 1
        ("xxaxxbxxcxx", "abc", 1.0),  # extra characters are not penalised
        ("la land", "la la land", 6 / 8),  # "laland" in "lalaland": 6 of 8
        ("", "hello", 0.0),  # empty OCR output
        ("CAF\u00c9!", "caf\u00e9", 1.0),
    ],
)
def test_char_recall(ocr, target, expected):
    assert char_recall(ocr, target) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "ocr, target, expected",
    [
        ("HELLO\nWORLD", "Hello World", 1.0),  # lines joined with '', ' ' removed, lower: "helloworld"
        ("Helo Wrld", "Hello World", 1 - 2 / 10),  # d("helowrld", "helloworld") = 2 insertions
        ("xyz xyz xyz", "abc", 0.0),  # d = 9, capped at len("abc") = 3
        ("zzabczz", "abc", 1.0),  # substring: d = 0
        ("hello world", "Hello, World", 1 - 1 / 11),  # punctuation is kept: "hello,world" (11) vs 1 deletion
        ("tabsep", "tab\tsep", 1 - 1 / 7),  # only ' ' is removed, not tabs
        ("", "abc", 0.0),  # empty OCR output: d = 3
    ],
)
def test_flow_grpo_ocr_reward(ocr, target, expected):
    assert flow_grpo_ocr_reward(ocr, target) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("fn", [word_recall, char_recall, flow_grpo_ocr_reward])
@pytest.mark.parametrize("target", ["", "   "])
def test_empty_target_is_nan(fn, target):
    assert math.isnan(fn("some text", target))


def test_punctuation_only_target_is_nan_for_the_recalls():
    assert math.isnan(word_recall("!!!", "!!!")) and math.isnan(char_recall("!!!", "!!!"))
    assert flow_grpo_ocr_reward("!!!", "!!!") == 1.0  # Flow-GRPO keeps punctuation


def _lcs_dp(a: str, b: str) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            same = a[i - 1] == b[j - 1]
            table[i][j] = table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def _levenshtein_dp(a: str, b: str) -> int:
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + cost)
    return table[-1][-1]


def test_lcs_and_levenshtein_match_the_dynamic_programme():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook example (CLRS)
    assert levenshtein_distance("kitten", "sitting") == 3
    assert levenshtein_distance("", "abc") == levenshtein_distance("abc", "") == 3
    rng = random.Random(0)
    for _ in range(300):
        a = "".join(rng.choice("abcd\u00e9 ") for _ in range(rng.randint(0, 70)))
        b = "".join(rng.choice("abcd\u00e9 ") for _ in range(rng.randint(0, 70)))
        assert lcs_length(a, b) == _lcs_dp(a, b)
        assert levenshtein_distance(a, b) == _levenshtein_dp(a, b)


def test_flow_grpo_option_matches_flow_grpo_code():
    """Flow-GRPO's ``OcrScorer`` scoring, run with the real ``Levenshtein.distance`` (fixture), is reproduced
    exactly: GOT's lines are joined with "\\n" here and with '' by our transcription, as Flow-GRPO joins
    PaddleOCR's lines."""
    data = json.loads((FIXTURES / "flow_grpo_cases.json").read_text())
    assert len(data["cases"]) > 50
    for case in data["cases"]:
        target = flow_grpo_target(case["prompt"])
        assert target == case["target"]
        ours = flow_grpo_ocr_reward("\n".join(case["lines"]), target)
        assert ours == pytest.approx(case["reward"], abs=1e-12), case


# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


def _smooth_images(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    coarse = torch.rand(
        n, 3, max(height // 8, 2), max(width // 8, 2), generator=torch.Generator().manual_seed(seed)
    )
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear").clamp(0, 1)


def _to_pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray((image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def _levels(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of two normalised pixel tensors in uint8 levels."""
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return float(((a - b).abs() * std).max() * 255)


@pytest.mark.parametrize("height, width", [(40, 72), (90, 50), (64, 64), (150, 200)])
def test_preprocess_matches_pil_processor(height, width):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    processor = GotOcr2ImageProcessorPil(size={"height": TINY_SIZE, "width": TINY_SIZE}, resample=3)
    images = _smooth_images(2, height, width, seed=height)
    ours = got_ocr2_preprocess(images, (TINY_SIZE, TINY_SIZE), CLIP_MEAN, CLIP_STD, resample=3)
    assert ours.shape == (2, 3, TINY_SIZE, TINY_SIZE) and ours.dtype == torch.float32
    reference = processor([_to_pil(im) for im in images], return_tensors="pt").pixel_values
    # PIL's fixed-point uint8 resampling vs float interpolation: at most one uint8 level apart (the PIL and
    # torchvision processors themselves differ by up to 2); an image already at the input size is exact.
    tolerance = 1e-4 if (height, width) == (TINY_SIZE, TINY_SIZE) else 1.0 + 1e-4
    assert _levels(ours, reference) <= tolerance


def test_preprocess_matches_torchvision_processor_fixture():
    from safetensors.torch import load_file

    tensors = load_file(FIXTURES / "processor_pixels.safetensors")
    for name in ("wide", "tall", "native"):
        image = tensors[f"{name}.image"].float()[None] / 255
        ours = got_ocr2_preprocess(image, (TINY_SIZE, TINY_SIZE), CLIP_MEAN, CLIP_STD)[0]
        tolerance = 1e-4 if name == "native" else 1.0 + 1e-4
        assert _levels(ours, tensors[f"{name}.pixel_values"]) <= tolerance, name


def test_preprocess_rejects_bad_inputs():
    with pytest.raises(ValueError, match="float tensor"):
        got_ocr2_preprocess(torch.rand(3, 8, 8), (8, 8), CLIP_MEAN, CLIP_STD)
    with pytest.raises(ValueError, match="floating point"):
        got_ocr2_preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), (8, 8), CLIP_MEAN, CLIP_STD)
    with pytest.raises(ValueError, match="resample=1"):
        got_ocr2_preprocess(torch.rand(1, 3, 8, 8), (4, 4), CLIP_MEAN, CLIP_STD, resample=1)


# ----------------------------------------------------------------------------------------------------------
# Tiny GOT-OCR 2.0 built in code
# ----------------------------------------------------------------------------------------------------------


def _tiny_tokenizer():
    """A byte-level Qwen2 BPE tokenizer with no merges (every byte one token: ids 0-255), then GOT's special
    tokens: <|endoftext|> = 256 (eos and pad, as in Qwen), <|im_start|>, <|im_end|>, <img>, </img>,
    <imgpad>."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=[], unk_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return tokenizer


def _tiny_model(tokenizer, seed: int = 0):
    """A 64 px GOT-OCR 2.0: 4 px patches -> 16 x 16 grid -> 4 x 4 = 16 image tokens, a 2-layer Qwen2 decoder.
    The output embedding (tied) is zero except for a-z, space and <|im_end|>, so the greedy text is readable,
    depends on the image and sometimes stops early."""
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    torch.manual_seed(seed)
    config = GotOcr2Config(
        vision_config=dict(
            hidden_size=16,
            output_channels=8,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=TINY_SIZE,
            patch_size=4,
            window_size=4,
            global_attn_indexes=[1],
            mlp_dim=32,
            initializer_range=0.5,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
            initializer_range=0.5,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<imgpad>"),
    )
    model = GotOcr2ForConditionalGeneration(config).eval()
    keep = [tokenizer.convert_tokens_to_ids(c) for c in "abcdefghijklmnopqrstuvwxyz"]
    keep += [tokenizer.convert_tokens_to_ids("\u0120"), tokenizer.convert_tokens_to_ids("<|im_end|>")]
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        mask = torch.ones(weight.shape[0], dtype=torch.bool)
        mask[keep] = False
        weight[mask] = 0.0
    return model


def _tiny_processor(tokenizer):
    from transformers import GotOcr2Processor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    image_processor = GotOcr2ImageProcessorPil(
        size={"height": TINY_SIZE, "width": TINY_SIZE}, resample=3, image_mean=CLIP_MEAN, image_std=CLIP_STD
    )
    return GotOcr2Processor(image_processor=image_processor, tokenizer=tokenizer)


def _save_official_layout(model, processor, folder: Path) -> Path:
    """The published checkpoint's files: config.json, generation_config.json, model.safetensors (keys
    ``vision_tower.*``, ``multi_modal_projector.*``, ``language_model.model.*``, tied lm_head not stored),
    tokenizer files, and a ``preprocessor_config.json`` naming ``GotOcr2ImageProcessor`` as the hub's does."""
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    config_file = folder / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    config.update(image_processor_type="GotOcr2ImageProcessor", processor_class="GotOcr2Processor")
    config_file.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tokenizer = _tiny_tokenizer()
    model = _tiny_model(tokenizer)
    processor = _tiny_processor(tokenizer)
    folder = _save_official_layout(model, processor, tmp_path_factory.mktemp("got_ocr2_tiny"))
    return {"model": model, "processor": processor, "path": folder}


def _model_card_texts(model, processor, pil_images, num_image_tokens: int, max_new_tokens: int) -> list[str]:
    """The checkpoint's model card recipe (plus the original GOT generation config's eos <|endoftext|>)."""
    inputs = processor(pil_images, return_tensors="pt", num_image_tokens=num_image_tokens)
    generated = model.generate(
        **inputs,
        do_sample=False,
        tokenizer=processor.tokenizer,
        stop_strings="<|im_end|>",
        eos_token_id=processor.tokenizer.eos_token_id,
        pad_token_id=processor.tokenizer.pad_token_id,
        max_new_tokens=max_new_tokens,
    )
    return processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_checkpoint_folder_has_the_published_layout(tiny):
    from safetensors import safe_open
    from transformers import GotOcr2ForConditionalGeneration

    with safe_open(tiny["path"] / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    prefixes = ("vision_tower.", "multi_modal_projector.", "language_model.model.")
    assert keys and all(k.startswith(prefixes) for k in keys)
    assert not any("lm_head" in k for k in keys)  # tied to the input embedding, as in the 1.12 GB hub file
    _, info = GotOcr2ForConditionalGeneration.from_pretrained(tiny["path"], output_loading_info=True)
    assert not any(info.values()), info


def test_reward_matches_model_card_recipe(tiny):
    reward = OCRReward(tiny["path"], max_new_tokens=10, batch_size=3)  # the loading path of a real checkpoint
    assert reward.num_image_tokens == 16 and reward.dtype == torch.float32
    assert not reward.model.training and not any(p.requires_grad for p in reward.model.parameters())
    images = _smooth_images(
        6, TINY_SIZE, TINY_SIZE, seed=1
    )  # at the input size: the processor's exact pixels
    pils = [_to_pil(im) for im in images]
    reference = _model_card_texts(tiny["model"], tiny["processor"], pils, reward.num_image_tokens, 10)
    assert len(set(reference)) > 1  # the text depends on the image
    assert reward.recognize(images) == reference
    # Targets built from the reference texts give non-trivial scores; row 2 has no quoted text.
    prompts = [f'a sign that says "{text[:5]} qq"' for text in reference]
    prompts[2] = "a sign without quoted text"
    for metric in OCR_METRICS:
        reward.metric = metric
        scores = reward(images, prompts)
        assert scores.shape == (6,) and scores.dtype == torch.float32
        target_of = flow_grpo_target if metric == "flow_grpo" else extract_quoted_text
        fn = {"word_recall": word_recall, "char_recall": char_recall, "flow_grpo": flow_grpo_ocr_reward}[
            metric
        ]
        expected = [
            math.nan if target_of(p) is None else fn(text, target_of(p))
            for p, text in zip(prompts, reference)
        ]
        torch.testing.assert_close(scores, torch.tensor(expected, dtype=torch.float32), equal_nan=True)
        assert math.isnan(scores[2]) and reward.last_texts[2] is None  # not run through the model
        assert reward.last_texts[:2] == reference[:2]
    assert scores[~scores.isnan()].max() > 0


def test_prompt_ids_are_the_processors(tiny):
    reward = OCRReward.from_components(tiny["model"], tiny["processor"])
    pils = [_to_pil(im) for im in _smooth_images(2, 30, 90, seed=2)]
    inputs = tiny["processor"](pils, return_tensors="pt", num_image_tokens=reward.num_image_tokens)
    assert torch.equal(inputs["input_ids"], reward.prompt_ids.expand(2, -1))
    text = tiny["processor"].tokenizer.decode(reward.prompt_ids[0])
    assert text.endswith("<img>" + "<imgpad>" * 16 + "</img>\n OCR: <|im_end|><|im_start|>assistant\n")


def test_target_column_non_square_images_and_bf16(tiny):
    reward = OCRReward.from_components(
        tiny["model"], tiny["processor"], metric="char_recall", target_column="text", max_new_tokens=4
    )
    images = _smooth_images(3, 48, 80, seed=3)  # non-square, resized to 64 x 64
    texts = reward.recognize(images)
    scores = reward(images, ["ignored"] * 3, text=[texts[0], None, ["x", texts[2]]], other=[1, 2, 3])
    assert scores[0] == 1.0 and math.isnan(scores[1])
    assert scores[2] == pytest.approx(char_recall(texts[2], "x " + texts[2]))
    with pytest.raises(ValueError, match="target_column='text' is not among"):
        reward(images, ["a"] * 3, other=[1, 2, 3])
    with pytest.raises(ValueError, match="has 2 values for 3 prompts"):
        reward(images, ["a"] * 3, text=["a", "b"])
    with pytest.raises(ValueError, match="must be a string"):
        reward(images, ["a"] * 3, text=["a", 5, "b"])
    bf16 = OCRReward.from_components(
        _tiny_model(tiny["processor"].tokenizer), tiny["processor"], dtype=torch.bfloat16
    )
    bf16.max_new_tokens = 3
    out = bf16(images, ['"abc"', "none", '"a b"'])
    assert out.dtype == torch.float32 and bf16.model.dtype == torch.bfloat16 and math.isnan(out[1])


def test_processor_config_layout_also_loads(tiny, tmp_path):
    tiny["model"].save_pretrained(tmp_path)
    tiny["processor"].save_pretrained(tmp_path)  # transformers 5: one processor_config.json + tokenizer files
    reward = OCRReward(tmp_path, max_new_tokens=3)
    assert reward.image_size == (TINY_SIZE, TINY_SIZE) and reward.resample == 3


def test_errors_name_the_argument_and_the_fix(tiny, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="metric='bleu'"):
        OCRReward(tiny["path"], metric="bleu")
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        OCRReward(tiny["path"], max_new_tokens=0)
    with pytest.raises(FileNotFoundError, match="hf download stepfun-ai/GOT-OCR-2.0-hf"):
        OCRReward(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        FileNotFoundError, match="lacks model.safetensors, tokenizer.json, preprocessor_config"
    ):
        OCRReward(tmp_path)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="model_name_or_path='trl-schedule-tests/no-such-got-ocr'"):
        OCRReward("trl-schedule-tests/no-such-got-ocr")


# ----------------------------------------------------------------------------------------------------------
# Full size, on the meta device
# ----------------------------------------------------------------------------------------------------------


def _published_config():
    """stepfun-ai/GOT-OCR-2.0-hf's architecture (its config.json; transformers' GotOcr2Config defaults)."""
    from transformers import GotOcr2Config

    return GotOcr2Config(
        vision_config=dict(
            hidden_size=768,
            output_channels=256,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=1024,
            patch_size=16,
            window_size=14,
            global_attn_indexes=[2, 5, 8, 11],
            mlp_dim=3072,
        ),
        text_config=dict(
            model_type="qwen2",
            vocab_size=151860,
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
        ),
        image_token_index=151859,
    )


def _published_layout() -> dict[str, tuple[int, ...]]:
    """The key -> shape layout of the published model.safetensors, written out by hand from the architecture:
    SAM ViT-B/16 at 1024 px (relative positions 2 * 14 - 1 in windowed layers, 2 * 64 - 1 in global ones), the
    conv projector, a 24-layer Qwen2 decoder; the tied lm_head is not stored."""
    layout: dict[str, tuple[int, ...]] = {
        "vision_tower.pos_embed": (1, 64, 64, 768),
        "vision_tower.patch_embed.projection.weight": (768, 3, 16, 16),
        "vision_tower.patch_embed.projection.bias": (768,),
        "vision_tower.neck.conv1.weight": (256, 768, 1, 1),
        "vision_tower.neck.conv2.weight": (256, 256, 3, 3),
        "multi_modal_projector.conv_upsampler1.weight": (512, 256, 3, 3),
        "multi_modal_projector.conv_upsampler2.weight": (1024, 512, 3, 3),
        "multi_modal_projector.multimodal_projector.weight": (1024, 1024),
        "multi_modal_projector.multimodal_projector.bias": (1024,),
        "language_model.model.embed_tokens.weight": (151860, 1024),
        "language_model.model.norm.weight": (1024,),
    }
    for name in ("layer_norm1", "layer_norm2"):
        layout[f"vision_tower.neck.{name}.weight"] = layout[f"vision_tower.neck.{name}.bias"] = (256,)
    for i in range(12):
        p = f"vision_tower.layers.{i}."
        rel = 2 * (64 if i in (2, 5, 8, 11) else 14) - 1
        for name in ("layer_norm1", "layer_norm2"):
            layout[p + name + ".weight"] = layout[p + name + ".bias"] = (768,)
        layout[p + "attn.rel_pos_h"] = layout[p + "attn.rel_pos_w"] = (rel, 64)
        layout[p + "attn.qkv.weight"], layout[p + "attn.qkv.bias"] = (2304, 768), (2304,)
        layout[p + "attn.proj.weight"], layout[p + "attn.proj.bias"] = (768, 768), (768,)
        layout[p + "mlp.lin1.weight"], layout[p + "mlp.lin1.bias"] = (3072, 768), (3072,)
        layout[p + "mlp.lin2.weight"], layout[p + "mlp.lin2.bias"] = (768, 3072), (768,)
    for i in range(24):
        p = f"language_model.model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):
            layout[p + f"self_attn.{proj}.weight"], layout[p + f"self_attn.{proj}.bias"] = (
                (1024, 1024),
                (1024,),
            )
        layout[p + "self_attn.o_proj.weight"] = (1024, 1024)
        layout[p + "mlp.gate_proj.weight"] = layout[p + "mlp.up_proj.weight"] = (2816, 1024)
        layout[p + "mlp.down_proj.weight"] = (1024, 2816)
        layout[p + "input_layernorm.weight"] = layout[p + "post_attention_layernorm.weight"] = (1024,)
    return layout


def _to_model_key(key: str) -> str:
    """transformers' checkpoint renaming for GOT-OCR 2.0 (the "llava" rules of ``conversion_mapping.py``)."""
    if key.startswith("language_model.model."):
        return "model.language_model." + key[len("language_model.model.") :]
    if key.startswith("language_model.lm_head."):
        return key[len("language_model.") :]
    return "model." + key


def test_full_size_layout_on_meta_device():
    from transformers import GotOcr2ForConditionalGeneration

    with torch.device("meta"):
        model = GotOcr2ForConditionalGeneration(_published_config())
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 560_528_640  # x 2 bytes = 1.121 GB: the hub's 1.12 GB bf16 model.safetensors
    layout = _published_layout()
    model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {_to_model_key(k): shape for k, shape in layout.items()}
    assert set(model_shapes) - set(mapped) == {"lm_head.weight"}  # tied to the input embedding
    assert set(mapped) - set(model_shapes) == set()
    assert {k: s for k, s in mapped.items() if model_shapes[k] != s} == {}
    assert sum(math.prod(s) for s in layout.values()) == n_params
    # 256 image tokens, the processor's default `num_image_tokens`, from a meta forward of the vision path
    pixels = torch.empty(1, 3, 1024, 1024, device="meta")
    features = model.model.get_image_features(pixel_values=pixels).pooler_output
    assert tuple(features.shape) == (1, 256, 1024)
