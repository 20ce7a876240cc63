"""GenEval-style reward (trl_schedule.rewards.geneval): rules on hand-made detections, the detector and colour
paths on tiny random models, and GenEval's own evaluator as the reference (fixture from
tests/fixtures/make_geneval.py: djghosh13/geneval evaluation/evaluate_images.py run with open_clip and canned
mmdet-format detections)."""

from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trl_schedule.rewards.base import as_reward_function
from trl_schedule.rewards.geneval import (
    GENEVAL_COLOR_TEMPLATES,
    GENEVAL_COLORS,
    GENEVAL_METADATA_URL,
    GENEVAL_OBJECT_NAMES,
    CLIPColorClassifier,
    GenEvalDetections,
    GenEvalObject,
    GenEvalReward,
    Mask2FormerDetector,
    coco_label_to_geneval,
    color_requests,
    evaluate_rules,
    load_geneval_metadata,
    mask_to_box,
    normalize_metadata,
    relative_position,
    select_objects,
)

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "geneval")


def obj(box, score=0.95, color=None):
    return GenEvalObject(box=tuple(float(v) for v in box), score=score, color=color)


def row(include, exclude=None, tag="two_object"):
    out = {"tag": tag, "include": include, "prompt": "test"}
    if exclude is not None:
        out["exclude"] = exclude
    return out


# ----------------------------------------------------------------------------------------------------------
# relative_position: GenEval's rule, worked out by hand. Boxes (x0, y0, x1, y1); B = (0, 0, 10, 10) has centre
# (5, 5) and size (10, 10). For A of size 10 x 10 the margin is 0.1 * (10 + 10) = 2 on each axis.
# ----------------------------------------------------------------------------------------------------------

B = (0, 0, 10, 10)


def test_relative_position_each_relation():
    # A centre (25, 5): offset (20, 0) -> shrunk (18, 0) / |o| = 20 -> dx = 0.9 > 0.5
    assert relative_position((20, 0, 30, 10), B) == {"right of"}
    # mirror: A = B, B = the right box: dx = -0.9 < -0.5
    assert relative_position(B, (20, 0, 30, 10)) == {"left of"}
    # A centre (5, 25): offset (0, 20), y points down -> dy = 0.9: below
    assert relative_position((0, 20, 10, 30), B) == {"below"}
    assert relative_position(B, (0, 20, 10, 30)) == {"above"}
    # diagonal: offset (20, 20) -> (18, 18) / 28.28 = 0.64 on both axes: two relations
    assert relative_position((20, 20, 30, 30), B) == {"right of", "below"}
    # close diagonal: offset (6, 6) -> (4, 4) / 8.49 = 0.47 on both axes: none
    assert relative_position((6, 6, 16, 16), B) == set()
    # extra box entries (mmdet's score) are ignored
    assert relative_position((20, 0, 30, 10, 0.99), (0, 0, 10, 10, 0.5)) == {"right of"}


def test_relative_position_ties_at_the_margin():
    # |offset| exactly the margin: offset (2, 0), margin 2 -> shrunk (0, 0) -> no relation (GenEval's 1e-3
    # rule)
    assert relative_position((2, 0, 12, 10), B) == set()
    # dx exactly 0.5: offset (4, 0) -> shrunk 2 / |o| 4 = 0.5; GenEval's test is the strict `dx > 0.5`, so the
    # tie is NOT "right of" (the margin 0.1 * 20 is exactly 2.0 in float32)...
    assert relative_position((4, 0, 14, 10), B) == set()
    # ...and one pixel further (offset 5 -> 3 / 5 = 0.6) it is
    assert relative_position((5, 0, 15, 10), B) == {"right of"}
    # the same tie on the left (dx = -0.5 is not < -0.5) and vertically
    assert relative_position(B, (4, 0, 14, 10)) == set()
    assert relative_position((0, 4, 10, 14), B) == set()
    assert relative_position((0, 5, 10, 15), B) == {"below"}
    # same centre: no relation (no division by zero)
    assert relative_position(B, B) == set()


# ----------------------------------------------------------------------------------------------------------
# select_objects: thresholds (strict, in float32), ordering, cap of 16 per class
# ----------------------------------------------------------------------------------------------------------


def detections(entries, size=(20, 20)):
    """[(class, score, box)] -> GenEvalDetections with box masks."""
    masks = torch.zeros(len(entries), *size, dtype=torch.bool)
    for i, (_, _, (x0, y0, x1, y1)) in enumerate(entries):
        masks[i, y0:y1, x0:x1] = True
    return GenEvalDetections(
        boxes=mask_to_box(masks),
        scores=torch.tensor([e[1] for e in entries], dtype=torch.float32),
        labels=torch.tensor([GENEVAL_OBJECT_NAMES.index(e[0]) for e in entries]),
        masks=masks,
    )


