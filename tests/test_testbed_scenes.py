"""Tests for trl_schedule.testbed.scenes: scene sampling, rendering, the prompt grammar, the prompt datasets."""

import random
from collections import Counter

import pytest
import torch

from trl_schedule.testbed.scenes import (
    BACKGROUND,
    COLOURS,
    HELD_OUT_OBJECTS,
    HELD_OUT_PAIRS,
    IMAGE_SIZE,
    PALETTE,
    PROMPT_TYPES,
    RELATIONS,
    SHAPES,
    VOCAB,
    ObjectSpec,
    PromptSpec,
    Scene,
    SceneObject,
    is_held_out,
    make_prompt_datasets,
    make_training_pairs,
    parse_prompt,
    prompt_for,
    render,
    sample_scene,
    sample_scenes,
    spatial_relations,
)


@pytest.mark.parametrize("prompt_type", PROMPT_TYPES)
def test_parse_prompt_round_trips_prompt_for(prompt_type):
    rng = random.Random(0)
    for _ in range(100):
        scene = sample_scene(rng, prompt_type)
        prompt = prompt_for(scene)
        spec = parse_prompt(prompt)
        assert spec == scene.prompt_spec()
        assert spec.prompt_type == prompt_type
        assert prompt_for(spec) == prompt
        assert parse_prompt(f"  {prompt.upper()}. ") == spec  # case, whitespace, final period ignored


def test_prompt_phrasing_matches_geneval_examples():
    assert (
        prompt_for(PromptSpec("single_object", (ObjectSpec("red", "circle"),))) == "a photo of a red circle"
    )
    assert prompt_for(PromptSpec("counting", (ObjectSpec("blue", "square"),), count=2)) == (
        "a photo of two blue squares"
    )
    two = PromptSpec("two_object", (ObjectSpec("green", "triangle"), ObjectSpec("yellow", "circle")))
    assert prompt_for(two) == "a photo of a green triangle and a yellow circle"
    rel = PromptSpec(
        "position", (ObjectSpec("red", "square"), ObjectSpec("blue", "circle")), relation="left of"
    )
    assert prompt_for(rel) == "a photo of a red square left of a blue circle"
    assert parse_prompt("a photo of three yellow triangles") == PromptSpec(
        "counting", (ObjectSpec("yellow", "triangle"),), count=3
    )
    assert parse_prompt("a photo of a red circle below a green square").relation == "below"


@pytest.mark.parametrize(
    "prompt",
    [
        "a photo of a purple circle",
        "a photo of four red circles",
        "a photo of two red circle",
        "a picture of a red circle",
        "a photo of a red circle and a red circle",
        "a photo of a red circle near a blue square",
        "a photo of a red circle left a blue square",
        "",
    ],
)
def test_parse_prompt_rejects_prompts_outside_the_grammar(prompt):
    with pytest.raises(ValueError, match="cannot parse prompt") as err:
        parse_prompt(prompt)
    assert repr(prompt) in str(err.value)


def test_vocab_is_exactly_the_words_prompts_use():
    words = set()
    for scene in sample_scenes(600, seed=3):
        words.update(prompt_for(scene).split())
    assert words == set(VOCAB)
    assert list(VOCAB) == sorted(VOCAB)


@pytest.mark.parametrize("prompt_type", PROMPT_TYPES)
def test_sampled_scenes_satisfy_their_prompt(prompt_type):
    rng = random.Random(1)
    for _ in range(100):
        scene = sample_scene(rng, prompt_type)
        objs = scene.objects
        for obj in objs:
            x0, y0, x1, y1 = obj.box
            assert 0 < x0 and 0 < y0 and x1 < IMAGE_SIZE and y1 < IMAGE_SIZE
            assert 8 <= obj.size <= 12
        for i, a in enumerate(objs):  # no overlaps: separated by >= 2 px along x or y
            for b in objs[i + 1 :]:
                reach = (a.size + b.size) / 2 + 2
                assert abs(a.centre[0] - b.centre[0]) >= reach or abs(a.centre[1] - b.centre[1]) >= reach
        if prompt_type == "single_object":
            assert len(objs) == 1
        elif prompt_type == "counting":
            assert len(objs) in (2, 3) and len({(o.colour, o.shape) for o in objs}) == 1
        else:
            assert len(objs) == 2 and (objs[0].colour, objs[0].shape) != (objs[1].colour, objs[1].shape)
        if prompt_type == "position":
            assert spatial_relations(objs[0].box, objs[1].box) == {scene.relation}


def test_spatial_relations_hand_cases():
    left, right = (0, 10, 10, 20), (20, 10, 30, 20)
    assert spatial_relations(left, right) == {"left of"}
    assert spatial_relations(right, left) == {"right of"}
    top, bottom = (10, 0, 20, 10), (10, 20, 20, 30)
    assert spatial_relations(top, bottom) == {"above"}
    assert spatial_relations(bottom, top) == {"below"}
    assert spatial_relations(left, left) == set()
    # a 45-degree diagonal is both (GenEval's rule: each normalised component is ~0.6 > 0.5)
    assert spatial_relations((0, 0, 10, 10), (20, 20, 30, 30)) == {"left of", "above"}
    # a small offset inside the size-relative dead zone gives nothing
    assert spatial_relations((0, 0, 10, 10), (1, 0, 11, 10)) == set()


