"""Procedural scenes for the embedded testbed: 32x32 RGB images of 1-3 coloured shapes with GenEval-style
prompts.

The testbed is a small world of its own (nothing can be downloaded): a scene is a few flat-coloured shapes
on a plain mid-grey background, and its prompt follows the controlled grammar of GenEval (Ghosh et al.,
NeurIPS 2023 Datasets & Benchmarks, arXiv 2310.11513)::

    >>> import random
    >>> from trl_schedule.testbed.scenes import sample_scene, prompt_for, parse_prompt, render
    >>> scene = sample_scene(random.Random(0), "position")
    >>> prompt_for(scene)                      # e.g. "a photo of a red square left of a blue circle"
    >>> parse_prompt(prompt_for(scene))        # PromptSpec(prompt_type="position", objects=..., relation=...)
    >>> render([scene]).shape                  # torch.Size([1, 3, 32, 32]), values in [0, 1]

The world:

- Shapes ``circle``, ``square``, ``triangle`` (isosceles, apex up, base = height); colours ``red``, ``green``,
  ``blue``, ``yellow`` (pure primaries / secondary). Every shape is sized by its bounding-box side, 8-12 px.
- Background mid-grey ``(0.5, 0.5, 0.5)``: it is equally far (0.87 in RGB) from every palette colour, and
  every palette colour is at least 1.0 from every other, so nearest-palette segmentation is robust to noise.
- Coordinates are pixels, x to the right, y down, the canvas spans ``[0, 32]``; a pixel ``(i, j)`` covers
  ``[j, j+1) x [i, i+1)``. Rendering is anti-aliased by 4x4 supersampling and deterministic.
- Objects never overlap: any two bounding boxes are at least 2 px apart along x or y.

Prompt types (GenEval's tags) and phrasing:

- ``single_object``: "a photo of a red circle"
- ``counting`` (2 or 3 identical objects): "a photo of two blue squares"
- ``two_object``: "a photo of a green triangle and a yellow circle" (two distinct colour-shape pairs)
- ``position``: "a photo of a red square left of a blue circle" (``left of``, ``right of``, ``above``,
  ``below``; the first object relative to the second, decided by :func:`spatial_relations`)

Held-out split (:func:`is_held_out`): a prompt is held out — it only ever appears in the test split — when

- ``single_object`` / ``counting``: its colour-shape pair is in :data:`HELD_OUT_OBJECTS`
  (a yellow triangle, a blue circle), for any count;
- ``two_object`` / ``position``: its *unordered* pair of colour-shape objects is in :data:`HELD_OUT_PAIRS`
  (8 of the 66 pairs), in either order and for every relation — so "A left of B" and its mirror
  "B right of A" are both test-only.

Every colour, shape and relation word still occurs in training prompts; only the combinations are new.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
"""Side of a testbed image in pixels."""

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
RELATIONS = ("left of", "right of", "above", "below")
PROMPT_TYPES = ("single_object", "two_object", "counting", "position")
COUNT_WORDS = {2: "two", 3: "three"}

PALETTE = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
}
"""RGB in [0, 1] of every colour word."""

BACKGROUND = (0.5, 0.5, 0.5)
"""The plain background colour: mid-grey, equidistant (0.87) from every palette colour."""

MIN_SIZE, MAX_SIZE = 8.0, 12.0
"""Range of an object's bounding-box side in pixels (uniform)."""

MIN_GAP = 2.0
"""Minimum distance in pixels between two objects' bounding boxes along x or y."""

HELD_OUT_OBJECTS = frozenset({("yellow", "triangle"), ("blue", "circle")})
"""(colour, shape) pairs whose ``single_object`` and ``counting`` prompts are test-only."""

HELD_OUT_PAIRS = frozenset(
    frozenset(pair)
    for pair in (
        (("red", "circle"), ("blue", "square")),
        (("red", "square"), ("green", "triangle")),
        (("red", "triangle"), ("yellow", "circle")),
        (("green", "circle"), ("blue", "triangle")),
        (("green", "square"), ("yellow", "triangle")),
        (("blue", "circle"), ("yellow", "square")),
        (("red", "circle"), ("green", "circle")),
        (("blue", "triangle"), ("yellow", "triangle")),
    )
)
"""Unordered pairs of (colour, shape) objects whose ``two_object`` and ``position`` prompts are test-only."""