def test_select_objects_thresholds_order_and_cap():
    det = detections(
        [
            ("dog", 0.5, (0, 0, 5, 5)),
            ("dog", 0.8, (5, 5, 10, 10)),
            ("cat", 0.3, (1, 1, 4, 4)),
            ("cat", 0.31, (0, 0, 2, 2)),
        ]
    )
    objects = select_objects(det, tag="two_object")
    # dogs most confident first; the cat at exactly 0.3 is dropped (GenEval keeps score > 0.3, in float32)
    assert [o.score for o in objects["dog"]] == pytest.approx([0.8, 0.5])
    assert objects["dog"][0].box == (5.0, 5.0, 10.0, 10.0)
    assert [o.score for o in objects["cat"]] == pytest.approx([0.31])
    # counting rows use 0.9: nothing survives
    assert select_objects(det, tag="counting") == {}
    # 18 people above 0.9: only the 16 most confident are kept
    many = detections([("person", 0.99 - 0.001 * i, (i, 0, i + 1, 1)) for i in range(18)])
    kept = select_objects(many, tag="counting")["person"]
    assert len(kept) == 16 and kept[0].score == pytest.approx(0.99) and kept[-1].score == pytest.approx(0.975)


def test_mask_to_box_matches_mmdet_mask2bbox():
    # mmdet 2.x mmdet/core/mask/utils.py::mask2bbox, transcribed (a per-mask loop)
    def mask2bbox(masks):
        bboxes = torch.zeros(masks.shape[0], 4)
        x_any, y_any = masks.any(dim=1), masks.any(dim=2)
        for i in range(masks.shape[0]):
            x, y = torch.where(x_any[i, :])[0], torch.where(y_any[i, :])[0]
            if len(x) > 0 and len(y) > 0:
                bboxes[i, :] = torch.tensor([x[0], y[0], x[-1] + 1, y[-1] + 1], dtype=torch.float32)
        return bboxes

    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 13, 17, generator=gen) > 0.97
    masks[0] = False  # empty -> zeros
    masks[1] = True  # full -> (0, 0, 17, 13)
    torch.testing.assert_close(mask_to_box(masks), mask2bbox(masks), rtol=0, atol=0)
    assert mask_to_box(masks)[1].tolist() == [0.0, 0.0, 17.0, 13.0]
    assert mask_to_box(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4)


# ----------------------------------------------------------------------------------------------------------
# evaluate_rules: GenEval's verdicts and the partial credit, worked out by hand
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("found", "correct", "partial", "reason"),
    [
        # "two clocks" = include count 2 + exclude count 3; partial = max(0, 1 - |k - 2| / 2)
        (0, False, 0.0, "expected clock>=2, found 0"),
        (1, False, 0.5, "expected clock>=2, found 1"),
        (2, True, 1.0, ""),
        (3, False, 0.5, "expected clock<3, found 3"),  # include term 1, exclude factor 1 - 1/2
        (4, False, 0.0, "expected clock<3, found 4"),  # exclude factor 1 - 2/2 = 0
        (5, False, 0.0, "expected clock<3, found 5"),  # clipped at 0
    ],
)
def test_exact_counting_via_exclude(found, correct, partial, reason):
    objects = {"clock": [obj((i, 0, i + 1, 1)) for i in range(found)]} if found else {}
    meta = row([{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}], tag="counting")
    result = evaluate_rules(objects, meta)
    assert result["correct"] is correct and result["score"] == float(correct)
    assert result["partial"] == pytest.approx(partial)
    assert result["reason"] == reason
    assert result["partial"] == pytest.approx(max(0.0, 1 - abs(found - 2) / 2))  # Flow-GRPO's counting reward


def test_exclusion_and_extra_objects():
    # "no dog": exclude count 1 fails on one dog, factor 1 - (1 - 1 + 1) / max(0, 1) = 0
    result = evaluate_rules({"dog": [obj(B)]}, row([], [{"class": "dog", "count": 1}]))
    assert (result["correct"], result["partial"], result["reason"]) == (False, 0.0, "expected dog<1, found 1")
    # an exclude-only row that holds: partial is the product of the factors = 1
    assert evaluate_rules({}, row([], [{"class": "dog", "count": 1}]))["partial"] == 1.0
    # GenEval only needs >= count in include clauses: two benches satisfy "a bench" (no penalty for surplus)
    result = evaluate_rules({"bench": [obj(B), obj((20, 0, 30, 10))]}, row([{"class": "bench", "count": 1}]))
    assert result["correct"] and result["partial"] == 1.0
    # two objects, one missing: terms [1, 0] -> 0.5
    result = evaluate_rules(
        {"bench": [obj(B)]}, row([{"class": "bench", "count": 1}, {"class": "sports ball", "count": 1}])
    )
    assert (result["correct"], result["partial"], result["reason"]) == (
        False,
        0.5,
        "expected sports ball>=1, found 0",
    )
    assert [c["passed"] for c in result["clauses"]] == [True, False]


