"""Tests for trl_schedule.testbed.reward: the detector, the clause scores and the reward contract."""

import random
import time
from collections import deque
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from trl_schedule.testbed.reward import TestbedReward, connected_components, detect_objects
from trl_schedule.testbed.scenes import (
    BACKGROUND,
    PROMPT_TYPES,
    Scene,
    SceneObject,
    prompt_for,
    render,
    sample_scene,
    sample_scenes,
)


@pytest.fixture(scope="module")
def ground_truth():
    scenes = sample_scenes(240, seed=11)  # 60 per prompt type
    return scenes, render(scenes), [prompt_for(s) for s in scenes]


def test_ground_truth_scores_near_one_for_every_prompt_type(ground_truth):
    scenes, images, prompts = ground_truth
    scores, details = TestbedReward().score_with_breakdown(images, prompts)
    assert scores.shape == (len(scenes),) and scores.dtype == torch.float32
    assert scores.min() >= 0.95, [d["prompt"] for d, s in zip(details, scores) if s < 0.95]
    assert all(d["rule_score"] == 1.0 for d in details)
    assert {d["prompt_type"] for d in details} == set(PROMPT_TYPES)
    for scene, d in zip(scenes, details):  # the detector finds exactly the rendered objects
        assert sorted((o.colour, o.shape) for o in d["detections"]) == sorted(
            (o.colour, o.shape) for o in scene.objects
        )


def test_ground_truth_with_noise_still_scores_high(ground_truth):
    _, images, prompts = ground_truth
    gen = torch.Generator().manual_seed(0)
    noisy = (images + 0.05 * torch.randn(images.shape, generator=gen)).clamp(0, 1)
    scores, details = TestbedReward().score_with_breakdown(noisy, prompts)
    assert scores.min() >= 0.9
    assert sum(d["rule_score"] == 1.0 for d in details) == len(details)


def test_shuffled_pairs_score_low(ground_truth):
    _, images, prompts = ground_truth
    shifted = prompts[1:] + prompts[:1]  # every image gets another scene's prompt
    reward = TestbedReward()
    assert reward(images, shifted).mean() < 0.5
    assert reward(images, shifted).mean() < reward(images, prompts).mean() - 0.5


@pytest.mark.parametrize("value", [BACKGROUND, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)])
def test_blank_images_score_zero(ground_truth, value):
    _, _, prompts = ground_truth
    blank = torch.tensor(value).view(1, 3, 1, 1).expand(8, 3, 32, 32)
    scores, details = TestbedReward().score_with_breakdown(blank, prompts[:8])
    assert torch.all(scores == 0) and all(not d["detections"] for d in details)


def _two(relation="left of", colour_b="blue", shape_b="circle"):
    a = SceneObject("square", "red", (8.0, 16.0), 10.0)
    b = SceneObject(shape_b, colour_b, (24.0, 16.0), 10.0)
    return Scene("position", (a, b), relation)


def test_wrong_colour_loses_the_colour_clause():
    scene = _two()
    prompt = prompt_for(scene)  # "a photo of a red square left of a blue circle"
    wrong = replace(scene, objects=(scene.objects[0], replace(scene.objects[1], colour="green")))
    scores, details = TestbedReward().score_with_breakdown(render([scene, wrong]), [prompt, prompt])
    good, bad = details
    assert good["clauses"]["object_1"]["score"] == 1.0
    assert bad["clauses"]["object_1"]["colour_present"] == 0.0 and bad["clauses"]["object_1"]["score"] == 0.0
    assert bad["clauses"]["object_0"]["score"] == 1.0 and bad["clauses"]["relation"]["score"] == 0.0
    assert scores[1] < scores[0] - 0.4