_PLURALS = {shape: shape + "s" for shape in SHAPES}
_RELATION_WORDS = {tuple(rel.split()): rel for rel in RELATIONS}

VOCAB = tuple(
    sorted(
        {"a", "photo", "of", "and"}
        | set(COUNT_WORDS.values())
        | set(COLOURS)
        | set(SHAPES)
        | set(_PLURALS.values())
        | {word for rel in RELATIONS for word in rel.split()}
    )
)
"""Every word the prompt grammar can produce (sorted, lower case, no punctuation): build a word-level
tokenizer from it."""


@dataclass(frozen=True)
class ObjectSpec:
    """What a prompt asks for about one object: a colour word and a shape word."""

    colour: str
    shape: str


@dataclass(frozen=True)
class PromptSpec:
    """The structured requirements of a prompt (what :func:`parse_prompt` returns).

    Args:
        prompt_type (`str`): One of :data:`PROMPT_TYPES`.
        objects (`tuple[ObjectSpec, ...]`):
            One object for ``single_object`` and ``counting``, two for ``two_object`` and ``position``.
        count (`int`): How many of ``objects[0]`` a ``counting`` prompt asks for (2 or 3); 1 otherwise.
        relation (`str`, *optional*): For ``position``: ``objects[0]`` is ``relation`` ``objects[1]``.
    """

    prompt_type: str
    objects: tuple[ObjectSpec, ...]
    count: int = 1
    relation: str | None = None


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene.

    Args:
        shape (`str`): One of :data:`SHAPES`.
        colour (`str`): One of :data:`COLOURS`.
        centre (`tuple[float, float]`): ``(x, y)`` centre of the bounding box in pixels (x right, y down).
        size (`float`): Side of the (square) bounding box in pixels.
    """

    shape: str
    colour: str
    centre: tuple[float, float]
    size: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The bounding box ``(x0, y0, x1, y1)`` in pixels."""
        half = self.size / 2
        return (self.centre[0] - half, self.centre[1] - half, self.centre[0] + half, self.centre[1] + half)