def test_color_clause():
    cars = {"car": [obj(B, 0.9, "red"), obj(B, 0.8, "blue"), obj(B, 0.5, "red")]}
    # count 2 red: the two most confident are red and blue -> 1 red < 2 (the third, red, is not looked at)
    result = evaluate_rules(cars, row([{"class": "car", "count": 2, "color": "red"}], tag="colors"))
    assert not result["correct"]
    assert (
        result["reason"] == "expected red car>=2, found 1 red; and 1 red, 1 blue"
    )  # counts in GENEVAL_COLORS order
    # terms: count 2/2 = 1, colour 1/2 -> 0.75
    assert result["partial"] == pytest.approx(0.75)
    assert result["clauses"][0]["colors"] == ["red", "blue"]
    # count 1 red: the most confident is red
    assert evaluate_rules(cars, row([{"class": "car", "count": 1, "color": "red"}]))["correct"]
    # a wrong colour on the only object: terms [1, 0] -> 0.5 (object present, colour wrong)
    result = evaluate_rules(
        {"car": [obj(B, 0.9, "green")]}, row([{"class": "car", "count": 1, "color": "red"}])
    )
    assert (result["correct"], result["partial"]) == (False, 0.5)
    assert result["reason"] == "expected red car>=1, found 0 red; and 1 green"
    # the colour must be set on the objects a colour clause looks at
    with pytest.raises(ValueError, match="colour"):
        evaluate_rules({"car": [obj(B)]}, row([{"class": "car", "count": 1, "color": "red"}]))
    # color_requests lists them (GenEval classifies only when there are `count`, partial mode also fewer)
    assert color_requests(cars, row([{"class": "car", "count": 2, "color": "red"}])) == [
        ("car", 0),
        ("car", 1),
    ]
    short = {"car": [obj(B)]}
    assert color_requests(short, row([{"class": "car", "count": 2, "color": "red"}])) == []
    assert color_requests(short, row([{"class": "car", "count": 2, "color": "red"}]), partial=True) == [
        ("car", 0)
    ]


@pytest.mark.parametrize(
    ("relation", "dog_box"),
    [
        ("right of", (20, 0, 30, 10)),
        ("left of", (-20, 0, -10, 10)),
        ("above", (0, -20, 10, -10)),
        ("below", (0, 20, 10, 30)),
    ],
)
def test_position_each_relation(relation, dog_box):
    meta = row(
        [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": [relation, 0]}],
        tag="position",
    )
    objects = {"teddy bear": [obj(B)], "dog": [obj(dog_box)]}
    result = evaluate_rules(objects, meta)
    assert result["correct"] and result["partial"] == 1.0
    # the mirrored scene fails, and GenEval's reason names the relation actually found
    mirrored = {"teddy bear": [obj(dog_box)], "dog": [obj(B)]}
    result = evaluate_rules(mirrored, meta)
    opposite = {"right of": "left of", "left of": "right of", "above": "below", "below": "above"}[relation]
    assert not result["correct"]
    assert result["reason"] == f"expected dog {relation} target, found {opposite} target"
    assert result["partial"] == pytest.approx(2 / 3)  # terms [1, 1, 0]


def test_position_tie_all_pairs_and_missing_target():
    meta = row(
        [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}]
    )
    # the dx = 0.5 tie of test_relative_position_ties_at_the_margin fails the clause, with no relation found
    result = evaluate_rules({"teddy bear": [obj(B)], "dog": [obj((4, 0, 14, 10))]}, meta)
    assert not result["correct"] and result["reason"] == "expected dog right of target, found  target"
    assert evaluate_rules({"teddy bear": [obj(B)], "dog": [obj((5, 0, 15, 10))]}, meta)["correct"]
    # count 2: every found dog must be right of every target; the second (left of it) fails the clause
    meta2 = row(
        [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 2, "position": ["right of", 0]}]
    )
    objects = {"teddy bear": [obj(B)], "dog": [obj((20, 0, 30, 10), 0.9), obj((-20, 0, -10, 10), 0.8)]}
    result = evaluate_rules(objects, meta2)
    assert not result["correct"] and result["reason"] == "expected dog right of target, found left of target"
    assert result["partial"] == pytest.approx((1 + 1 + 0.5) / 3)  # position term: 1 of 2 pairs
    # missing target: the target clause fails, the dog clause has "no target"; terms [0, 1, 0]
    result = evaluate_rules({"dog": [obj((20, 0, 30, 10))]}, meta)
    assert result["reason"] == "expected teddy bear>=1, found 0\nno target for dog to be right of"
    assert result["partial"] == pytest.approx(1 / 3)
    # a failed target clause (wrong colour) also leaves "no target", although the boxes would do
    meta3 = row(
        [
            {"class": "teddy bear", "count": 1, "color": "red"},
            {"class": "dog", "count": 1, "position": ["right of", 0]},
        ]
    )
    result = evaluate_rules({"teddy bear": [obj(B, color="blue")], "dog": [obj((20, 0, 30, 10))]}, meta3)
    assert result["reason"].endswith("no target for dog to be right of")
    assert result["partial"] == pytest.approx(3 / 4)  # terms [1, 0 (colour), 1, 1 (the pair holds)]