def test_render_is_deterministic_with_palette_colours_on_the_background():
    scene = Scene(
        "two_object",
        (SceneObject("square", "red", (8.0, 8.0), 10.0), SceneObject("circle", "blue", (22.0, 22.0), 10.0)),
    )
    img = render([scene, scene])
    assert img.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE) and img.dtype == torch.float32
    assert torch.equal(img[0], img[1]) and torch.equal(render([scene])[0], img[0])
    assert 0 <= img.min() and img.max() <= 1
    assert torch.allclose(img[0, :, 8, 8], torch.tensor(PALETTE["red"]))
    assert torch.allclose(img[0, :, 22, 22], torch.tensor(PALETTE["blue"]))
    assert torch.allclose(img[0, :, 0, 31], torch.tensor(BACKGROUND))
    # anti-aliased mass: the square [3, 13)^2 covers exactly 100 pixels, the circle ~ pi * 25
    red_mass = (img[0, 0] - 0.5).clamp_min(0).sum() / 0.5
    blue_mass = (img[0, 2] - 0.5).clamp_min(0).sum() / 0.5
    assert abs(red_mass.item() - 100) < 1e-3
    assert abs(blue_mass.item() - torch.pi * 25) < 1.0


def test_render_shapes_have_the_expected_area():
    for shape, area in (("circle", torch.pi * 25), ("square", 100.0), ("triangle", 50.0)):
        scene = Scene("single_object", (SceneObject(shape, "green", (15.3, 16.7), 10.0),))
        coverage = (render([scene])[0, 1] - 0.5) / 0.5  # green channel: 0.5 background -> 1.0 inside
        assert abs(coverage.sum().item() - area) < 2.0, shape  # 4x4 supersampling error


def test_scene_json_round_trip():
    for scene in sample_scenes(20, seed=4):
        assert Scene.from_json(scene.to_json()) == scene


def test_held_out_rule():
    assert is_held_out("a photo of a yellow triangle") and is_held_out("a photo of three blue circles")
    assert not is_held_out("a photo of a red circle")
    assert is_held_out("a photo of a red circle and a blue square")
    assert is_held_out("a photo of a blue square right of a red circle")  # either order
    assert not is_held_out("a photo of a red circle and a blue triangle")
    assert len(HELD_OUT_PAIRS) == 8 and all(len(p) == 2 for p in HELD_OUT_PAIRS)
    for colour, shape in HELD_OUT_OBJECTS | {o for p in HELD_OUT_PAIRS for o in p}:
        assert colour in COLOURS and shape in SHAPES
    rng = random.Random(5)
    for prompt_type in PROMPT_TYPES:
        for held in (True, False):
            assert all(
                is_held_out(sample_scene(rng, prompt_type, held).prompt_spec()) == held for _ in range(30)
            )


def test_make_prompt_datasets_splits_columns_and_held_out():
    data = make_prompt_datasets(num_train=200, num_test=80, seed=0)
    assert set(data) == {"train", "test"}
    assert len(data["train"]) == 200 and len(data["test"]) == 80
    assert set(data["train"].column_names) == {"prompt", "prompt_type", "scene"}
    train, test = set(data["train"]["prompt"]), set(data["test"]["prompt"])
    assert not train & test
    assert all(is_held_out(p) for p in test) and not any(is_held_out(p) for p in train)
    for split in ("train", "test"):
        assert Counter(data[split]["prompt_type"]) == {t: len(data[split]) // 4 for t in PROMPT_TYPES}
        for row in data[split].select(range(12)):
            scene = Scene.from_json(row["scene"])
            assert prompt_for(scene) == row["prompt"] and scene.prompt_type == row["prompt_type"]
    used = {r for p in data["test"]["prompt"] if (r := parse_prompt(p).relation)}
    assert used == set(RELATIONS)


def test_make_prompt_datasets_is_deterministic_per_seed():
    a = make_prompt_datasets(40, 12, seed=7)
    b = make_prompt_datasets(40, 12, seed=7)
    c = make_prompt_datasets(40, 12, seed=8)
    for split in ("train", "test"):
        assert a[split].to_dict() == b[split].to_dict()
    assert a["train"]["scene"] != c["train"]["scene"]


def test_make_prompt_datasets_validates_arguments():
    with pytest.raises(ValueError, match="num_train=0"):
        make_prompt_datasets(0, 5)
    with pytest.raises(ValueError, match="num_test"):
        make_prompt_datasets(5, -1)
    with pytest.raises(ValueError, match="prompt_types"):
        make_prompt_datasets(5, 5, prompt_types=("colors",))


def test_make_training_pairs():
    images, prompts = make_training_pairs(16, seed=2)
    assert images.shape == (16, 3, 32, 32) and len(prompts) == 16
    assert 0 <= images.min() and images.max() <= 1
    again, prompts_again = make_training_pairs(16, seed=2)
    assert torch.equal(images, again) and prompts == prompts_again
    assert [parse_prompt(p).prompt_type for p in prompts[:4]] == list(PROMPT_TYPES)
    _, train_only = make_training_pairs(64, seed=2, exclude_held_out=True)
    assert not any(is_held_out(p) for p in train_only)