def test_wrong_shape_keeps_colour_but_loses_shape():
    scene = _two()
    wrong = replace(scene, objects=(scene.objects[0], replace(scene.objects[1], shape="triangle")))
    _, (d,) = TestbedReward().score_with_breakdown(render([wrong]), [prompt_for(scene)])
    assert d["clauses"]["object_1"]["colour_present"] == 1.0
    assert d["clauses"]["object_1"]["shape_correct"] == 0.0 and d["clauses"]["object_1"]["score"] == 0.5


def test_swapped_relation_loses_only_the_relation_clause():
    scene = _two("left of")
    swapped = prompt_for(replace(scene, relation="right of"))
    scores, (d,) = TestbedReward().score_with_breakdown(render([scene]), [swapped])
    assert d["clauses"]["relation"] == {"relation": "right of", "score": 0.0}
    assert d["clauses"]["object_0"]["score"] == 1.0 and d["clauses"]["object_1"]["score"] == 1.0
    assert d["rule_score"] == pytest.approx(2 / 3)
    assert 0.6 < scores[0] < 0.8


@pytest.mark.parametrize("relation", ["above", "below"])
def test_vertical_relations(relation):
    rng = random.Random(3)
    while True:
        scene = sample_scene(rng, "position")
        if scene.relation == relation:
            break
    other = "below" if relation == "above" else "above"
    _, (good, bad) = TestbedReward().score_with_breakdown(
        render([scene, scene]), [prompt_for(scene), prompt_for(replace(scene, relation=other))]
    )
    assert good["clauses"]["relation"]["score"] == 1.0 and bad["clauses"]["relation"]["score"] == 0.0


def test_wrong_count_loses_the_count_clause():
    objects = tuple(SceneObject("triangle", "yellow", (x, 16.0), 9.0) for x in (6.0, 16.5, 27.0))
    three = Scene("counting", objects)
    two = Scene("counting", objects[:2])
    scores, (d3, d2) = TestbedReward().score_with_breakdown(render([three, two]), [prompt_for(two)] * 2)
    assert d3["clauses"]["count"] == {"expected": 2, "found": 3, "score": 0.0}
    assert d3["clauses"]["object_0"]["score"] == 1.0
    assert d2["clauses"]["count"] == {"expected": 2, "found": 2, "score": 1.0}
    assert scores[0] < scores[1] - 0.3


def test_continuous_term_rewards_partial_progress_smoothly():
    scene = _two()
    image = render([scene])
    bg = torch.tensor(BACKGROUND).view(1, 3, 1, 1)
    faded = torch.cat([bg + f * (image - bg) for f in (1.0, 0.9, 0.8, 0.7)])  # fading towards the background
    _, details = TestbedReward().score_with_breakdown(faded, [prompt_for(scene)] * 4)
    continuous = [d["continuous"] for d in details]
    assert all(d["rule_score"] == 1.0 for d in details)
    assert all(a > b for a, b in zip(continuous, continuous[1:])), continuous
    # an extra, unrequested object is clutter: the rule score is unchanged, the continuous term drops
    extra = replace(scene, objects=scene.objects + (SceneObject("circle", "yellow", (16.0, 4.0), 6.0),))
    _, (clean, cluttered) = TestbedReward().score_with_breakdown(
        render([scene, extra]), [prompt_for(scene)] * 2
    )
    assert cluttered["rule_score"] == 1.0 and cluttered["continuous"] < clean["continuous"] - 0.1


def test_continuous_weight_zero_gives_the_rule_score(ground_truth):
    _, images, prompts = ground_truth
    scores, details = TestbedReward(continuous_weight=0.0).score_with_breakdown(images[:20], prompts[:20])
    assert torch.equal(scores, torch.tensor([d["rule_score"] for d in details]))


def test_larger_images_are_resized_with_area_interpolation(ground_truth):
    _, images, prompts = ground_truth
    big = F.interpolate(images[:40], scale_factor=2, mode="bilinear", align_corners=False)
    small = TestbedReward()(images[:40], prompts[:40])
    assert (TestbedReward()(big, prompts[:40]) - small).abs().max() < 0.05