def test_partial_is_one_exactly_when_correct():
    gen = torch.Generator().manual_seed(1)
    metas = [
        row([{"class": "dog", "count": 2}], [{"class": "dog", "count": 3}], tag="counting"),
        row([{"class": "dog", "count": 1, "color": "red"}, {"class": "cat", "count": 1, "color": "blue"}]),
        row([{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}]),
    ]
    for _ in range(200):
        objects = {}
        for name in ("dog", "cat"):
            n = int(torch.randint(0, 4, (1,), generator=gen))
            objects[name] = [
                obj(
                    (x := float(torch.randint(0, 40, (1,), generator=gen)), 0, x + 10, 10),
                    color=GENEVAL_COLORS[int(torch.randint(0, 2, (1,), generator=gen)) * 4],  # red or blue
                )
                for _ in range(n)
            ]
        for meta in metas:
            result = evaluate_rules(objects, meta)
            assert 0.0 <= result["partial"] <= 1.0
            assert (result["partial"] == 1.0) == result["correct"], (objects, meta, result)


def test_metadata_forms_and_errors():
    raw = {
        "tag": "position",
        "include": [
            {"class": "kite", "count": 1},
            {"class": "wine glass", "count": 1, "position": ["above", 0]},
        ],
        "prompt": "a photo of a wine glass above a kite",
    }
    # the dataset's form: padded None fields, position as a struct, exclude []
    dataset_form = {
        "tag": "position",
        "prompt": raw["prompt"],
        "include": [
            {"class": "kite", "count": 1, "color": None, "position": None},
            {"class": "wine glass", "count": 1, "color": None, "position": {"relation": "above", "index": 0}},
        ],
        "exclude": [],
    }
    assert normalize_metadata(raw) == normalize_metadata(dataset_form) == normalize_metadata(json.dumps(raw))
    with pytest.raises(ValueError, match="'kitten' is not one of GenEval's 80"):
        normalize_metadata(row([{"class": "kitten", "count": 1}]))
    with pytest.raises(ValueError, match="mauve"):
        normalize_metadata(row([{"class": "kite", "count": 1, "color": "mauve"}]))
    with pytest.raises(ValueError, match="earlier include clause"):
        normalize_metadata(row([{"class": "kite", "count": 1, "position": ["above", 0]}]))
    with pytest.raises(ValueError, match="relation 'on top of'"):
        normalize_metadata(
            row([{"class": "kite", "count": 1}, {"class": "dog", "count": 1, "position": ["on top of", 0]}])
        )


# ----------------------------------------------------------------------------------------------------------
# Label mapping
# ----------------------------------------------------------------------------------------------------------


def test_coco_label_to_geneval():
    renames = {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}
    detectron2_names = [renames.get(n, n) for n in GENEVAL_OBJECT_NAMES]
    assert coco_label_to_geneval(dict(enumerate(detectron2_names))) == list(range(80))
    assert coco_label_to_geneval({i: f"LABEL_{i}" for i in range(80)}) == list(range(80))
    voc = {"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa", "potted plant": "pottedplant",
           "dining table": "diningtable", "tv": "tvmonitor", "hair drier": "hair dryer"}  # fmt: skip
    voc_names = [voc.get(n, n).replace(" ", "_") for n in detectron2_names]
    assert coco_label_to_geneval(dict(enumerate(voc_names))) == list(range(80))
    # panoptic-style extra (stuff) labels are ignored (-1)
    with_stuff = dict(enumerate([*GENEVAL_OBJECT_NAMES, "sky", "grass"]))
    assert coco_label_to_geneval(with_stuff)[-2:] == [-1, -1]
    with pytest.raises(ValueError, match="cover no class for GenEval's"):
        coco_label_to_geneval(dict(enumerate(GENEVAL_OBJECT_NAMES[:79])))
    with pytest.raises(ValueError, match="class_names has 3 entries"):
        coco_label_to_geneval(dict(enumerate(GENEVAL_OBJECT_NAMES)), class_names=["a", "b", "c"])


# ----------------------------------------------------------------------------------------------------------
# Detector: mmdet's post-processing (transcribed), preprocessing, the tiny transformers 4.x checkpoint
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_detector():
    return Mask2FormerDetector(os.path.join(FIXTURE, "mask2former_tiny"), min_size=48, max_size=80)