@dataclass(frozen=True)
class Scene:
    """A scene that satisfies its prompt: its objects and the prompt type that describes them.

    ``single_object``: one object. ``counting``: 2-3 objects of one colour and shape. ``two_object``: two
    objects with distinct colour-shape pairs. ``position``: two such objects with ``objects[0]`` ``relation``
    ``objects[1]``.
    """

    prompt_type: str
    objects: tuple[SceneObject, ...]
    relation: str | None = None

    def prompt_spec(self) -> PromptSpec:
        """The :class:`PromptSpec` of this scene's prompt."""
        if self.prompt_type == "counting":
            first = self.objects[0]
            return PromptSpec("counting", (ObjectSpec(first.colour, first.shape),), count=len(self.objects))
        objects = tuple(ObjectSpec(o.colour, o.shape) for o in self.objects)
        return PromptSpec(self.prompt_type, objects, relation=self.relation)

    def to_json(self) -> str:
        """The scene as a JSON string (what the datasets store in their ``scene`` column)."""
        return json.dumps(
            {
                "prompt_type": self.prompt_type,
                "relation": self.relation,
                "objects": [
                    {"shape": o.shape, "colour": o.colour, "centre": list(o.centre), "size": o.size}
                    for o in self.objects
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Scene:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        objects = tuple(
            SceneObject(
                o["shape"], o["colour"], (float(o["centre"][0]), float(o["centre"][1])), float(o["size"])
            )
            for o in data["objects"]
        )
        return cls(data["prompt_type"], objects, data.get("relation"))


# ----------------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------------


def prompt_for(scene: Scene | PromptSpec) -> str:
    """The GenEval-style prompt of a scene (or of a prompt spec).

    Args:
        scene (`Scene` or `PromptSpec`): What to describe.

    Returns:
        `str`: e.g. ``"a photo of two blue squares"``; :func:`parse_prompt` inverts it exactly.
    """
    spec = scene.prompt_spec() if isinstance(scene, Scene) else scene
    _validate_spec(spec)
    first = spec.objects[0]
    if spec.prompt_type == "single_object":
        return f"a photo of a {first.colour} {first.shape}"
    if spec.prompt_type == "counting":
        return f"a photo of {COUNT_WORDS[spec.count]} {first.colour} {_PLURALS[first.shape]}"
    second = spec.objects[1]
    link = "and" if spec.prompt_type == "two_object" else spec.relation
    return f"a photo of a {first.colour} {first.shape} {link} a {second.colour} {second.shape}"


def parse_prompt(prompt: str) -> PromptSpec:
    """Parse a prompt of the testbed grammar into its requirements.

    Case, surrounding whitespace and a final period are ignored.

    Args:
        prompt (`str`): e.g. ``"a photo of a red square left of a blue circle"``.

    Returns:
        `PromptSpec`: prompt type, objects, count and relation.

    Raises:
        ValueError: if the prompt is not in the grammar (the error names the prompt and lists the forms).
    """
    if not isinstance(prompt, str):
        raise ValueError(f"parse_prompt: prompt must be a str, got {type(prompt).__name__} ({prompt!r}).")
    words = prompt.strip().lower().rstrip(".").split()
    rest = words[3:] if words[:3] == ["a", "photo", "of"] else None
    spec = None if rest is None else _parse_rest(rest)
    if spec is None:
        raise ValueError(
            f"parse_prompt: cannot parse prompt {prompt!r}. The testbed grammar is "
            "'a photo of a <colour> <shape>', 'a photo of <two|three> <colour> <shape>s', "
            "'a photo of a <colour> <shape> and a <colour> <shape>' or "
            "'a photo of a <colour> <shape> <left of|right of|above|below> a <colour> <shape>', "
            f"with colours {COLOURS} and shapes {SHAPES} (the two objects must differ)."
        )
    return spec


def _parse_object(words: list[str]) -> ObjectSpec | None:
    if len(words) == 3 and words[0] == "a" and words[1] in COLOURS and words[2] in SHAPES:
        return ObjectSpec(words[1], words[2])
    return None


def _parse_rest(rest: list[str]) -> PromptSpec | None:
    if len(rest) == 3:
        if rest[0] == "a":
            obj = _parse_object(rest)
            return None if obj is None else PromptSpec("single_object", (obj,))
        counts = {word: n for n, word in COUNT_WORDS.items()}
        plurals = {word: shape for shape, word in _PLURALS.items()}
        if rest[0] in counts and rest[1] in COLOURS and rest[2] in plurals:
            return PromptSpec("counting", (ObjectSpec(rest[1], plurals[rest[2]]),), count=counts[rest[0]])
        return None
    for link_len in (1, 2):
        if len(rest) != 6 + link_len:
            continue
        first, link, second = (
            _parse_object(rest[:3]),
            tuple(rest[3 : 3 + link_len]),
            _parse_object(rest[3 + link_len :]),
        )
        if first is None or second is None or first == second:
            return None
        if link == ("and",):
            return PromptSpec("two_object", (first, second))
        if link in _RELATION_WORDS:
            return PromptSpec("position", (first, second), relation=_RELATION_WORDS[link])
    return None


def _validate_spec(spec: PromptSpec) -> None:
    if spec.prompt_type not in PROMPT_TYPES:
        raise ValueError(f"prompt_type={spec.prompt_type!r} is not one of {PROMPT_TYPES}.")
    for obj in spec.objects:
        if obj.colour not in COLOURS or obj.shape not in SHAPES:
            raise ValueError(f"object {obj} needs a colour in {COLOURS} and a shape in {SHAPES}.")
    want = 1 if spec.prompt_type in ("single_object", "counting") else 2
    if len(spec.objects) != want:
        raise ValueError(f"a {spec.prompt_type} prompt needs {want} object(s), got {len(spec.objects)}.")
    if spec.prompt_type == "counting" and spec.count not in COUNT_WORDS:
        raise ValueError(f"count={spec.count} for a counting prompt; use one of {tuple(COUNT_WORDS)}.")
    if spec.prompt_type == "position" and spec.relation not in RELATIONS:
        raise ValueError(f"relation={spec.relation!r} for a position prompt; use one of {RELATIONS}.")
    if want == 2 and spec.objects[0] == spec.objects[1]:
        raise ValueError(
            f"the two objects of a {spec.prompt_type} prompt must differ, got {spec.objects[0]} twice."
        )


def is_held_out(spec: PromptSpec | str) -> bool:
    """Whether a prompt belongs to the held-out (test-only) set; see the module docstring for the rule.

    Args:
        spec (`PromptSpec` or `str`): A parsed prompt or a prompt string.
    """
    if isinstance(spec, str):
        spec = parse_prompt(spec)
    pairs = [(o.colour, o.shape) for o in spec.objects]
    if spec.prompt_type in ("single_object", "counting"):
        return pairs[0] in HELD_OUT_OBJECTS
    return frozenset(pairs) in HELD_OUT_PAIRS


# ----------------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------------


def spatial_relations(box_a: Sequence[float], box_b: Sequence[float], threshold: float = 0.1) -> set[str]:
    """The relations of box A relative to box B, GenEval's rule (``relative_position`` in its evaluator).

    The centre offset ``o = c_A - c_B`` is shrunk towards 0 by ``threshold * (dim_A + dim_B)`` per axis, then
    divided by ``|o|``; a component below -0.5 / above 0.5 gives "left of" / "right of" (x) and "above" /
    "below" (y, pointing down). Overlapping centres give no relation.

    Args:
        box_a, box_b (`Sequence[float]` of length 4): ``(x0, y0, x1, y1)`` in pixels.
        threshold (`float`): The size-relative dead zone (GenEval uses 0.1).

    Returns:
        `set[str]`: a subset of :data:`RELATIONS`.
    """
    ax0, ay0, ax1, ay1 = box_a
    bx0, by0, bx1, by1 = box_b
    ox, oy = (ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2
    norm = (ox * ox + oy * oy) ** 0.5
    rx = max(abs(ox) - threshold * (ax1 - ax0 + bx1 - bx0), 0.0)
    ry = max(abs(oy) - threshold * (ay1 - ay0 + by1 - by0), 0.0)
    if norm == 0 or (rx < 1e-3 and ry < 1e-3):
        return set()
    dx, dy = (rx if ox > 0 else -rx) / norm, (ry if oy > 0 else -ry) / norm
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def _apart(a: SceneObject, b: SceneObject, gap: float = MIN_GAP) -> bool:
    reach = (a.size + b.size) / 2 + gap
    return abs(a.centre[0] - b.centre[0]) >= reach or abs(a.centre[1] - b.centre[1]) >= reach


def _clear_relation(a: SceneObject, b: SceneObject, relation: str) -> bool:
    """A strict version of `relation` (a margin for rendering and detection): the main-axis offset is at least
    twice the cross-axis one plus 2 px, the objects do not overlap along the main axis, and GenEval's rule
    gives exactly {relation}."""
    ox, oy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
    main, cross = (ox, oy) if relation in ("left of", "right of") else (oy, ox)
    sign = -1 if relation in ("left of", "above") else 1
    return (
        sign * main >= (a.size + b.size) / 2 + MIN_GAP
        and abs(main) >= 2 * abs(cross) + 2
        and spatial_relations(a.box, b.box) == {relation}
    )


# ----------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------


def sample_prompt_spec(rng: random.Random, prompt_type: str, held_out: bool | None = None) -> PromptSpec:
    """Draw the requirements of a prompt of one type.

    Args:
        rng (`random.Random`): The source of randomness (seed it for determinism).
        prompt_type (`str`): One of :data:`PROMPT_TYPES`.
        held_out (`bool`, *optional*): ``True``: only held-out prompts; ``False``: only training prompts;
            ``None``: any.
    """
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f"prompt_type={prompt_type!r} is not one of {PROMPT_TYPES}.")
    pairs = [ObjectSpec(c, s) for c in COLOURS for s in SHAPES]
    while True:
        if prompt_type in ("single_object", "counting"):
            objects = (rng.choice(pairs),)
        else:
            objects = tuple(rng.sample(pairs, 2))
        count = rng.choice(tuple(COUNT_WORDS)) if prompt_type == "counting" else 1
        relation = rng.choice(RELATIONS) if prompt_type == "position" else None
        spec = PromptSpec(prompt_type, objects, count=count, relation=relation)
        if held_out is None or is_held_out(spec) == held_out:
            return spec


def scene_from_spec(rng: random.Random, spec: PromptSpec, max_tries: int = 1000) -> Scene:
    """Place the objects of a prompt spec at random (jittered positions and sizes, no overlaps) so that the
    scene satisfies its prompt.

    Args:
        rng (`random.Random`): The source of randomness.
        spec (`PromptSpec`): What the scene must show.
        max_tries (`int`): Rejection-sampling budget (the default never runs out in practice).
    """
    _validate_spec(spec)
    wanted = [spec.objects[0]] * spec.count if spec.prompt_type == "counting" else list(spec.objects)
    for _ in range(max_tries):
        objects = []
        for obj in wanted:
            size = rng.uniform(MIN_SIZE, MAX_SIZE)
            low, high = size / 2 + 1, IMAGE_SIZE - size / 2 - 1
            objects.append(
                SceneObject(obj.shape, obj.colour, (rng.uniform(low, high), rng.uniform(low, high)), size)
            )
        if not all(_apart(a, b) for i, a in enumerate(objects) for b in objects[i + 1 :]):
            continue
        if spec.prompt_type == "position" and not _clear_relation(objects[0], objects[1], spec.relation):
            continue
        return Scene(spec.prompt_type, tuple(objects), spec.relation)
    raise ValueError(f"scene_from_spec: could not place {spec} in {max_tries} tries; raise max_tries.")


def sample_scene(rng: random.Random, prompt_type: str, held_out: bool | None = None) -> Scene:
    """A random scene of one prompt type that satisfies its prompt.

    Args:
        rng (`random.Random`): The source of randomness (seed it for determinism).
        prompt_type (`str`): One of :data:`PROMPT_TYPES`.
        held_out (`bool`, *optional*): ``True``: only held-out prompts; ``False``: only training prompts;
            ``None``: any.

    Returns:
        `Scene`
    """
    return scene_from_spec(rng, sample_prompt_spec(rng, prompt_type, held_out))


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------

_SHAPE_IDS = {shape: i for i, shape in enumerate(SHAPES)}


def render(scenes: Sequence[Scene], supersample: int = 4, chunk_size: int = 256) -> torch.Tensor:
    """Render scenes to images, anti-aliased by supersampling; deterministic.

    Args:
        scenes (`Sequence[Scene]`): N scenes.
        supersample (`int`): Samples per pixel side (coverage is averaged over ``supersample**2`` points).
        chunk_size (`int`): Scenes rendered at once (bounds memory).

    Returns:
        `torch.Tensor` of shape `(N, 3, 32, 32)`, float32 in [0, 1].
    """
    if supersample < 1:
        raise ValueError(f"render: supersample={supersample} must be >= 1.")
    if len(scenes) == 0:
        return torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE)
    return torch.cat(
        [_render_chunk(scenes[i : i + chunk_size], supersample) for i in range(0, len(scenes), chunk_size)]
    )


def _render_chunk(scenes: Sequence[Scene], ss: int) -> torch.Tensor:
    n, k = len(scenes), max(len(s.objects) for s in scenes)
    params = torch.zeros(n, k, 4)  # cx, cy, size, shape id; size 0 = empty slot
    colours = torch.zeros(n, k, 3)
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):
            params[i, j] = torch.tensor([obj.centre[0], obj.centre[1], obj.size, _SHAPE_IDS[obj.shape]])
            colours[i, j] = torch.tensor(PALETTE[obj.colour])
    fine = (torch.arange(IMAGE_SIZE * ss, dtype=torch.float32) + 0.5) / ss
    y, x = fine.view(1, 1, -1, 1), fine.view(1, 1, 1, -1)
    cx, cy, size, shape = (params[..., c].view(n, k, 1, 1) for c in range(4))
    half = size / 2
    dx, dy = x - cx, y - cy
    circle = dx * dx + dy * dy <= half * half
    square = (dx.abs() <= half) & (dy.abs() <= half)
    triangle = (dy.abs() <= half) & (dx.abs() <= (dy + half) / 2)
    inside = torch.where(shape == 0, circle, torch.where(shape == 1, square, triangle)) & (size > 0)
    coverage = F.avg_pool2d(inside.float(), ss)  # (n, k, 32, 32)
    image = torch.tensor(BACKGROUND).view(1, 3, 1, 1).expand(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    for j in range(k):
        cov = coverage[:, j : j + 1]
        image = image * (1 - cov) + colours[:, j].view(n, 3, 1, 1) * cov
    return image.clamp(0, 1)


# ----------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------


def _check_count(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}.")


def _check_types(prompt_types: Sequence[str]) -> tuple[str, ...]:
    prompt_types = tuple(prompt_types)
    bad = [t for t in prompt_types if t not in PROMPT_TYPES]
    if not prompt_types or bad:
        raise ValueError(f"prompt_types={prompt_types!r}: pass a non-empty subset of {PROMPT_TYPES}.")
    return prompt_types


def sample_scenes(
    n: int, seed: int, prompt_types: Sequence[str] = PROMPT_TYPES, held_out: bool | None = None
) -> list[Scene]:
    """``n`` seeded random scenes; row ``i`` has prompt type ``prompt_types[i % len(prompt_types)]``
    (balanced).

    Args:
        n (`int`): Number of scenes.
        seed (`int`): Seed of the `random.Random` that draws them (same seed, same scenes).
        prompt_types (`Sequence[str]`): Which prompt types, cycled.
        held_out (`bool`, *optional*): Restrict to held-out (``True``) or training (``False``) prompts.
    """
    _check_count("n", n, 0)
    prompt_types = _check_types(prompt_types)
    rng = random.Random(seed)
    return [sample_scene(rng, prompt_types[i % len(prompt_types)], held_out) for i in range(n)]


def make_prompt_datasets(
    num_train: int, num_test: int, seed: int = 0, prompt_types: Sequence[str] = PROMPT_TYPES
):
    """Train/test prompt sets for schedule learning, with a held-out test split.

    Test rows are drawn only from held-out prompts and train rows only from the others
    (:func:`is_held_out`), so
    no test prompt ever appears in train. Prompt types are balanced (cycled) in each split. Prompts repeat
    within a split (each row has its own scene).

    Args:
        num_train (`int`): Rows of the ``"train"`` split (>= 1).
        num_test (`int`): Rows of the ``"test"`` split (>= 1).
        seed (`int`): Same seed, same datasets.
        prompt_types (`Sequence[str]`): Which prompt types to include.

    Returns:
        `datasets.DatasetDict` with splits ``"train"`` and ``"test"``, columns ``prompt`` (str),
        ``prompt_type``
        (str) and ``scene`` (the ground-truth scene as JSON; ``render([Scene.from_json(row["scene"])])``).
    """
    from datasets import Dataset, DatasetDict, Features, Value

    _check_count("num_train", num_train, 1)
    _check_count("num_test", num_test, 1)
    features = Features({"prompt": Value("string"), "prompt_type": Value("string"), "scene": Value("string")})
    splits = {}
    for offset, (name, n, held_out) in enumerate((("train", num_train, False), ("test", num_test, True))):
        scenes = sample_scenes(n, seed * 2 + offset, prompt_types, held_out)
        rows = {
            "prompt": [prompt_for(s) for s in scenes],
            "prompt_type": [s.prompt_type for s in scenes],
            "scene": [s.to_json() for s in scenes],
        }
        splits[name] = Dataset.from_dict(rows, features=features)
    return DatasetDict(splits)


def make_training_pairs(
    n: int, seed: int = 0, prompt_types: Sequence[str] = PROMPT_TYPES, exclude_held_out: bool = False
) -> tuple[torch.Tensor, list[str]]:
    """Ground-truth (image, prompt) pairs for training the testbed's base text-to-image model.

    The base model plays the part of a pretrained sampler, so by default it sees the whole world (held-out
    prompts included); pass ``exclude_held_out=True`` to keep the test prompts unseen by it too.

    Args:
        n (`int`): Number of pairs.
        seed (`int`): Same seed, same pairs.
        prompt_types (`Sequence[str]`): Which prompt types (cycled, balanced).
        exclude_held_out (`bool`): Draw only training (non-held-out) prompts.

    Returns:
        `tuple`: images `(n, 3, 32, 32)` float32 in [0, 1] and the `n` prompts.
    """
    scenes = sample_scenes(n, seed, prompt_types, held_out=False if exclude_held_out else None)
    return render(scenes), [prompt_for(s) for s in scenes]
