"""A deterministic GenEval-style rule reward for the testbed's 32x32 scenes.

GenEval (Ghosh et al., arXiv 2310.11513) detects objects, then checks a prompt's clauses with rules. Here the
detector is exact for this world: nearest-palette colour segmentation, connected components, shape features
and centroids, all batched in torch (no scipy)::

    >>> from trl_schedule.testbed import TestbedReward
    >>> reward = TestbedReward()
    >>> scores = reward(images, prompts)            # (N,) in [0, 1]
    >>> scores, details = reward.score_with_breakdown(images, prompts)
    >>> details[0]["clauses"]                       # per-clause results of row 0

Detector (:func:`detect_objects`):

1. Images of any size are resized to 32x32 with area interpolation and clamped to [0, 1].
2. Each pixel takes the nearest of background + palette colours (RGB distance); it is a colour pixel if that
   colour is a palette colour and the distance is below ``colour_threshold`` (0.45: the background is 0.87
   from every palette colour, palette colours are >= 1.0 apart).
3. Connected components (8-connectivity) per colour by batched max-pool label propagation with pointer
   jumping; components smaller than ``min_area`` pixels are noise and dropped.
4. Shape: the nearest prototype (:data:`SHAPE_PROTOTYPES`) in (soft fill ratio, share of the pixels in the top
   half of the bounding box), the second feature weighted x2: circle (0.79, 0.5), square (1.0, 0.5), triangle
   (0.58, 0.28 — apex up). The soft fill ratio is
   ``max(alpha) * sum(alpha) / (sum_x max_y alpha * sum_y max_x alpha)`` with ``alpha`` the pixel's coverage
   estimated from its colour (projection of pixel - background onto colour - background, dead zone 0.15 at
   both ends), over the component grown by its anti-aliased edge ring: it depends neither on sub-pixel
   position nor on a uniform fade. Position: the bounding box (relations follow GenEval's rule,
   :func:`~trl_schedule.testbed.scenes.spatial_relations`).

Clauses (each in [0, 1]; ``object(c, s) = 0.5 [some c object] + 0.5 [some c object is an s]``):

- ``single_object``: ``object``.
- ``counting``: ``object`` and ``count = [exactly n objects of colour c and shape s]``.
- ``two_object``: ``object`` for each of the two.
- ``position``: ``object`` for each, and ``relation = [some c1-s1 object and some other c2-s2 object satisfy
  the relation]``.

``rule = mean of the clauses``. The continuous term (so partial progress is rewarded smoothly):
``continuous = clutter * mean over required objects of quality``; a required object (n of them for counting)
is matched greedily to the best unused detected object of its colour with
``quality = purity * shape_fit``, ``purity = clip(1 - |mean RGB - palette RGB| / 0.87, 0, 1)``,
``shape_fit = clip(1 - max(d_shape - 0.05, 0) / 0.3, 0, 1)`` (``d_shape``: weighted feature distance to the
required shape's prototype), 0 when none is left; ``clutter = matched area / all detected area`` (1 when
nothing is detected).

``score = (1 - continuous_weight) * rule + continuous_weight * continuous`` with ``continuous_weight = 0.2``.
Like GenEval, extra objects only cost a counting clause (and, here, the clutter factor of the continuous
term). Rows whose images contain NaN/inf score NaN (unscorable, as the estimators expect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .scenes import (
    BACKGROUND,
    COLOURS,
    IMAGE_SIZE,
    PALETTE,
    SHAPES,
    PromptSpec,
    parse_prompt,
    spatial_relations,
)

SHAPE_PROTOTYPES = {"circle": (0.79, 0.5), "square": (1.0, 0.5), "triangle": (0.58, 0.28)}
"""(soft fill ratio, top-half share) of each shape as the detector measures it on clean renders (ideal
shapes give circle (pi/4, 0.5), square (1, 0.5), triangle (0.5, 0.25); pixelation fattens small triangles)."""

_TOP_WEIGHT = 2.0
_FIT_SCALE = 0.3
_FIT_TOLERANCE = 0.05  # spread of the features over clean renders
_PURITY_SCALE = 0.87  # distance from the background to every palette colour
_ALPHA_DEAD_ZONE = 0.15  # coverage estimates below / above this margin count as 0 / 1


@dataclass(frozen=True)
class DetectedObject:
    """One connected component of one palette colour.

    Args:
        colour (`str`), shape (`str`): The palette colour and the classified shape.
        area (`int`): Pixels.
        box (`tuple[float, float, float, float]`): ``(x0, y0, x1, y1)`` in pixels (pixel edges).
        fill (`float`): area / bounding-box area. top (`float`): share of pixels in the top half of the box.
        purity (`float`): ``clip(1 - |mean RGB - palette RGB| / 0.87, 0, 1)``.
    """

    colour: str
    shape: str
    area: int
    box: tuple[float, float, float, float]
    fill: float
    top: float
    purity: float

    def shape_distance(self, shape: str) -> float:
        """Weighted distance of this object's (fill, top) features to a shape's prototype."""
        fill, top = SHAPE_PROTOTYPES[shape]
        return ((self.fill - fill) ** 2 + (_TOP_WEIGHT * (self.top - top)) ** 2) ** 0.5

    def quality(self, shape: str) -> float:
        """``purity * shape_fit`` for the required shape, in [0, 1]."""
        excess = max(self.shape_distance(shape) - _FIT_TOLERANCE, 0.0)
        return self.purity * max(1.0 - excess / _FIT_SCALE, 0.0)


def prepare_images(images: torch.Tensor, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """Validate, resize (area interpolation) and clamp images for the detector.

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): RGB in [0, 1] (values outside are clamped).

    Returns:
        `torch.Tensor` of shape `(N, 3, image_size, image_size)`, float32 on the same device.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a (N, 3, H, W) RGB tensor in [0, 1], got {shape}.")
    images = images.detach().float()
    if images.shape[-2:] != (image_size, image_size):
        images = F.interpolate(images, size=(image_size, image_size), mode="area")
    return images.clamp(0, 1)