def mmdet_instance_results(mask_cls, mask_low, batch_input_shape, img_shape, ori_shape, max_per_image=100):
    """mmdet 2.x, transcribed: MaskFormerHead.simple_test (mmdet/models/dense_heads/maskformer_head.py:
    upsample to batch_input_shape), MaskFormerFusionHead.simple_test + instance_postprocess
    (mmdet/models/seg_heads/panoptic_fusion_heads/maskformer_fusion_head.py), mask2bbox as a per-mask loop."""
    num_queries, num_classes = mask_cls.shape[0], mask_cls.shape[1] - 1
    mask_pred = F.interpolate(mask_low[None], size=batch_input_shape, mode="bilinear", align_corners=False)[0]
    mask_pred = mask_pred[:, : img_shape[0], : img_shape[1]]
    mask_pred = F.interpolate(mask_pred[:, None], size=ori_shape, mode="bilinear", align_corners=False)[:, 0]
    scores = F.softmax(mask_cls, dim=-1)[:, :-1]
    labels = torch.arange(num_classes).unsqueeze(0).repeat(num_queries, 1).flatten(0, 1)
    scores_per_image, top_indices = scores.flatten(0, 1).topk(max_per_image, sorted=False)
    labels_per_image = labels[top_indices]
    query_indices = top_indices // num_classes
    mask_pred = mask_pred[query_indices]
    mask_pred_binary = (mask_pred > 0).float()
    mask_scores_per_image = (mask_pred.sigmoid() * mask_pred_binary).flatten(1).sum(1) / (
        mask_pred_binary.flatten(1).sum(1) + 1e-6
    )
    det_scores = scores_per_image * mask_scores_per_image
    mask_pred_binary = mask_pred_binary.bool()
    bboxes = torch.zeros(len(mask_pred_binary), 4)
    for i, m in enumerate(mask_pred_binary):
        x, y = torch.where(m.any(0))[0], torch.where(m.any(1))[0]
        if len(x) and len(y):
            bboxes[i] = torch.tensor([x[0], y[0], x[-1] + 1, y[-1] + 1], dtype=torch.float32)
    return labels_per_image, bboxes, det_scores, mask_pred_binary


def test_postprocess_matches_mmdet(tiny_detector):
    gen = torch.Generator().manual_seed(0)
    num_queries = 12
    mask_cls = torch.randn(num_queries, 81, generator=gen) * 3
    mask_low = torch.randn(num_queries, 10, 14, generator=gen) * 2
    padded, resized, original = (40, 56), (37, 51), (50, 69)  # a non-square image, resized, then padded to 8s
    labels, boxes, scores, masks = mmdet_instance_results(mask_cls, mask_low, padded, resized, original, 100)
    ours = tiny_detector.postprocess(mask_cls, mask_low, padded, resized, original)
    order = torch.sort(scores, descending=True, stable=True).indices
    assert len(ours) == 100
    torch.testing.assert_close(ours.scores, scores[order], rtol=1e-6, atol=1e-7)
    assert torch.equal(ours.labels, labels[order])  # LABEL_i -> COCO order = GenEval index
    assert torch.equal(ours.boxes, boxes[order])
    assert torch.equal(ours.masks, masks[order])
    # score_floor drops exactly the candidates a later threshold >= floor would drop (and computes fewer
    # masks)
    floored = tiny_detector.postprocess(mask_cls, mask_low, padded, resized, original, score_floor=0.3)
    keep = ours.scores > 0.3
    assert keep.any()
    torch.testing.assert_close(floored.scores[floored.scores > 0.3], ours.scores[keep])
    assert torch.equal(floored.masks[floored.scores > 0.3], ours.masks[keep])


