"""GenEval-style object-focused rewards on real images (Ghosh et al., 2023, arXiv 2310.11513).

A transcription of GenEval's evaluator, djghosh13/geneval ``evaluation/evaluate_images.py`` (commit
``af4902f``, cited below as ``evaluate_images.py:LINE``), with the same rules and constants, on a detector and
a colour classifier that run here (transformers, no mmdet / open_clip / torchvision):

1. **Detection** (:class:`Mask2FormerDetector`): instance segmentation with a transformers
   ``Mask2FormerForUniversalSegmentation`` (default ``facebook/mask2former-swin-small-coco-instance``, the
   Mask2Former authors' Swin-S COCO instance model). GenEval runs mmdetection's
   ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco`` (same architecture, mmdet's own training): **the scores
   are GenEval-style, not official GenEval numbers** (the two detectors' confidences and masks differ). The
   test-time pipeline is mmdet 2.x's for that config: keep-ratio resize to fit (1333, 800), normalise,
   zero-pad to a multiple of 32; the post-processing is mmdet's ``MaskFormerFusionHead.instance_postprocess``
   (detectron2's ``instance_inference`` is the same), see :meth:`Mask2FormerDetector.postprocess`.
2. **Kept objects** (:func:`select_objects`, ``evaluate_images.py:229-243``): per class, detections with
   confidence ``> 0.3`` (``> 0.9`` when the row's ``tag`` is ``"counting"``), most confident first, at most 16
   per class, no NMS.
3. **Colour** (:class:`CLIPColorClassifier`, ``evaluate_images.py:81-127``): CLIP ViT-L/14 zero-shot over
   :data:`GENEVAL_COLORS` with GenEval's three templates (:data:`GENEVAL_COLOR_TEMPLATES`) on the box crop of
   the image composited with the instance mask onto a ``#999999`` background. GenEval uses open_clip's
   ``ViT-L-14`` ``pretrained="openai"``; the default here is the same OpenAI weights in transformers format,
   ``openai/clip-vit-large-patch14``.
4. **Rules** (:func:`evaluate_rules`, ``evaluate_images.py:160-220``): ``include`` clauses
   ``{"class", "count", "color"?, "position"?: [relation, clause_index]}`` need ``count`` kept objects (colour
   and position are checked on the ``count`` most confident ones); ``exclude`` clauses ``{"class", "count"}``
   fail when ``count`` or more are kept (so exact counting is include ``n`` + exclude ``n + 1``); positions by
   :func:`relative_position` with GenEval's ``0.1 x size`` margin.

Scores (per image): ``"score"`` is GenEval's verdict, 1.0 if every clause holds else 0.0 (GenEval's reported
number is the mean of this per ``tag``, then over tags: ``evaluation/summary_scores.py``). ``"partial"`` is a
graded version for training, 1.0 exactly when the verdict is 1.0, defined in :func:`evaluate_rules`. The
reward ``GenEvalReward(...)(images, prompts, include=..., exclude=..., tag=...)`` returns one of them
(``partial_credit``); :meth:`GenEvalReward.evaluate` returns the per-clause breakdown for logs. The rows come
from GenEval's ``prompts/evaluation_metadata.jsonl`` (:func:`load_geneval_metadata`)::

    >>> from trl_schedule.rewards.geneval import GenEvalReward, load_geneval_metadata
    >>> dataset = load_geneval_metadata("evaluation_metadata.jsonl")  # columns tag, prompt, include, exclude
    >>> reward = GenEvalReward(device="cuda")  # Mask2Former Swin-S + CLIP ViT-L/14, both from the hub cache
    >>> row = dataset[0]
    >>> scores = reward(images, [row["prompt"]] * len(images), include=[row["include"]] * len(images),
    ...                 exclude=[row["exclude"]] * len(images), tag=[row["tag"]] * len(images))
    >>> reward.evaluate(images, [row] * len(images))[0]["clauses"]  # per-clause results of image 0

Deliberate differences from GenEval (all documented where they happen): the images are float tensors, rounded
to 8-bit levels first (GenEval reads 8-bit PNGs); resizes run in torch (bilinear as cv2 for the detector,
antialiased bicubic as PIL for CLIP crops, each rounded back to 8 bits as the uint8 originals are), so pixels
can differ by one level; GenEval runs CLIP under CUDA fp16 autocast (``clip_benchmark``'s default), here the
model's dtype (float32 by default); a failed position clause reports its relations in a fixed order (GenEval
joins a Python ``set``, whose order varies between runs).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import follow_device
from .preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_DETECTOR",
    "GENEVAL_COLORS",
    "GENEVAL_COLOR_TEMPLATES",
    "GENEVAL_METADATA_URL",
    "GENEVAL_OBJECT_NAMES",
    "CLIPColorClassifier",
    "GenEvalDetections",
    "GenEvalObject",
    "GenEvalReward",
    "Mask2FormerDetector",
    "coco_label_to_geneval",
    "evaluate_rules",
    "load_geneval_metadata",
    "mask_to_box",
    "relative_position",
    "select_objects",
]

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
"""Default detector: the Mask2Former authors' Swin-S COCO instance-segmentation model, transformers format."""
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
"""Default colour classifier: OpenAI CLIP ViT-L/14 (GenEval's open_clip ``ViT-L-14`` "openai" weights)."""
GENEVAL_METADATA_URL = (
    "https://raw.githubusercontent.com/djghosh13/geneval/main/prompts/evaluation_metadata.jsonl"
)
"""GenEval's 553 evaluation prompts and clauses (djghosh13/geneval ``prompts/evaluation_metadata.jsonl``)."""

# djghosh13/geneval evaluation/object_names.txt (= prompts/object_names.txt), in order: the 80 COCO thing
# classes in COCO's contiguous-id order, which is how GenEval maps mmdet's class index to a name
# (evaluate_images.py:71).
GENEVAL_OBJECT_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""GenEval's 80 object names (``evaluation/object_names.txt``), index = COCO contiguous class id."""

GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
"""GenEval's colour classes, in its order (``evaluate_images.py:76``; ties in argmax go to the first)."""

GENEVAL_COLOR_TEMPLATES = (
    "a photo of a {c} {classname}",
    "a photo of a {c}-colored {classname}",
    "a photo of a {c} object",
)
"""GenEval's zero-shot colour prompts (``evaluate_images.py:114-116``), always with the article "a"."""

GENEVAL_POSITION_RELATIONS = ("left of", "right of", "above", "below")
"""GenEval's relations (``evaluate_images.py:153-156``); "above" / "below" with y pointing down."""

# Other names COCO label maps use for GenEval's classes (detectron2 / mmdet / the HF label files use "mouse",
# "remote", "keyboard"; PASCAL-VOC-style names such as "sofa", "tvmonitor" come from other checkpoints).
_COCO_ALIASES = {
    "mouse": "computer mouse",
    "remote": "tv remote",
    "keyboard": "computer keyboard",
    "tvmonitor": "tv",
    "hairdryer": "hair drier",
    "sofa": "couch",
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "doughnut": "donut",
    "tennisracquet": "tennis racket",
    "ski": "skis",
    "fridge": "refrigerator",
}  # keys without spaces, "_" or "-": names are compared that way ("pottedplant" = "potted plant")

_GREY = 153.0 / 255.0  # ImageCrops' default bgcolor "#999" (evaluate_images.py:84)
_MMDET_MEAN = (
    123.675,
    116.28,
    103.53,
)  # mmdet img_norm_cfg of the Mask2Former configs (= ImageNet, 0-255 scale)
_MMDET_STD = (58.395, 57.12, 57.375)