def segment_colours(images: torch.Tensor, colour_threshold: float = 0.45) -> torch.Tensor:
    """Per-colour masks by nearest palette colour.

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): RGB in [0, 1].
        colour_threshold (`float`): Maximum RGB distance to the palette colour.

    Returns:
        `torch.Tensor` of shape `(N, C, H, W)`, bool, C = len(COLOURS) in :data:`COLOURS` order; disjoint
        masks.
    """
    refs = torch.tensor([BACKGROUND] + [PALETTE[c] for c in COLOURS], device=images.device)  # (C+1, 3)
    dist = (images.unsqueeze(1) - refs.view(1, -1, 3, 1, 1)).square().sum(2).sqrt()  # (N, C+1, H, W)
    nearest = dist.argmin(1)
    best = dist.gather(1, nearest.unsqueeze(1)).squeeze(1)
    ids = torch.arange(1, len(COLOURS) + 1, device=images.device).view(1, -1, 1, 1)
    return (nearest.unsqueeze(1) == ids) & (best.unsqueeze(1) < colour_threshold)


def connected_components(masks: torch.Tensor, max_iters: int | None = None) -> torch.Tensor:
    """8-connected component labels of a batch of binary masks, by max-pool label propagation.

    Each foreground pixel starts with its flat index + 1; labels spread to neighbours by 3x3 max-pooling
    (restricted to the mask), with a pointer-jumping step (a label is an index, so it can read the label of
    the pixel it names) that roughly halves the iterations. Converges to the largest flat index + 1 in each
    component.

    Args:
        masks (`torch.Tensor` of shape `(B, H, W)`): bool.
        max_iters (`int`, *optional*): Cap on propagation steps (default H * W, never reached in practice).

    Returns:
        `torch.Tensor` of shape `(B, H, W)`, int64: 0 for background, otherwise a label unique across the
        batch.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W), got shape {tuple(masks.shape)}.")
    b, h, w = masks.shape
    n = b * h * w
    dtype = torch.float32 if n < 2**24 else torch.float64  # labels must be exact in floating point
    maskf = masks.to(dtype).unsqueeze(1)
    labels = torch.arange(1, n + 1, device=masks.device, dtype=dtype).view(b, 1, h, w) * maskf
    flat_with_zero = torch.zeros(n + 1, device=masks.device, dtype=dtype)
    for step in range(max_iters or h * w):
        new = F.max_pool2d(labels, 3, stride=1, padding=1) * maskf
        flat_with_zero[1:] = new.view(-1)
        new = torch.maximum(new, flat_with_zero[new.long().view(-1)].view_as(new))  # pointer jumping
        if step % 2 == 1 and torch.equal(new, labels):
            break
        labels = new
    return labels.squeeze(1).long()


def detect_objects(
    images: torch.Tensor, colour_threshold: float = 0.45, min_area: int = 12
) -> list[list[DetectedObject]]:
    """Detect the coloured objects of a batch of testbed images.

    Args:
        images (`torch.Tensor` of shape `(N, 3, 32, 32)`): RGB in [0, 1] (see :func:`prepare_images`).
        colour_threshold (`float`): See :func:`segment_colours`.
        min_area (`int`): Components with fewer pixels are dropped as noise.

    Returns:
        `list[list[DetectedObject]]`: per image, its objects (largest first).
    """
    n, _, h, w = images.shape
    c = len(COLOURS)
    masks = segment_colours(images, colour_threshold)  # (N, C, H, W)
    labels = connected_components(masks.view(n * c, h, w))  # (N*C, H, W)
    out: list[list[DetectedObject]] = [[] for _ in range(n)]
    if not bool((labels > 0).any()):
        return out
    # Soft coverage of each plane's colour: projection of (pixel - background) onto (colour - background),
    # # with a small dead zone against noise. Components are grown by one ring of background-class pixels (the
    # anti-aliased edge) for the soft features, so they do not depend on sub-pixel position.
    bg = torch.tensor(BACKGROUND, device=images.device).view(1, 1, 3, 1, 1)
    axes = torch.tensor([PALETTE[col] for col in COLOURS], device=images.device).view(1, c, 3, 1, 1) - bg
    proj = ((images.unsqueeze(1) - bg) * axes).sum(2) / axes.square().sum(2)  # (N, C, H, W)
    alpha = ((proj - _ALPHA_DEAD_ZONE) / (1 - 2 * _ALPHA_DEAD_ZONE)).clamp(0, 1).view(-1)
    background = (~masks.any(1, keepdim=True)).expand(n, c, h, w).reshape(n * c, 1, h, w)
    exact = torch.float32 if labels.numel() < 2**24 else torch.float64  # labels must be exact
    grown = F.max_pool2d(labels.unsqueeze(1).to(exact), 3, stride=1, padding=1).long()
    ext = torch.where(labels.unsqueeze(1) > 0, labels.unsqueeze(1), grown * background).view(-1)
    labels = labels.view(-1)

    epix = (ext > 0).nonzero().squeeze(1)
    uniq, ecomp = torch.unique(ext[epix], return_inverse=True)
    k = uniq.numel()
    pix = (labels > 0).nonzero().squeeze(1)
    comp = torch.searchsorted(uniq, labels[pix])
    ys, xs = (pix // w) % h, pix % w
    plane = pix // (h * w)  # image * C + colour
    rgb = images.permute(0, 2, 3, 1).unsqueeze(1).expand(n, c, h, w, 3).reshape(-1, 3)[pix]

    def reduce(values: torch.Tensor, how: str, index: torch.Tensor = comp, size: int = k) -> torch.Tensor:
        init = torch.zeros(size, *values.shape[1:], device=values.device, dtype=values.dtype)
        index = index.view(-1, *([1] * (values.ndim - 1))).expand_as(values)
        return init.scatter_reduce(0, index, values, how, include_self=False)

    ea = alpha[epix]
    soft_area = reduce(ea, "sum", ecomp)
    col_max = reduce(ea, "amax", ecomp * w + epix % w, k * w).view(k, w)
    row_max = reduce(ea, "amax", ecomp * h + (epix // w) % h, k * h).view(k, h)
    peak = col_max.amax(1)  # a uniformly faded object keeps its fill ratio
    fill = (peak * soft_area / (col_max.sum(1) * row_max.sum(1)).clamp_min(1e-6)).clamp(0, 1)

    area = reduce(torch.ones_like(xs, dtype=torch.float32), "sum")
    x0, x1 = reduce(xs, "amin"), reduce(xs, "amax")
    y0, y1 = reduce(ys, "amin"), reduce(ys, "amax")
    box_h = (y1 - y0 + 1).float()
    rel = (ys - y0[comp]).float() + 0.5  # row centre, from the top of the box
    top_weight = (box_h[comp] / 2 - rel + 0.5).clamp(0, 1)  # 1 above the mid-line, 0.5 on it, 0 below
    top = reduce(top_weight, "sum") / area.clamp_min(1)
    mean_rgb = reduce(rgb, "sum") / area.clamp_min(1).unsqueeze(1)
    comp_plane = reduce(plane, "amin")
    comp_colour = comp_plane % c
    refs = torch.tensor([PALETTE[col] for col in COLOURS], device=images.device)
    purity = (1 - (mean_rgb - refs[comp_colour]).norm(dim=1) / _PURITY_SCALE).clamp(0, 1)
    proto = torch.tensor([SHAPE_PROTOTYPES[s] for s in SHAPES], device=images.device)  # (S, 2)
    shape_dist = (fill.unsqueeze(1) - proto[:, 0]).square() + (
        _TOP_WEIGHT * (top.unsqueeze(1) - proto[:, 1])
    ).square()
    shape_id = shape_dist.argmin(1)
    rows = zip(
        *(
            t.tolist()
            for t in (comp_plane // c, comp_colour, shape_id, area, x0, y0, x1, y1, fill, top, purity)
        )
    )
    for image, colour, shape, a, bx0, by0, bx1, by1, fl, tp, pu in rows:
        if a >= min_area:
            box = (float(bx0), float(by0), float(bx1 + 1), float(by1 + 1))
            out[image].append(DetectedObject(COLOURS[colour], SHAPES[shape], int(a), box, fl, tp, pu))
    for objects in out:
        objects.sort(key=lambda o: -o.area)
    return out


def _object_clause(objects: Sequence[DetectedObject], colour: str, shape: str) -> dict:
    has_colour = any(o.colour == colour for o in objects)
    has_shape = any(o.colour == colour and o.shape == shape for o in objects)
    return {
        "colour": colour,
        "shape": shape,
        "colour_present": float(has_colour),
        "shape_correct": float(has_shape),
        "score": 0.5 * has_colour + 0.5 * has_shape,
    }


def score_prompt(objects: Sequence[DetectedObject], spec: PromptSpec) -> dict:
    """Score one image's detections against one parsed prompt (the formula is in the module docstring).

    Args:
        objects (`Sequence[DetectedObject]`): What :func:`detect_objects` found in the image.
        spec (`PromptSpec`): The prompt's requirements (:func:`~trl_schedule.testbed.scenes.parse_prompt`).

    Returns:
        `dict` with ``clauses`` (name -> dict with at least ``score``), ``rule_score`` and ``continuous``.
    """
    clauses = {}
    for i, obj in enumerate(spec.objects):
        clauses[f"object_{i}"] = _object_clause(objects, obj.colour, obj.shape)
    if spec.prompt_type == "counting":
        target = spec.objects[0]
        found = sum(o.colour == target.colour and o.shape == target.shape for o in objects)
        clauses["count"] = {"expected": spec.count, "found": found, "score": float(found == spec.count)}
    if spec.prompt_type == "position":
        a, b = spec.objects
        holds = any(
            spec.relation in spatial_relations(oa.box, ob.box)
            for oa in objects
            if (oa.colour, oa.shape) == (a.colour, a.shape)
            for ob in objects
            if ob is not oa and (ob.colour, ob.shape) == (b.colour, b.shape)
        )
        clauses["relation"] = {"relation": spec.relation, "score": float(holds)}
    rule = sum(cl["score"] for cl in clauses.values()) / len(clauses)

    required = [spec.objects[0]] * spec.count if spec.prompt_type == "counting" else list(spec.objects)
    unused = list(objects)
    qualities, matched_area = [], 0
    for req in required:
        candidates = [o for o in unused if o.colour == req.colour]
        if not candidates:
            qualities.append(0.0)
            continue
        best = max(candidates, key=lambda o: o.quality(req.shape))
        unused.remove(best)
        qualities.append(best.quality(req.shape))
        matched_area += best.area
    total_area = sum(o.area for o in objects)
    clutter = matched_area / total_area if total_area else 1.0
    continuous = clutter * sum(qualities) / len(qualities)
    return {"clauses": clauses, "rule_score": rule, "continuous": continuous}


class TestbedReward:
    """The testbed's rule reward, with the project's reward contract ``(images, prompts) -> (N,)`` in [0, 1].

    Args:
        continuous_weight (`float`): Weight of the continuous term (``score = (1 - w) rule + w continuous``).
        colour_threshold (`float`): Max RGB distance of a colour pixel to its palette colour.
        min_area (`int`): Smaller components are noise.
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, continuous_weight: float = 0.2, colour_threshold: float = 0.45, min_area: int = 12):
        if not 0.0 <= continuous_weight <= 1.0:
            raise ValueError(f"continuous_weight={continuous_weight} must be in [0, 1].")
        if not 0.0 < colour_threshold:
            raise ValueError(f"colour_threshold={colour_threshold} must be > 0 (0.45 suits the palette).")
        if min_area < 1:
            raise ValueError(f"min_area={min_area} must be >= 1.")
        self.continuous_weight = continuous_weight
        self.colour_threshold = colour_threshold
        self.min_area = min_area

    def __call__(self, images: torch.Tensor, prompts: Sequence[str], **kwargs) -> torch.Tensor:
        """Score images against prompts (the project's reward contract).

        Args:
            images (`torch.Tensor` of shape `(N, 3, H, W)`): RGB in [0, 1]; resized to 32x32 (area).
            prompts (`Sequence[str]`): N prompts of the testbed grammar.
            **kwargs: other dataset columns the trainer passes along (e.g. `prompt_type`); ignored — the
                requirements are parsed from the prompt itself.

        Returns:
            `torch.Tensor` of shape `(N,)`, float32 on the images' device, in [0, 1] (NaN for non-finite
            images).
        """
        return self.score_with_breakdown(images, prompts)[0]

    def score_with_breakdown(
        self, images: torch.Tensor, prompts: Sequence[str]
    ) -> tuple[torch.Tensor, list[dict]]:
        """Scores and, per row, the clause-level results.

        Args:
            images (`torch.Tensor` of shape `(N, 3, H, W)`): RGB in [0, 1].
            prompts (`Sequence[str]`): N prompts.

        Returns:
            `tuple`: scores `(N,)` and a list of N dicts with ``prompt``, ``prompt_type``, ``clauses`` (e.g.
            ``object_0``: ``colour_present``/``shape_correct``/``score``; ``count``: ``expected``/``found``/
            ``score``; ``relation``: ``relation``/``score``), ``rule_score``, ``continuous``, ``score`` and
            ``detections`` (list of :class:`DetectedObject`).
        """
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of str (one per image), got a single str.")
        prompts = list(prompts)
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] != len(prompts):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(
                f"images {shape} and prompts ({len(prompts)}) must be (N, 3, H, W) and N strings."
            )
        specs = [parse_prompt(p) for p in prompts]
        device = images.device
        finite = torch.isfinite(images).flatten(1).all(1).tolist()
        prepared = prepare_images(torch.nan_to_num(images.detach().float(), 0.0))
        detections = detect_objects(prepared, self.colour_threshold, self.min_area)
        w = self.continuous_weight
        scores, details = [], []
        for prompt, spec, objects, ok in zip(prompts, specs, detections, finite):
            result = score_prompt(objects, spec)
            score = (1 - w) * result["rule_score"] + w * result["continuous"] if ok else float("nan")
            details.append(
                {
                    "prompt": prompt,
                    "prompt_type": spec.prompt_type,
                    **result,
                    "score": score,
                    "detections": objects,
                }
            )
            scores.append(score)
        return torch.tensor(scores, dtype=torch.float32, device=device), details