def test_preprocess_resize_rule_and_padding(tiny_detector):
    full = Mask2FormerDetector.from_model(tiny_detector.model)  # mmdet's (1333, 800)
    # mmcv rescale_size: scale = min(1333 / long, 800 / short); int(side * scale + 0.5)
    assert full.resized_size(512, 512) == (800, 800)
    assert full.resized_size(512, 768) == (800, 1200)
    assert full.resized_size(1024, 1024) == (800, 800)
    assert full.resized_size(300, 2000) == (200, 1333)  # the long side binds: scale 0.6665
    x = torch.full((1, 3, 30, 45), 0.5)
    pixels, resized = tiny_detector.preprocess(x)  # min 48 / max 80: scale min(80/45, 48/30) = 1.6 -> 48 x 72
    assert resized == (48, 72) and tuple(pixels.shape) == (1, 3, 64, 96)  # padded to multiples of 32
    level = round(0.5 * 255)  # 8-bit level 128
    expected = (level - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(pixels[0, :, 10, 10], expected)
    assert pixels[0, :, 48:, :].abs().max() == 0 and pixels[0, :, :, 72:].abs().max() == 0  # zero padding


def test_tiny_checkpoint_saved_by_transformers4_loads_and_matches(tiny_detector):
    # fixture: a tiny Mask2Former saved by transformers 4.57 (the hub checkpoints' format), with its 4.x
    # logits
    ref = np.load(os.path.join(FIXTURE, "mask2former_tiny_reference.npz"))
    with torch.no_grad():
        out = tiny_detector.model(pixel_values=torch.from_numpy(ref["pixel_values"]))
    torch.testing.assert_close(
        out.class_queries_logits, torch.from_numpy(ref["class_queries_logits"]), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        out.masks_queries_logits, torch.from_numpy(ref["masks_queries_logits"]), atol=1e-5, rtol=1e-5
    )
    assert tiny_detector.model.dtype == torch.float32 and not tiny_detector.model.training


def test_detector_call(tiny_detector):
    images = torch.rand(2, 3, 30, 45, generator=torch.Generator().manual_seed(0))
    dets = tiny_detector(images)
    assert len(dets) == 2
    for det in dets:
        assert det.masks.shape[1:] == (30, 45) and det.masks.dtype == torch.bool
        assert torch.equal(det.boxes, mask_to_box(det.masks))
        assert ((det.labels >= 0) & (det.labels < 80)).all()
        assert torch.all(det.scores[:-1] >= det.scores[1:])  # most confident first
    # the same image alone gives the same detections (batching does not leak)
    single = tiny_detector(images[1:])[0]
    torch.testing.assert_close(single.scores, dets[1].scores, atol=1e-5, rtol=1e-5)


def test_full_size_checkpoint_layouts_load_on_meta():
    """The full-size published layouts (transformers 4.x key names, from the fixture) map onto transformers
    5's classes with nothing missing, unexpected or mis-shaped, apart from non-persistent buffers and Swin's
    unused final layernorm (`_keys_to_ignore_on_load_missing`)."""
    from transformers import CLIPConfig, CLIPModel, Mask2FormerConfig, Mask2FormerForUniversalSegmentation

    with open(os.path.join(FIXTURE, "full_size_layouts.json")) as f:
        layouts = json.load(f)

    def load(cls, config, layout):
        state = {k: torch.empty(shape, device="meta") for k, shape in layout.items()}
        model, info = cls.from_pretrained(
            None, config=config, state_dict=state, device_map="meta", output_loading_info=True
        )
        return model, info

    m2f, info = load(
        Mask2FormerForUniversalSegmentation,
        Mask2FormerConfig(num_labels=80),
        layouts["mask2former_swin_small_coco_instance"],
    )
    assert not info["mismatched_keys"] and not info["error_msgs"]
    assert sorted(info["missing_keys"]) == [
        "model.pixel_level_module.encoder.swin.layernorm.bias",
        "model.pixel_level_module.encoder.swin.layernorm.weight",
    ]
    assert info["unexpected_keys"] and all(
        k.endswith(".relative_position_index") for k in info["unexpected_keys"]
    )
    params = sum(p.numel() for p in m2f.parameters())
    assert params == 68_741_083  # 68,739,547 in the checkpoint + the unused Swin layernorm (2 x 768)
    assert params * 2 / 2**20 == pytest.approx(131.1, abs=0.1)  # MiB in bf16

    clip_config = CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        ),
        vision_config=dict(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
            image_size=224, patch_size=14, hidden_act="quick_gelu", projection_dim=768,
        ),
        projection_dim=768,
    )  # fmt: skip
    clip, info = load(CLIPModel, clip_config, layouts["clip_vit_large_patch14"])
    assert not info["mismatched_keys"] and not info["error_msgs"] and not info["missing_keys"]
    assert set(info["unexpected_keys"]) <= {
        "text_model.embeddings.position_ids",
        "vision_model.embeddings.position_ids",
    }
    params = sum(p.numel() for p in clip.parameters())
    assert params == 427_616_513
    assert params * 2 / 2**20 == pytest.approx(815.6, abs=0.1)  # MiB in bf16


# ----------------------------------------------------------------------------------------------------------
# Colour classifier and GenEval's own evaluator (fixture)
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip():
    return CLIPColorClassifier(os.path.join(FIXTURE, "clip_tiny"))


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(FIXTURE, "reference.json")) as f:
        ref = json.load(f)
    arrays = np.load(os.path.join(FIXTURE, "cases.npz"))
    cases = {}
    for case in ref["cases"]:
        name = case["name"]
        masks = torch.from_numpy(arrays[f"{name}/masks"])
        case["image"] = torch.from_numpy(arrays[f"{name}/image"]).permute(2, 0, 1).float() / 255.0
        case["detections"] = GenEvalDetections(
            boxes=mask_to_box(masks),
            scores=torch.from_numpy(arrays[f"{name}/scores"]),
            labels=torch.from_numpy(arrays[f"{name}/labels"]),
            masks=masks,
        )
        cases[name] = case
    return ref, cases


def test_tokens_and_text_classifiers_match_open_clip(tiny_clip, reference):
    ref, _ = reference
    for classname, tokens in ref["template_tokens"].items():
        texts = [t.format(c=c, classname=classname) for c in GENEVAL_COLORS for t in GENEVAL_COLOR_TEMPLATES]
        assert tiny_clip.tokenizer(texts)["input_ids"] == tokens  # HF CLIP BPE == open_clip SimpleTokenizer
        expected = torch.tensor(ref["text_classifiers"][classname])  # clip_benchmark zero_shot_classifier
        torch.testing.assert_close(tiny_clip.text_classifier(classname).T, expected, atol=1e-6, rtol=0)