# ----------------------------------------------------------------------------------------------------------
# Data structures and pure rule logic (no model)
# ----------------------------------------------------------------------------------------------------------


@dataclass
class GenEvalObject:
    """One kept detection, as GenEval's rules see it.

    Args:
        box (`tuple[float, float, float, float]`): ``(x0, y0, x1, y1)`` in pixels of the original image, as
            mmdet's ``mask2bbox`` gives it (``x1``/``y1`` one past the last mask pixel).
        score (`float`): detection confidence.
        mask (`torch.Tensor` of shape `(H, W)`, *optional*): bool instance mask (used for the colour crop).
        color (`str`, *optional*): the colour the classifier gave it, once classified.
    """

    box: tuple[float, float, float, float]
    score: float
    mask: torch.Tensor | None = field(default=None, repr=False)
    color: str | None = None


@dataclass
class GenEvalDetections:
    """All candidate detections of one image (the detector's output, before GenEval's thresholds).

    Args:
        boxes (`torch.Tensor` of shape `(K, 4)`): ``(x0, y0, x1, y1)`` pixels, float32 (see
            :func:`mask_to_box`).
        scores (`torch.Tensor` of shape `(K,)`): confidences in ``[0, 1]``.
        labels (`torch.Tensor` of shape `(K,)`): int64 indices into :data:`GENEVAL_OBJECT_NAMES`.
        masks (`torch.Tensor` of shape `(K, H, W)`, *optional*): bool instance masks at the image's
            resolution.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.scores.numel())


def mask_to_box(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks, mmdetection's ``mask2bbox`` (mmdet 2.x ``mmdet/core/mask/utils.py``).

    ``[x_first, y_first, x_last + 1, y_last + 1]`` of the mask's pixels; all zeros for an empty mask.

    Args:
        masks (`torch.Tensor` of shape `(K, H, W)`): bool masks.

    Returns:
        `torch.Tensor` of shape `(K, 4)`, float32.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (K, H, W), got shape {tuple(masks.shape)}.")
    k, h, w = masks.shape
    if k == 0 or h == 0 or w == 0:
        return torch.zeros(k, 4, dtype=torch.float32, device=masks.device)
    masks = masks.bool()
    x_any = masks.any(dim=1)  # (K, W)
    y_any = masks.any(dim=2)  # (K, H)
    x_idx = torch.arange(w, device=masks.device)
    y_idx = torch.arange(h, device=masks.device)
    x0 = torch.where(x_any, x_idx, w).amin(dim=1)
    x1 = torch.where(x_any, x_idx, -1).amax(dim=1) + 1
    y0 = torch.where(y_any, y_idx, h).amin(dim=1)
    y1 = torch.where(y_any, y_idx, -1).amax(dim=1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    nonempty = (x_any.any(dim=1) & y_any.any(dim=1)).unsqueeze(1)
    return torch.where(nonempty, boxes, torch.zeros_like(boxes))


def relative_position(box_a: Sequence[float], box_b: Sequence[float], threshold: float = 0.1) -> set[str]:
    """Relations of box A relative to box B: GenEval's ``relative_position`` (``evaluate_images.py:140-157``).

    With centres ``c`` and sizes ``d = (width, height)``, ``o = c_A - c_B`` is shrunk towards 0 by
    ``threshold * (d_A + d_B)`` per axis (clipped at 0) and divided by ``|o|``; ``x < -0.5`` gives "left of",
    ``x > 0.5`` "right of", ``y < -0.5`` "above", ``y > 0.5`` "below" (strict inequalities: exactly 0.5 is no
    relation). Both shrunk components below ``1e-3`` give no relation. Computed in float32, as GenEval does on
    mmdet's float32 boxes.

    Args:
        box_a, box_b (`Sequence[float]`): ``(x0, y0, x1, y1)`` (extra entries, e.g. a score, are ignored).
        threshold (`float`, defaults to 0.1): GenEval's ``POSITION_THRESHOLD``.

    Returns:
        `set[str]`: a subset of ``{"left of", "right of", "above", "below"}``.
    """
    boxes = np.array([np.asarray(box_a, dtype=np.float32)[:4], np.asarray(box_b, dtype=np.float32)[:4]])
    boxes = boxes.reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised_offset = np.maximum(np.abs(offset) - float(threshold) * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised_offset) < 1e-3):
        return set()
    dx, dy = revised_offset / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def select_objects(
    detections: GenEvalDetections,
    tag: str | None = None,
    threshold: float = 0.3,
    counting_threshold: float = 0.9,
    max_objects: int = 16,
) -> dict[str, list[GenEvalObject]]:
    """GenEval's kept objects per class (``evaluate_images.py:229-243``, with ``NMS_THRESHOLD = 1``: no NMS).

    Per class: detections with score ``> threshold`` (``> counting_threshold`` when ``tag == "counting"``;
    compared in float32 as GenEval does on mmdet's float32 scores), in decreasing score order, the first
    ``max_objects``. Classes with none are absent.

    Args:
        detections (`GenEvalDetections`): one image's detections.
        tag (`str`, *optional*): the metadata row's tag.
        threshold, counting_threshold (`float`): GenEval's ``THRESHOLD`` (0.3) and ``COUNTING_THRESHOLD``
            (0.9), ``evaluate_images.py:286-287``.
        max_objects (`int`): GenEval's ``MAX_OBJECTS`` (16, ``evaluate_images.py:288``).

    Returns:
        `dict[str, list[GenEvalObject]]`: class name -> its kept objects, most confident first.
    """
    thr = counting_threshold if tag == "counting" else threshold
    scores = detections.scores.detach().float().cpu()
    labels = detections.labels.detach().long().cpu()
    boxes = detections.boxes.detach().float().cpu()
    order = torch.sort(scores, descending=True, stable=True).indices
    above = (scores > torch.tensor(thr, dtype=torch.float32)).tolist()  # float32, as on mmdet's arrays
    objects: dict[str, list[GenEvalObject]] = {}
    for i in order.tolist():
        if not above[i]:  # also drops NaN
            continue
        score = float(scores[i])
        label = int(labels[i])
        if not 0 <= label < len(GENEVAL_OBJECT_NAMES):
            raise ValueError(
                f"detection label {label} is not an index into GENEVAL_OBJECT_NAMES (0..79); map the "
                f"detector's labels with coco_label_to_geneval(...) first."
            )
        kept = objects.setdefault(GENEVAL_OBJECT_NAMES[label], [])
        if len(kept) < max_objects:
            mask = detections.masks[i] if detections.masks is not None else None
            kept.append(GenEvalObject(box=tuple(boxes[i].tolist()), score=score, mask=mask))
    return objects


def _position_spec(position: Any) -> tuple[str, int] | None:
    """``[relation, index]`` (GenEval) or ``{"relation", "index"}`` (dataset struct) -> tuple, or None."""
    if position is None:
        return None
    if isinstance(position, Mapping):
        relation, index = position.get("relation"), position.get("index")
        if relation is None and index is None:
            return None
    else:
        if isinstance(position, str) or len(position) != 2:
            raise ValueError(
                f"include clause position={position!r} must be [relation, clause_index] as in GenEval's "
                f"metadata (e.g. ['right of', 0]) or {{'relation': ..., 'index': ...}}."
            )
        relation, index = position
    if relation not in GENEVAL_POSITION_RELATIONS:
        raise ValueError(
            f"include clause position relation {relation!r} is not one of {list(GENEVAL_POSITION_RELATIONS)}."
        )
    return str(relation), int(index)


def _clauses(metadata: Mapping[str, Any], key: str) -> list[dict]:
    """A row's include / exclude clauses with ``None`` fields (the dataset's padding) dropped."""
    value = metadata.get(key)
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(
            f"metadata[{key!r}] must be a list of clauses such as [{{'class': 'dog', 'count': 1}}], got "
            f"{type(value).__name__}: {value!r}."
        )
    out = []
    for clause in value:
        if not isinstance(clause, Mapping) or "class" not in clause or "count" not in clause:
            raise ValueError(
                f"metadata[{key!r}] clause {clause!r} must be a dict with 'class' and 'count' (GenEval's "
                f"format)."
            )
        if clause["class"] not in GENEVAL_OBJECT_NAMES:
            raise ValueError(
                f"metadata[{key!r}] class {clause['class']!r} is not one of GenEval's 80 object names "
                f"(GENEVAL_OBJECT_NAMES, e.g. 'dining table', 'computer mouse', 'tv remote')."
            )
        count = int(clause["count"])
        if count < 1:
            raise ValueError(f"metadata[{key!r}] clause {dict(clause)!r} needs count >= 1.")
        cleaned = {"class": clause["class"], "count": count}
        if key == "include":
            color = clause.get("color")
            if color is not None:
                if color not in GENEVAL_COLORS:
                    raise ValueError(f"include clause color {color!r} is not one of {list(GENEVAL_COLORS)}.")
                cleaned["color"] = color
            position = _position_spec(clause.get("position"))
            if position is not None:
                cleaned["position"] = position
        out.append(cleaned)
    return out


def normalize_metadata(metadata: Mapping[str, Any] | str) -> dict:
    """One GenEval metadata row (a dict, or its JSON text) in canonical form.

    Accepts GenEval's jsonl rows and the rows of :func:`load_geneval_metadata` (whose clauses carry
    ``color=None`` / ``position=None`` padding and ``position`` as ``{"relation", "index"}``).

    Returns:
        `dict` with ``tag`` (str or None), ``prompt`` (str or None), ``include`` and ``exclude`` (lists of
        clauses; ``position`` as a ``(relation, index)`` tuple, absent fields removed).

    Raises:
        ValueError: naming the bad field (unknown class or colour, a position that refers to a later
            clause...).
    """
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    if not isinstance(metadata, Mapping):
        raise ValueError(
            f"metadata must be a GenEval row (dict with 'include', optional 'exclude', 'tag'), got "
            f"{type(metadata).__name__}."
        )
    include = _clauses(metadata, "include")
    for i, clause in enumerate(include):
        if "position" in clause and not 0 <= clause["position"][1] < i:
            raise ValueError(
                f"include clause {i} position {list(clause['position'])} refers to clause "
                f"{clause['position'][1]}; "
                f"it must name an earlier include clause (0..{i - 1})."
            )
    return {
        "tag": metadata.get("tag"),
        "prompt": metadata.get("prompt"),
        "include": include,
        "exclude": _clauses(metadata, "exclude"),
    }


def color_requests(
    objects: Mapping[str, Sequence[GenEvalObject]], metadata: Mapping[str, Any], partial: bool = False
) -> list[tuple[str, int]]:
    """The ``(class, object_index)`` pairs whose colour the rules need, in clause order, without repeats.

    GenEval classifies the ``count`` most confident objects of a colour clause only when there are ``count``
    of them (``evaluate_images.py:176-183``); ``partial=True`` also classifies the fewer ones a short clause
    has (the partial-credit colour term counts them).
    """
    meta = normalize_metadata(metadata)
    out: list[tuple[str, int]] = []
    for clause in meta["include"]:
        if "color" not in clause:
            continue
        found = list(objects.get(clause["class"], []))[: clause["count"]]
        if len(found) < clause["count"] and not (partial and found):
            continue
        for j in range(len(found)):
            if (clause["class"], j) not in out:
                out.append((clause["class"], j))
    return out


def _relations_text(relations: set[str]) -> str:
    return " and ".join(r for r in GENEVAL_POSITION_RELATIONS if r in relations)


def evaluate_rules(
    objects: Mapping[str, Sequence[GenEvalObject]],
    metadata: Mapping[str, Any] | str,
    position_threshold: float = 0.1,
) -> dict:
    """GenEval's verdict on one image's kept objects, and the partial credit; pure (no model).

    The verdict transcribes GenEval's ``evaluate`` (``evaluate_images.py:160-220``): include clauses in order,
    each with ``found`` = its class's first ``count`` kept objects:

    - fewer than ``count`` found: the clause fails ("expected {class}>={count}, found {k}");
    - ``color``: fails unless all ``count`` found objects have that colour;
    - ``position = [relation, j]`` (checked only if the clause has not failed yet): fails if clause ``j``
      failed ("no target ...") or if any (found object, clause-``j`` object) pair lacks the relation
      (:func:`relative_position`, object relative to target);

    then each exclude clause fails when its class has ``count`` or more kept objects. Correct = no failure.

    Partial credit (``"partial"``, in ``[0, 1]``, 1 exactly when correct). Each include clause of class ``c``
    with count ``n``, ``k`` kept objects and ``m = min(k, n)`` found ones contributes terms:

    - ``count = m / n``;
    - with a colour: ``color = (found objects of that colour) / n``;
    - with ``position = [relation, j]``: ``position = (pairs with the relation) / (n * n_j)`` over the found
      objects x clause ``j``'s found objects (``n_j`` its count; a missing object is a failed pair).

    Each exclude clause ``(c, e)`` with ``k`` kept objects gives a factor ``1`` if ``k < e`` else
    ``max(0, 1 - (k - e + 1) / max(e - 1, 1))``. ``partial = mean(include terms) * prod(exclude factors)``
    (only the factors when there is no include clause). For GenEval's exact counting (include ``n``, exclude
    ``n + 1``) this is ``max(0, 1 - |k - n| / n)``, Flow-GRPO's counting reward (yifan123/reward-server
    ``reward_server/gen_eval.py::evaluate_reward``); unlike Flow-GRPO, surplus objects cost nothing outside
    exclude clauses (as in GenEval's verdict), the exclude clauses count, and a failed position gives 0
    (Flow-GRPO's loop appends 0 then 1).

    Args:
        objects (`Mapping[str, Sequence[GenEvalObject]]`): class -> kept objects, most confident first
            (:func:`select_objects`); objects a colour clause looks at need ``color`` set
            (:func:`color_requests` lists them).
        metadata (`dict` or `str`): the GenEval row (see :func:`normalize_metadata`).
        position_threshold (`float`, defaults to 0.1): GenEval's ``POSITION_THRESHOLD``.

    Returns:
        `dict` with ``correct`` (bool), ``score`` (1.0 / 0.0), ``partial`` (float), ``reason`` (GenEval's
        reason lines joined by newlines, "" when correct) and ``clauses``: one dict per clause, include
        clauses first: ``{"type": "include", "class", "count", "found" (kept objects of the class, up to
        max_objects), "passed", "terms": {"count", "color"?, "position"?}, "color"?, "colors"? (of the found
        objects), "position"?, "reason"?}`` and ``{"type": "exclude", "class", "count", "found", "passed",
        "factor", "reason"?}``.
    """
    meta = normalize_metadata(metadata)
    correct = True
    reasons: list[str] = []
    clauses: list[dict] = []
    matched_groups: list[list[GenEvalObject] | None] = []
    founds: list[list[GenEvalObject]] = []
    terms_all: list[float] = []
    for clause in meta["include"]:
        classname, count = clause["class"], clause["count"]
        kept = list(objects.get(classname, []))
        found = kept[:count]
        founds.append(found)
        info: dict[str, Any] = {
            "type": "include",
            "class": classname,
            "count": count,
            "found": len(kept),
            "passed": True,
        }
        terms: dict[str, float] = {"count": len(found) / count}
        matched = True
        reason = None
        if "color" in clause:
            wanted = clause["color"]
            colors = [obj.color for obj in found]
            if len(found) >= count and any(c is None for c in colors):
                raise ValueError(
                    f"the colour clause on {classname!r} needs the colours of its {count} most confident "
                    f"objects; "
                    f"set GenEvalObject.color (see color_requests) before evaluate_rules."
                )
            info["color"] = wanted
            info["colors"] = colors
            terms["color"] = sum(c == wanted for c in colors) / count
        if "position" in clause:
            relation, target = clause["position"]
            info["position"] = [relation, target]
            target_count = meta["include"][target]["count"]
            pairs = sum(
                relation in relative_position(obj.box, tgt.box, position_threshold)
                for obj in found
                for tgt in founds[target]
            )
            terms["position"] = pairs / (count * target_count)
        # The verdict, exactly in GenEval's order (evaluate_images.py:170-219).
        if len(found) < count:
            matched = False
            reason = f"expected {classname}>={count}, found {len(found)}"
        else:
            if "color" in clause:
                colors = info["colors"]
                n_wanted = colors.count(clause["color"])
                if n_wanted < count:
                    matched = False
                    reason = (
                        f"expected {clause['color']} {classname}>={count}, found {n_wanted} "
                        f"{clause['color']}; and "
                        + ", ".join(f"{colors.count(c)} {c}" for c in GENEVAL_COLORS if c in colors)
                    )
            if "position" in clause and matched:
                relation, target = clause["position"]
                if matched_groups[target] is None:
                    matched = False
                    reason = f"no target for {classname} to be {relation}"
                else:
                    for obj in found:
                        for tgt in matched_groups[target]:
                            true_rels = relative_position(obj.box, tgt.box, position_threshold)
                            if relation not in true_rels:
                                matched = False
                                reason = (
                                    f"expected {classname} {relation} target, found "
                                    f"{_relations_text(true_rels)} target"
                                )
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
        if not matched:
            correct = False
            reasons.append(reason)
            info["reason"] = reason
        info["passed"] = matched
        info["terms"] = terms
        terms_all.extend(terms.values())
        clauses.append(info)
    factor = 1.0
    for clause in meta["exclude"]:
        classname, count = clause["class"], clause["count"]
        k = len(objects.get(classname, []))
        passed = k < count
        clause_factor = 1.0 if passed else max(0.0, 1.0 - (k - count + 1) / max(count - 1, 1))
        info = {"type": "exclude", "class": classname, "count": count, "found": k, "passed": passed}
        info["factor"] = clause_factor
        if not passed:
            correct = False
            info["reason"] = f"expected {classname}<{count}, found {k}"
            reasons.append(info["reason"])
        factor *= clause_factor
        clauses.append(info)
    partial = (sum(terms_all) / len(terms_all) if terms_all else 1.0) * factor
    if correct:
        partial = 1.0  # exact (the terms are all 1 then; this only removes float round-off)
    return {
        "correct": correct,
        "score": 1.0 if correct else 0.0,
        "partial": float(partial),
        "reason": "\n".join(reasons),
        "clauses": clauses,
    }


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------


def _quantize(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> the nearest 8-bit levels (what GenEval reads from its PNGs), still float."""
    return images.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def _load_pretrained(loader: Callable[[], Any], what: str, path: str, files: str) -> Any:
    try:
        return loader()
    except OSError as err:
        raise FileNotFoundError(
            f"could not load the {what} from {path!r} ({type(err).__name__}: {err}). Pass a local "
            f"directory, or on a machine with network run `hf download {path} {files}--local-dir "
            f"ckpt/{os.path.basename(path)}` "
            f"(huggingface_hub >= 0.34; older: `huggingface-cli download ...`) and pass that directory, or "
            f"set HF_HOME to a cache that holds it."
        ) from err


def coco_label_to_geneval(id2label: Mapping[int, str], class_names: Sequence[str] | None = None) -> list[int]:
    """Map a detector's labels to indices into :data:`GENEVAL_OBJECT_NAMES` (-1: not a GenEval class).

    Names are matched lower-cased without spaces, ``_`` or ``-`` ("pottedplant" = "potted plant"), with the
    usual COCO / VOC aliases ("mouse" -> "computer mouse", "remote" -> "tv remote", "keyboard" ->
    "computer keyboard", "tvmonitor" -> "tv", "hair dryer" -> "hair drier", "sofa" -> "couch", ...).
    A model with exactly 80 generic labels (``LABEL_0``...) is taken in COCO contiguous order, as GenEval
    does.

    Args:
        id2label (`Mapping[int, str]`): the model config's ``id2label``.
        class_names (`Sequence[str]`, *optional*): explicit GenEval name (or None) per model label, overriding
            it.

    Returns:
        `list[int]` of length ``len(id2label)``.

    Raises:
        ValueError: some GenEval class has no model label (the names are listed; pass ``class_names``).
    """
    num = len(id2label)
    if class_names is not None:
        if len(class_names) != num:
            raise ValueError(
                f"class_names has {len(class_names)} entries but the detector has {num} labels; pass one "
                f"GenEval object name (or None) per model label."
            )
        names = [None if n is None else str(n) for n in class_names]
    else:
        names = [str(id2label[i]) for i in range(num)]
        if num == len(GENEVAL_OBJECT_NAMES) and all(n.upper().startswith("LABEL_") for n in names):
            names = list(GENEVAL_OBJECT_NAMES)

    def squash(text: str) -> str:
        return re.sub(r"[\s_\-]+", "", text.lower())

    lookup = {squash(n): i for i, n in enumerate(GENEVAL_OBJECT_NAMES)}
    lookup.update({alias: lookup[squash(target)] for alias, target in _COCO_ALIASES.items()})
    mapping = [-1 if name is None else lookup.get(squash(name), -1) for name in names]
    missing = [n for i, n in enumerate(GENEVAL_OBJECT_NAMES) if i not in mapping]
    if missing:
        raise ValueError(
            f"the detector's labels cover no class for GenEval's {missing}; pass class_names=[...] (one "
            f"GenEval name or None per model label) to map them, e.g. from the checkpoint's id2label."
        )
    return mapping


class Mask2FormerDetector:
    """Instance segmentation for GenEval with transformers' ``Mask2FormerForUniversalSegmentation``, in torch.

    Preprocessing (mmdet 2.x test pipeline of ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``: ``Resize``
    (1333, 800) keep-ratio, ``Normalize``, ``Pad`` size_divisor 32; detectron2's Mask2Former test input is the
    same): images are rounded to 8-bit levels, scaled by ``min(max_size / long side, min_size / short side)``
    to ``int(side * scale + 0.5)`` with bilinear interpolation (half-pixel centres, no antialiasing, as cv2's
    ``INTER_LINEAR``) rounded back to 8-bit levels, normalised with the ImageNet mean/std (0-255 scale
    ``(123.675, 116.28, 103.53)`` / ``(58.395, 57.12, 57.375)``) and zero-padded bottom/right to a multiple of
    32. The transformers image processor is not used (its fast variant needs torchvision, and its
    ``post_process_instance_segmentation`` resizes the masks through a fixed 384x384 grid).
    Post-processing: :meth:`postprocess`.

    Args:
        model_name_or_path (`str`, defaults to :data:`DEFAULT_DETECTOR`): a local directory or hub id holding
            ``config.json`` and the weights of a COCO instance-segmentation Mask2Former.
        device (`str` or `torch.device`, *optional*): where to run; by default the model follows the images.
        dtype (`torch.dtype`, *optional*): model dtype (default float32); the post-processing runs in float32.
        min_size, max_size (`int`, defaults to 800 and 1333): the resize rule above.
        size_divisor (`int`, defaults to 32): padding multiple.
        max_per_image (`int`, defaults to 100): top (query, class) pairs kept (mmdet's ``max_per_image``).
        class_names (`Sequence[str]`, *optional*): GenEval name per model label (see
            :func:`coco_label_to_geneval`).
        batch_size (`int`, defaults to 8): images per forward pass.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = DEFAULT_DETECTOR,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        min_size: int = 800,
        max_size: int = 1333,
        size_divisor: int = 32,
        max_per_image: int = 100,
        class_names: Sequence[str] | None = None,
        batch_size: int = 8,
    ):
        from transformers import Mask2FormerForUniversalSegmentation

        path = os.fspath(model_name_or_path)
        model = _load_pretrained(
            lambda: Mask2FormerForUniversalSegmentation.from_pretrained(path, dtype=dtype or torch.float32),
            "Mask2Former detector",
            path,
            "",
        )
        self._setup(
            model, device, dtype, min_size, max_size, size_divisor, max_per_image, class_names, batch_size
        )

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        min_size: int = 800,
        max_size: int = 1333,
        size_divisor: int = 32,
        max_per_image: int = 100,
        class_names: Sequence[str] | None = None,
        batch_size: int = 8,
    ) -> Mask2FormerDetector:
        """Wrap an already-built ``Mask2FormerForUniversalSegmentation`` (e.g. a tiny random one in tests)."""
        detector = cls.__new__(cls)
        detector._setup(
            model, device, dtype, min_size, max_size, size_divisor, max_per_image, class_names, batch_size
        )
        return detector

    def _setup(
        self, model, device, dtype, min_size, max_size, size_divisor, max_per_image, class_names, batch_size
    ) -> None:
        for name, value in (
            ("min_size", min_size),
            ("max_size", max_size),
            ("size_divisor", size_divisor),
            ("batch_size", batch_size),
        ):
            if int(value) < 1:
                raise ValueError(f"{name}={value} must be a positive integer.")
        self.batch_size = int(batch_size)
        if max_per_image < 1:
            raise ValueError(f"max_per_image={max_per_image} must be >= 1 (mmdet uses 100).")
        self.dtype = dtype or torch.float32
        self.model = model.to(dtype=self.dtype).eval().requires_grad_(False)
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.model.to(self.device)
        self.min_size, self.max_size, self.size_divisor = int(min_size), int(max_size), int(size_divisor)
        self.max_per_image = int(max_per_image)
        self.label_map = torch.tensor(
            coco_label_to_geneval(model.config.id2label, class_names), dtype=torch.long
        )

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """mmcv ``rescale_size`` for ``img_scale=(max_size, min_size)``: the keep-ratio size ``(h, w)``."""
        scale = min(self.max_size / max(height, width), self.min_size / min(height, width))
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(N, 3, H, W)`` in [0, 1] -> padded, normalised ``pixel_values`` and the resized ``(h, w)``."""
        _check_images(images)
        height, width = images.shape[-2:]
        new_h, new_w = self.resized_size(height, width)
        x = _quantize(images.float()) * 255.0
        if (new_h, new_w) != (height, width):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
            x = x.round().clamp(0.0, 255.0)
        mean = torch.tensor(_MMDET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(_MMDET_STD, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        pad_h = -new_h % self.size_divisor
        pad_w = -new_w % self.size_divisor
        return F.pad(x, (0, pad_w, 0, pad_h)), (new_h, new_w)

    def postprocess(
        self,
        class_logits: torch.Tensor,
        mask_logits: torch.Tensor,
        padded_size: tuple[int, int],
        resized_size: tuple[int, int],
        original_size: tuple[int, int],
        score_floor: float = 0.0,
    ) -> GenEvalDetections:
        """One image's instances from the last decoder layer, as mmdet 2.x computes them.

        ``MaskFormerHead.simple_test`` upsamples the mask logits (bilinear, ``align_corners=False``) to the
        padded input, ``MaskFormerFusionHead.simple_test`` crops the padding and resizes to the original image
        (bilinear), and ``instance_postprocess`` takes the top ``max_per_image`` of ``softmax(class)[:, :-1]``
        over all (query, class) pairs, binarises each pair's mask at logit ``> 0``, and scores it
        ``class prob * mean(sigmoid(logit) over the mask)`` (``/ (area + 1e-6)``), with ``mask2bbox`` boxes.

        Pairs whose class probability is ``<= score_floor`` are dropped before their masks are computed: exact
        for any later threshold ``>= score_floor`` (the mask factor is at most 1), and much cheaper.

        Args:
            class_logits (`torch.Tensor` of shape `(Q, C + 1)`): ``class_queries_logits`` of one image.
            mask_logits (`torch.Tensor` of shape `(Q, h, w)`): ``masks_queries_logits`` (1/4 of the padded
                input).
            padded_size, resized_size, original_size (`tuple[int, int]`): ``(H, W)`` of the padded input, of
                the resized image inside it, and of the original image.
            score_floor (`float`, defaults to 0): see above.

        Returns:
            `GenEvalDetections` with labels mapped to :data:`GENEVAL_OBJECT_NAMES` (model labels that are not
            GenEval classes are dropped), most confident first.
        """
        num_classes = class_logits.shape[1] - 1
        label_map = self.label_map.to(class_logits.device)
        probs = class_logits.float().softmax(dim=-1)[:, :-1]
        k = min(self.max_per_image, probs.numel())
        scores, top = probs.flatten().topk(k, sorted=False)
        labels, queries = top % num_classes, top // num_classes
        keep = (label_map[labels] >= 0) & (scores > score_floor)
        scores, labels, queries = scores[keep], label_map[labels[keep]], queries[keep]
        height, width = original_size
        if scores.numel() == 0:
            empty = torch.zeros(0, height, width, dtype=torch.bool, device=class_logits.device)
            return GenEvalDetections(scores.new_zeros(0, 4), scores, labels, empty)
        unique, inverse = torch.unique(queries, return_inverse=True)
        masks = mask_logits[unique].float().unsqueeze(0)
        masks = F.interpolate(masks, size=tuple(padded_size), mode="bilinear", align_corners=False)
        masks = masks[:, :, : resized_size[0], : resized_size[1]]
        masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)[0]
        binary = masks > 0
        mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
        boxes = mask_to_box(binary)
        det_scores = scores * mask_scores[inverse]
        order = torch.sort(det_scores, descending=True, stable=True).indices
        return GenEvalDetections(
            boxes=boxes[inverse][order],
            scores=det_scores[order],
            labels=labels[order],
            masks=binary[inverse][order],
        )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, score_floor: float = 0.0) -> list[GenEvalDetections]:
        """Detect the objects of a batch: ``(N, 3, H, W)`` in [0, 1] -> N :class:`GenEvalDetections` (on the
        images' device; see :meth:`postprocess` for ``score_floor``)."""
        device = follow_device(self.model, self.device, images)
        original = tuple(images.shape[-2:])
        out = []
        for start in range(0, len(images), self.batch_size):
            pixel_values, resized = self.preprocess(images[start : start + self.batch_size].to(device))
            outputs = self.model(
                pixel_values=pixel_values.to(self.dtype),
                output_hidden_states=not getattr(self.model.config, "use_auxiliary_loss", True),
                output_auxiliary_logits=False,
            )
            padded = tuple(pixel_values.shape[-2:])
            for class_logits, mask_logits in zip(outputs.class_queries_logits, outputs.masks_queries_logits):
                det = self.postprocess(class_logits, mask_logits, padded, resized, original, score_floor)
                out.append(
                    GenEvalDetections(
                        det.boxes.to(images.device),
                        det.scores.to(images.device),
                        det.labels.to(images.device),
                        det.masks.to(images.device),
                    )
                )
        return out


class CLIPColorClassifier:
    """GenEval's CLIP zero-shot colour classifier (``evaluate_images.py:81-127``), transformers ``CLIPModel``.

    Per class name, the text classifier is ``clip_benchmark``'s ``zero_shot_classifier``: for each colour the
    L2-normalised text embeddings of the templates are averaged and re-normalised, giving ``W`` of shape
    ``(D, num_colors)``. An object's crop (``ImageCrops``): the image where the mask is, ``#999999`` elsewhere
    (PIL ``Image.composite``), cropped to the box (PIL ``crop``: coordinates rounded), then open_clip's
    validation transform: resize the shorter side to the model's input size (bicubic, antialiased as PIL's;
    the longer side to ``int(size * long / short)``; skipped when already that size), horizontally then
    vertically with a rounding to 8-bit levels after each pass (as PIL does on uint8 images), centre crop,
    normalise with the OpenAI CLIP mean/std. ``logits = 100 * normalize(E_img(crop)) @ W`` and
    the colour is the argmax (``run_classification``).

    Args:
        model_name_or_path (`str`, defaults to :data:`DEFAULT_CLIP`): a local directory or hub id holding a
            transformers ``CLIPModel`` and its tokenizer.
        device (`str` or `torch.device`, *optional*): where to run; by default the model follows the images.
        dtype (`torch.dtype`, *optional*): model dtype (default float32; GenEval runs fp16 autocast on CUDA).
        colors (`Sequence[str]`, defaults to :data:`GENEVAL_COLORS`): the classes.
        templates (`Sequence[str]`, defaults to :data:`GENEVAL_COLOR_TEMPLATES`): with ``{c}`` (colour) and
            ``{classname}`` fields.
        background (`float`, defaults to 153/255): the grey outside the mask.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike = DEFAULT_CLIP,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        colors: Sequence[str] = GENEVAL_COLORS,
        templates: Sequence[str] = GENEVAL_COLOR_TEMPLATES,
        background: float = _GREY,
    ):
        from transformers import AutoTokenizer, CLIPModel

        path = os.fspath(model_name_or_path)
        files = (
            "config.json model.safetensors tokenizer.json tokenizer_config.json vocab.json merges.txt "
            "special_tokens_map.json "
        )
        model = _load_pretrained(
            lambda: CLIPModel.from_pretrained(path, dtype=dtype or torch.float32), "CLIP model", path, files
        )
        tokenizer = _load_pretrained(
            lambda: AutoTokenizer.from_pretrained(path), "CLIP tokenizer", path, files
        )
        self._setup(model, tokenizer, device, dtype, colors, templates, background)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer: Any,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        colors: Sequence[str] = GENEVAL_COLORS,
        templates: Sequence[str] = GENEVAL_COLOR_TEMPLATES,
        background: float = _GREY,
    ) -> CLIPColorClassifier:
        """Wrap an already-built transformers ``CLIPModel`` and tokenizer (e.g. tiny random ones in tests)."""
        classifier = cls.__new__(cls)
        classifier._setup(model, tokenizer, device, dtype, colors, templates, background)
        return classifier

    def _setup(self, model, tokenizer, device, dtype, colors, templates, background) -> None:
        if not colors or len(set(colors)) != len(colors):
            raise ValueError(f"colors={list(colors)} must be a non-empty list of distinct colour names.")
        for template in templates:
            if "{c}" not in template:
                raise ValueError(f"colour template {template!r} needs a '{{c}}' field for the colour.")
        if not 0.0 <= background <= 1.0:
            raise ValueError(f"background={background} must be a grey level in [0, 1] (GenEval: 153/255).")
        self.dtype = dtype or torch.float32
        self.model = model.to(dtype=self.dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else None
        if self.device is not None:
            self.model.to(self.device)
        self.colors = tuple(colors)
        self.templates = tuple(templates)
        self.background = float(background)
        self.image_size = int(model.config.vision_config.image_size)
        self.max_length = min(
            int(getattr(tokenizer, "model_max_length", 77) or 77),
            model.config.text_config.max_position_embeddings,
        )
        self._classifiers: dict[tuple[str, str], torch.Tensor] = {}

    def _device(self, like: torch.Tensor | None = None) -> torch.device:
        if like is not None:
            return follow_device(self.model, self.device, like)
        return self.device or next(self.model.parameters()).device

    @torch.no_grad()
    def text_classifier(self, classname: str, device: torch.device | None = None) -> torch.Tensor:
        """The zero-shot weights for one object class, ``(D, num_colors)`` float32 (cached per class)."""
        device = device or self._device()
        key = (classname, str(device))
        if key not in self._classifiers:
            texts = [t.format(c=color, classname=classname) for color in self.colors for t in self.templates]
            tokens = self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(device)
            emb = self.model.get_text_features(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
            )
            emb = F.normalize(emb.pooler_output.float(), dim=-1).view(
                len(self.colors), len(self.templates), -1
            )
            weights = emb.mean(dim=1)
            weights = weights / weights.norm(dim=-1, keepdim=True)
            self._classifiers[key] = weights.T.contiguous()
        return self._classifiers[key]

    def crop(
        self, image: torch.Tensor, box: Sequence[float], mask: torch.Tensor | None
    ) -> torch.Tensor | None:
        """One object's CLIP input ``(3, S, S)`` (normalised), or None for an empty box.

        Args:
            image (`torch.Tensor` of shape `(3, H, W)`): in [0, 1] (rounded to 8-bit levels here).
            box (`Sequence[float]`): ``(x0, y0, x1, y1)``; rounded like PIL's ``crop`` (Python ``round``);
                parts outside the image are black, as in PIL.
            mask (`torch.Tensor` of shape `(H, W)`, *optional*): the instance mask; None keeps the whole crop.
        """
        image = _quantize(image.float())
        if mask is not None:
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} does not match the image {tuple(image.shape[-2:])}; "
                    f"pass masks at the image's resolution."
                )
            grey = torch.full_like(image, self.background)
            image = torch.where(mask.to(image.device, torch.bool).unsqueeze(0), image, _quantize(grey))
        x0, y0, x1, y1 = (int(round(float(v))) for v in list(box)[:4])
        if x1 <= x0 or y1 <= y0:
            return None
        height, width = image.shape[-2:]
        patch = image.new_zeros(3, y1 - y0, x1 - x0)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if sx1 > sx0 and sy1 > sy0:
            patch[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[:, sy0:sy1, sx0:sx1]
        size = self.image_size
        h, w = patch.shape[-2:]
        short, long = min(h, w), max(h, w)
        target = (size, int(size * long / short)) if h <= w else (int(size * long / short), size)
        x = patch.unsqueeze(0)
        if target != (h, w):
            # PIL resamples uint8 images horizontally, then vertically, rounding to uint8 after each pass.
            x = x * 255.0
            if target[1] != w:
                x = F.interpolate(x, size=(h, target[1]), mode="bicubic", align_corners=False, antialias=True)
                x = x.round().clamp(0.0, 255.0)
            if target[0] != h:
                x = F.interpolate(x, size=target, mode="bicubic", align_corners=False, antialias=True)
                x = x.round().clamp(0.0, 255.0)
            x = x / 255.0
        top = int(round((x.shape[-2] - size) / 2.0))
        left = int(round((x.shape[-1] - size) / 2.0))
        x = x[..., top : top + size, left : left + size]
        mean = torch.tensor(OPENAI_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(OPENAI_CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std)[0]

    @torch.no_grad()
    def logits(self, crops: torch.Tensor, classname: str) -> torch.Tensor:
        """``100 * cos`` of crops ``(M, 3, S, S)`` (:meth:`crop`) with the colours: ``(M, num_colors)``."""
        device = self._device(crops)
        features = self.model.get_image_features(pixel_values=crops.to(device, self.dtype)).pooler_output
        features = F.normalize(features.float(), dim=-1)
        return 100.0 * features @ self.text_classifier(classname, device)

    def classify(
        self, image: torch.Tensor, objects: Sequence[GenEvalObject], classname: str
    ) -> list[str | None]:
        """The colour of each object of class ``classname`` in ``image`` (3, H, W); None for an empty box."""
        crops = [self.crop(image, obj.box, obj.mask) for obj in objects]
        valid = [c for c in crops if c is not None]
        if not valid:
            return [None] * len(objects)
        pred = self.logits(torch.stack(valid), classname).argmax(dim=1).tolist()
        it = iter(pred)
        return [None if c is None else self.colors[next(it)] for c in crops]


# ----------------------------------------------------------------------------------------------------------
# The reward
# ----------------------------------------------------------------------------------------------------------


def _check_images(images: Any) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got {shape}.")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point in [0, 1], got dtype {images.dtype}; divide by 255.")


class GenEvalReward:
    """GenEval-style reward: detect (Mask2Former), classify colours (CLIP), check the row's clauses (GenEval).

    Scores are **GenEval-style, not official GenEval numbers**: the rules, thresholds, crops and colour
    prompts are GenEval's, but the detector is the Mask2Former authors' transformers checkpoint, not the
    mmdetection weights GenEval runs (module docstring). ``partial_credit=False`` returns GenEval's verdict
    (1.0 / 0.0 per image; averaging per ``tag`` then over tags gives the GenEval-style score);
    ``partial_credit=True`` the graded ``partial`` of :func:`evaluate_rules` (in [0, 1], 1 exactly when the
    verdict is 1).

    Needs the two checkpoints, never downloaded for you: on a machine with network run
    ``hf download facebook/mask2former-swin-small-coco-instance --local-dir
    ckpt/mask2former-swin-small-coco-instance`` and ``hf download openai/clip-vit-large-patch14 config.json
    model.safetensors tokenizer.json tokenizer_config.json vocab.json merges.txt special_tokens_map.json
    --local-dir ckpt/clip-vit-large-patch14`` and pass the directories (or hub ids already in the local
    cache).

    Args:
        detector (`str` or `Mask2FormerDetector`, defaults to :data:`DEFAULT_DETECTOR`): path / hub id, or a
            built detector.
        clip (`str` or `CLIPColorClassifier`, defaults to :data:`DEFAULT_CLIP`): path / hub id, or a built
            classifier.
        device (`str` or `torch.device`, *optional*): where to run both; by default they follow the images.
        dtype (`torch.dtype`, *optional*): dtype of both models (default float32).
        partial_credit (`bool`, defaults to `False`): return ``partial`` instead of the verdict.
        threshold, counting_threshold (`float`, defaults to 0.3 and 0.9): detection confidence thresholds.
        max_objects (`int`, defaults to 16): kept objects per class.
        position_threshold (`float`, defaults to 0.1): the relative-position margin.

    Call: ``reward(images (N, 3, H, W) in [0, 1], prompts, include=[...], exclude=[...], tag=[...])`` with the
    metadata columns one value per image (a ``metadata=[row, ...]`` column of GenEval dicts or their JSON text
    works too; other columns are ignored) -> ``(N,)`` float32 on the images' device; NaN for rows without
    clauses and for images with non-finite values.
    """

    def __init__(
        self,
        detector: str | os.PathLike | Mask2FormerDetector = DEFAULT_DETECTOR,
        clip: str | os.PathLike | CLIPColorClassifier = DEFAULT_CLIP,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        partial_credit: bool = False,
        threshold: float = 0.3,
        counting_threshold: float = 0.9,
        max_objects: int = 16,
        position_threshold: float = 0.1,
    ):
        for name, value in (("threshold", threshold), ("counting_threshold", counting_threshold)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name}={value} must be a confidence in [0, 1) (GenEval: 0.3 and 0.9).")
        if int(max_objects) < 1:
            raise ValueError(f"max_objects={max_objects} must be >= 1 (GenEval: 16).")
        if not float(position_threshold) >= 0.0:
            raise ValueError(f"position_threshold={position_threshold} must be >= 0 (GenEval: 0.1).")
        if not isinstance(detector, Mask2FormerDetector):
            detector = Mask2FormerDetector(detector, device=device, dtype=dtype)
        if not isinstance(clip, CLIPColorClassifier):
            clip = CLIPColorClassifier(clip, device=device, dtype=dtype)
        self.detector = detector
        self.color_classifier = clip
        self.partial_credit = bool(partial_credit)
        self.threshold = float(threshold)
        self.counting_threshold = float(counting_threshold)
        self.max_objects = int(max_objects)
        self.position_threshold = float(position_threshold)

    def detect(self, images: torch.Tensor) -> list[GenEvalDetections]:
        """The detector's candidates for each image (before GenEval's thresholds)."""
        return self.detector(images, score_floor=min(self.threshold, self.counting_threshold))

    def evaluate(self, images: torch.Tensor, metadata: Sequence[Mapping[str, Any] | str]) -> list[dict]:
        """Detect, classify and check: one result dict per image (see :meth:`evaluate_detections`).

        Args:
            images (`torch.Tensor` of shape `(N, 3, H, W)`): in [0, 1].
            metadata (`Sequence`): N GenEval rows (dicts with ``include``, optional ``exclude``, ``tag``,
                ``prompt``; or their JSON text).
        """
        _check_images(images)
        metadata = self._metadata_list(metadata, len(images))
        clean = torch.nan_to_num(images.detach().float(), nan=0.0, posinf=1.0, neginf=0.0)
        return self.evaluate_detections(clean, self.detect(clean), metadata)

    def evaluate_detections(
        self,
        images: torch.Tensor,
        detections: Sequence[GenEvalDetections],
        metadata: Sequence[Mapping[str, Any] | str],
    ) -> list[dict]:
        """GenEval on given detections (no detector): select, classify colours where needed, check the rules.

        Returns:
            `list[dict]`, per image: :func:`evaluate_rules`' ``correct``, ``score``, ``partial``, ``reason``,
            ``clauses``, plus ``tag``, ``prompt`` and ``objects`` (class -> list of ``{"box", "score",
            "color"}`` of the kept objects; ``color`` only where classified).
        """
        _check_images(images)
        metadata = self._metadata_list(metadata, len(images))
        if len(detections) != len(images):
            raise ValueError(
                f"got {len(detections)} detections for {len(images)} images; pass one per image."
            )
        results = []
        for image, det, row in zip(images, detections, metadata):
            meta = normalize_metadata(row)
            objects = select_objects(
                det, meta["tag"], self.threshold, self.counting_threshold, self.max_objects
            )
            by_class: dict[str, list[int]] = {}
            # also the short colour clauses' objects, so that `partial` does not depend on partial_credit
            for classname, index in color_requests(objects, meta, partial=True):
                by_class.setdefault(classname, []).append(index)
            for classname, indices in by_class.items():
                colors = self.color_classifier.classify(
                    image, [objects[classname][i] for i in indices], classname
                )
                for i, color in zip(indices, colors):
                    objects[classname][i].color = "none" if color is None else color  # None: empty box
            result = evaluate_rules(objects, meta, self.position_threshold)
            result["tag"] = meta["tag"]
            result["prompt"] = meta["prompt"]
            result["objects"] = {
                name: [{"box": list(o.box), "score": o.score, "color": o.color} for o in objs]
                for name, objs in objects.items()
            }
            results.append(result)
        return results

    @staticmethod
    def _metadata_list(metadata: Any, n: int) -> list:
        if isinstance(metadata, (str, Mapping)) or not isinstance(metadata, Sequence):
            raise ValueError(
                f"metadata must be a list of {n} GenEval rows (one per image), got "
                f"{type(metadata).__name__}; repeat a row for each of its images."
            )
        if len(metadata) != n:
            raise ValueError(f"got {len(metadata)} metadata rows for {n} images; pass one per image.")
        return list(metadata)

    def __call__(
        self,
        images: torch.Tensor,
        prompts: Sequence[str],
        include: Sequence[Any] | None = None,
        exclude: Sequence[Any] | None = None,
        tag: Sequence[str | None] | None = None,
        metadata: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Score ``images`` (N, 3, H, W) in [0, 1] with their GenEval rows; returns (N,) float32 (NaN: no
        clauses or non-finite image). The rows come as the dataset's ``include`` / ``exclude`` / ``tag``
        columns (one value per image), or as one ``metadata`` column of GenEval dicts / JSON text; ``prompts``
        only label the results (GenEval's rules ignore the prompt text)."""
        _check_images(images)
        n = len(images)
        if metadata is not None:
            rows = self._metadata_list(metadata, n)
        else:
            if include is None and exclude is None:
                raise ValueError(
                    "GenEvalReward needs the GenEval metadata columns: pass include=[...] (and "
                    "exclude=[...], tag=[...]) one value per image, e.g. a dataset from "
                    "load_geneval_metadata(...), or metadata=[...]."
                )
            columns = {"include": include, "exclude": exclude, "tag": tag}
            for name, column in columns.items():
                if column is not None and len(column) != n:
                    raise ValueError(f"{name} has {len(column)} values for {n} images; pass one per image.")
            rows = [
                {
                    "include": include[i] if include is not None else None,
                    "exclude": exclude[i] if exclude is not None else None,
                    "tag": tag[i] if tag is not None else None,
                    "prompt": prompts[i] if prompts is not None else None,
                }
                for i in range(n)
            ]
        rows = [row if isinstance(row, Mapping) else json.loads(row) for row in rows]
        finite = torch.isfinite(images.detach()).flatten(1).all(dim=1).tolist()
        metas = [normalize_metadata(row) for row in rows]  # validates every row first
        scorable = [ok and bool(meta["include"] or meta["exclude"]) for ok, meta in zip(finite, metas)]
        scores = [math.nan] * n
        index = [i for i in range(n) if scorable[i]]
        if index:
            results = self.evaluate(images[index], [rows[i] for i in index])
            key = "partial" if self.partial_credit else "score"
            for i, result in zip(index, results):
                scores[i] = result[key]
        return torch.tensor(scores, dtype=torch.float32, device=images.device)


# ----------------------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------------------


def _dataset_row(row: Mapping[str, Any]) -> dict:
    meta = normalize_metadata(row)
    include = []
    for clause in meta["include"]:
        position = clause.get("position")
        include.append(
            {
                "class": clause["class"],
                "count": clause["count"],
                "color": clause.get("color"),
                "position": None if position is None else {"relation": position[0], "index": position[1]},
            }
        )
    return {
        "tag": meta["tag"],
        "prompt": meta["prompt"],
        "include": include,
        "exclude": [{"class": c["class"], "count": c["count"]} for c in meta["exclude"]],
    }


def load_geneval_metadata(
    path_or_repo_id: str | os.PathLike,
    filename: str = "evaluation_metadata.jsonl",
    repo_type: str = "dataset",
    revision: str | None = None,
):
    """GenEval's metadata rows as a ``datasets.Dataset``: columns ``tag``, ``prompt``, ``include``,
    ``exclude``.

    The official file is on GitHub, not the hub: ``wget`` (or ``curl -LO``) :data:`GENEVAL_METADATA_URL`
    (``https://raw.githubusercontent.com/djghosh13/geneval/main/prompts/evaluation_metadata.jsonl``, 553 rows)
    and pass its path. Arrow needs one type per field, so include clauses are stored as
    ``{"class", "count", "color" (None if absent), "position" ({"relation", "index"} or None)}`` and a missing
    ``exclude`` as ``[]``; :class:`GenEvalReward` reads both this form and GenEval's raw rows.

    Args:
        path_or_repo_id (`str` or `os.PathLike`): a local ``.jsonl`` file, a directory containing
            ``filename``, or a hub repo id holding ``filename`` (downloaded through ``huggingface_hub``, so
            offline only when cached).
        filename (`str`, defaults to ``"evaluation_metadata.jsonl"``): the file inside a directory or hub
            repo.
        repo_type (`str`, defaults to ``"dataset"``): hub repo type for a repo id.
        revision (`str`, *optional*): hub revision.

    Returns:
        `datasets.Dataset`, one row per prompt, in file order.

    Raises:
        FileNotFoundError: the file cannot be found (the download command is in the message).
        ValueError: a row is not valid GenEval metadata (the line number is given).
    """
    import datasets

    path = os.fspath(path_or_repo_id)
    hint = f"download the official file with `wget {GENEVAL_METADATA_URL}` and pass its path"
    if os.path.isdir(path):
        path = os.path.join(path, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"load_geneval_metadata: no {filename!r} in directory {path_or_repo_id!r}; {hint}."
            )
    elif not os.path.isfile(path):
        if path.endswith(".jsonl") or os.path.isabs(path) or path.count("/") != 1:
            raise FileNotFoundError(f"load_geneval_metadata: file {path!r} does not exist; {hint}.")
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(path, filename, repo_type=repo_type, revision=revision)
        except Exception as err:  # offline and not cached, unknown repo, missing file...
            raise FileNotFoundError(
                f"load_geneval_metadata: could not get {filename!r} from the hub {repo_type} repo {path!r} "
                f"({type(err).__name__}: {err}). On a machine with network run `hf download {path} "
                f"{filename} --repo-type {repo_type} --local-dir <dir>`, or {hint}."
            ) from err
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(_dataset_row(json.loads(line)))
            except (ValueError, TypeError, KeyError) as err:
                raise ValueError(
                    f"load_geneval_metadata: {path}:{lineno} is not a GenEval row: {err}"
                ) from err
    clause = {
        "class": datasets.Value("string"),
        "count": datasets.Value("int64"),
        "color": datasets.Value("string"),
        "position": {"relation": datasets.Value("string"), "index": datasets.Value("int64")},
    }
    features = datasets.Features(
        {
            "tag": datasets.Value("string"),
            "prompt": datasets.Value("string"),
            "include": datasets.List(clause),
            "exclude": datasets.List({"class": datasets.Value("string"), "count": datasets.Value("int64")}),
        }
    )
    return datasets.Dataset.from_list(rows, features=features)