def test_scores_are_deterministic_and_on_the_input_dtype_contract(ground_truth):
    _, images, prompts = ground_truth
    reward = TestbedReward()
    a = reward(images[:16].double(), prompts[:16])
    assert torch.equal(a, reward(images[:16], prompts[:16])) and a.dtype == torch.float32
    assert torch.all((a >= 0) & (a <= 1))


def test_non_finite_rows_are_unscorable(ground_truth):
    _, images, prompts = ground_truth
    x = images[:3].clone()
    x[1, 0, 5, 5] = float("nan")
    scores = TestbedReward()(x, prompts[:3])
    assert torch.isnan(scores[1]) and torch.isfinite(scores[[0, 2]]).all()


def test_bad_inputs_raise_clear_errors(ground_truth):
    _, images, prompts = ground_truth
    reward = TestbedReward()
    with pytest.raises(ValueError, match="must be"):
        reward(images[:2], prompts[:3])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        reward(images[:2, :1], prompts[:2])
    with pytest.raises(ValueError, match="single str"):
        reward(images[:1], prompts[0])
    with pytest.raises(ValueError, match="'a photo of a dog'"):
        reward(images[:1], ["a photo of a dog"])
    with pytest.raises(ValueError, match="continuous_weight"):
        TestbedReward(continuous_weight=1.5)


def _reference_components(mask):
    """Plain BFS, 8-connectivity: the partition as a set of frozensets of (row, col)."""
    h, w = len(mask), len(mask[0])
    seen, parts = set(), set()
    for i in range(h):
        for j in range(w):
            if mask[i][j] and (i, j) not in seen:
                part, queue = set(), deque([(i, j)])
                seen.add((i, j))
                while queue:
                    y, x = queue.popleft()
                    part.add((y, x))
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            q = (y + dy, x + dx)
                            if 0 <= q[0] < h and 0 <= q[1] < w and mask[q[0]][q[1]] and q not in seen:
                                seen.add(q)
                                queue.append(q)
                parts.add(frozenset(part))
    return parts


def test_connected_components_match_a_bfs_reference():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 16, 16, generator=gen) < torch.tensor([0.2, 0.35, 0.45, 0.55, 0.7, 0.9]).view(
        6, 1, 1
    )
    labels = connected_components(masks)
    assert torch.equal(labels > 0, masks)
    all_labels = set()
    for b in range(6):
        lab = labels[b].tolist()
        parts = {}
        for i in range(16):
            for j in range(16):
                if lab[i][j]:
                    parts.setdefault(lab[i][j], set()).add((i, j))
        assert {frozenset(p) for p in parts.values()} == _reference_components(masks[b].tolist())
        assert not all_labels & set(parts)  # labels are unique across the batch
        all_labels |= set(parts)


def test_detector_finds_shapes_positions_and_drops_specks():
    scene = Scene(
        "two_object",
        (
            SceneObject("triangle", "green", (9.0, 10.0), 11.0),
            SceneObject("circle", "yellow", (22.0, 21.0), 10.0),
        ),
    )
    image = render([scene])
    image[0, :, 30, 1] = torch.tensor([1.0, 0.0, 0.0])  # a one-pixel red speck is noise
    (objects,) = detect_objects(image)
    assert [(o.colour, o.shape) for o in objects] == [("yellow", "circle"), ("green", "triangle")]
    (circle, triangle) = objects
    assert abs((circle.box[0] + circle.box[2]) / 2 - 22.0) <= 0.5
    assert abs((triangle.box[1] + triangle.box[3]) / 2 - 10.0) <= 0.5
    assert circle.purity > 0.85 and triangle.top < 0.35 < circle.top


def test_scoring_64_images_is_fast(ground_truth):
    _, images, prompts = ground_truth
    reward = TestbedReward()
    reward(images[:64], prompts[:64])  # warm-up
    start = time.perf_counter()
    reward(images[:64], prompts[:64])
    assert time.perf_counter() - start < 0.5