def normalize_reason(reason: str) -> str:
    """GenEval joins a Python set of relations: sort them (their order varies between runs)."""

    def fix(m):
        return "found " + " and ".join(sorted(m.group(1).split(" and "))) + " target"

    return re.sub(r"found (.*?) target", fix, reason)


def test_matches_geneval_evaluator(tiny_detector, tiny_clip, reference):
    """Every fixture case: GenEval's verdict, reason, kept boxes and scores, colours and colour logits."""
    ref, cases = reference
    reward = GenEvalReward(detector=tiny_detector, clip=tiny_clip)
    worst_exact, worst_resized = 0.0, 0.0
    for name, case in cases.items():
        result = reward.evaluate_detections(case["image"][None], [case["detections"]], [case["metadata"]])[0]
        assert result["correct"] == case["correct"], name
        assert normalize_reason(result["reason"]) == normalize_reason(case["reason"]), name
        # GenEval's `details`: kept [x0, y0, x1, y1, score] per class
        details = {k: [[*o["box"], o["score"]] for o in v] for k, v in result["objects"].items()}
        assert details.keys() == case["details"].keys(), name
        for k in details:
            np.testing.assert_allclose(details[k], case["details"][k], rtol=0, atol=1e-7, err_msg=name)
        for call in case["color_calls"]:
            kept = select_objects(case["detections"], case["metadata"]["tag"])[call["class"]][
                : len(call["boxes"])
            ]
            assert [list(o.box) for o in kept] == call["boxes"]
            crops = torch.stack([tiny_clip.crop(case["image"], o.box, o.mask) for o in kept])
            logits = tiny_clip.logits(crops, call["class"])
            assert [GENEVAL_COLORS[i] for i in logits.argmax(1)] == call["colors"], name
            diff = (logits - torch.tensor(call["logits"])).abs().max().item()
            if all(min(b[2] - b[0], b[3] - b[1]) == tiny_clip.image_size for b in call["boxes"]):
                worst_exact = max(worst_exact, diff)  # no resize before CLIP
            else:
                worst_resized = max(worst_resized, diff)
    # logits are 100 * cos: float32 round-off only when no resize is needed...
    assert worst_exact < 5e-5
    # ...and within one 8-bit level on a few pixels of the bicubic resize (PIL's fixed point vs torch)
    assert worst_resized < 5e-3


# ----------------------------------------------------------------------------------------------------------
# The reward contract and the metadata loader
# ----------------------------------------------------------------------------------------------------------

# lines 1, 81, 180, 260, 354 and 454 of djghosh13/geneval prompts/evaluation_metadata.jsonl
GENEVAL_ROWS = [
    '{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}',
    '{"tag": "two_object", "include": [{"class": "bench", "count": 1}, {"class": "sports ball",'
    ' "count": 1}], "prompt": "a photo of a bench and a sports ball"}',
    '{"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", '
    '"count": 3}], "prompt": "a photo of two clocks"}',
    '{"tag": "colors", "include": [{"class": "fire hydrant", "count": 1, "color": "blue"}], '
    '"prompt": "a photo of a blue fire hydrant"}',
    '{"tag": "position", "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, '
    '"position": ["right of", 0]}], "prompt": "a photo of a dog right of a teddy bear"}',
    '{"tag": "color_attr", "include": [{"class": "wine glass", "count": 1, "color": "purple"}, '
    '{"class": "apple", "count": 1, "color": "black"}], '
    '"prompt": "a photo of a purple wine glass and a black apple"}',
]


def test_load_geneval_metadata(tmp_path, monkeypatch):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(GENEVAL_ROWS) + "\n")
    for source in (path, tmp_path):
        ds = load_geneval_metadata(source)
        assert len(ds) == 6 and set(ds.column_names) == {"tag", "prompt", "include", "exclude"}
    assert ds[0]["include"] == [{"class": "bench", "count": 1, "color": None, "position": None}]
    assert ds[0]["exclude"] == [] and ds[2]["exclude"] == [{"class": "clock", "count": 3}]
    assert ds[4]["include"][1]["position"] == {"relation": "right of", "index": 0}
    for raw, converted in zip(GENEVAL_ROWS, ds):
        assert normalize_metadata(converted) == normalize_metadata(raw)
    with pytest.raises(FileNotFoundError, match=re.escape(GENEVAL_METADATA_URL)):
        load_geneval_metadata(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"tag": "x", "include": [{"class": "unicorn", "count": 1}]}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_geneval_metadata(tmp_path / "bad.jsonl")

    import huggingface_hub

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(FileNotFoundError, match="hf download someone/geneval evaluation_metadata.jsonl"):
        load_geneval_metadata("someone/geneval")


def test_reward_call_contract(tiny_detector, tiny_clip, tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text("\n".join(GENEVAL_ROWS) + "\n")
    ds = load_geneval_metadata(path)
    prompts = list(ds["prompt"])
    columns = {
        k: list(ds[k]) for k in ("include", "exclude", "tag")
    }  # what the trainer passes: one per image
    images = torch.rand(6, 3, 30, 45, generator=torch.Generator().manual_seed(3))
    small = Mask2FormerDetector.from_model(tiny_detector.model, min_size=32, max_size=48)
    # threshold 0 keeps every candidate of the random tiny detector, so every clause type gets checked
    kwargs = dict(detector=small, clip=tiny_clip, threshold=0.0, counting_threshold=0.0)
    reward = GenEvalReward(**kwargs)
    results = reward.evaluate(images, list(ds))
    scores = as_reward_function(reward)(images, prompts, **columns, other_column=list(range(6)))
    assert scores.shape == (6,) and scores.dtype == torch.float32
    assert scores.tolist() == [r["score"] for r in results]
    assert [r["tag"] for r in results] == columns["tag"] and all(r["clauses"] for r in results)
    # the raw GenEval rows (a metadata column of JSON text) give the same scores
    torch.testing.assert_close(reward(images[:2], prompts[:2], metadata=GENEVAL_ROWS[:2]), scores[:2])
    # partial credit: in [0, 1], 1 exactly where the verdict is 1
    partial = torch.tensor([r["partial"] for r in results])
    assert ((partial >= 0) & (partial <= 1)).all() and torch.equal(partial == 1, scores == 1)
    graded = GenEvalReward(**kwargs, partial_credit=True)(
        images[3:5], prompts[3:5], metadata=GENEVAL_ROWS[3:5]
    )
    torch.testing.assert_close(graded, partial[3:5])
    # NaN: an image with a NaN pixel, and a row without clauses; the other row is unchanged
    bad = images[:3].clone()
    bad[1, 0, 0, 0] = math.nan
    include, exclude = columns["include"][:3], columns["exclude"][:3]
    include[2] = exclude[2] = []
    out = reward(bad, prompts[:3], include=include, exclude=exclude, tag=columns["tag"][:3])
    assert math.isnan(out[1]) and math.isnan(out[2]) and out[0] == scores[0]
    # errors name the argument
    with pytest.raises(ValueError, match="include=\\[...\\]"):
        reward(images, prompts)
    with pytest.raises(ValueError, match="include has 2 values for 6 images"):
        reward(images, prompts, include=columns["include"][:2])
    with pytest.raises(ValueError, match="threshold=1.5"):
        GenEvalReward(detector=small, clip=tiny_clip, threshold=1.5)


def test_missing_checkpoint_error_names_the_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf download .*--local-dir"):
        Mask2FormerDetector(tmp_path / "nothing-here")
    with pytest.raises(FileNotFoundError, match="hf download .*model.safetensors"):
        CLIPColorClassifier(tmp_path / "nothing-here")


def test_trainer_trains_and_evaluates_on_geneval_metadata(tiny_detector, tiny_clip, tmp_path):
    """End to end: GenEval's metadata file -> a prompt dataset whose clause columns reach the reward, in
    training rollouts and in evaluation (a tiny Flux pipeline and policy, the tiny detector and CLIP)."""
    from _schedule_rl_two_process import tiny_args, tiny_policy_config

    from trl_schedule.schedule_rl_trainer import ScheduleRLTrainer
    from trl_schedule.testing import tiny_pipeline

    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(GENEVAL_ROWS) + "\n")
    dataset = load_geneval_metadata(path)
    small = Mask2FormerDetector.from_model(tiny_detector.model, min_size=32, max_size=48)
    seen = []

    class Recording(GenEvalReward):
        def __call__(self, images, prompts, **columns):
            seen.append({k: list(v) for k, v in columns.items() if k in ("tag", "include")})
            return super().__call__(images, prompts, **columns)

    reward = Recording(
        detector=small, clip=tiny_clip, threshold=0.0, counting_threshold=0.0, partial_credit=True
    )
    trainer = ScheduleRLTrainer(
        pipeline=tiny_pipeline("flux"),
        policy=tiny_policy_config(),
        reward_funcs=reward,
        args=tiny_args(tmp_path / "run", max_steps=1, num_eval_prompts=6),
        train_dataset=dataset,
        eval_dataset=dataset,
    )
    trainer.train()
    metrics = trainer.evaluate()
    train_call, first_eval, second_eval = seen[0], seen[-2], seen[-1]
    assert len(train_call["tag"]) == 6 and train_call["tag"][0] == train_call["tag"][1]  # K = 2 per context
    tags = list(dataset["tag"])
    assert (
        first_eval["tag"] == tags[:4] * 3 and second_eval["tag"] == tags[4:6] * 3
    )  # batches of 4, 3 schedules
    assert first_eval["include"][:4] == list(dataset["include"][:4])
    assert 0.0 <= trainer.state.log_history[0]["reward"] <= 1.0
    assert 0.0 <= metrics["eval_reward_learned"] <= 1.0
