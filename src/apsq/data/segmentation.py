"""Semantic-segmentation data: the ADE20K pipeline and an offline stand-in with exact pixel labels.

Rows are ``{"image": HxWx3 uint8, "annotation": HxW int64}`` with ADE20K's class convention: 0 is
"other" (ignored), ``1..C`` the classes (:func:`apsq.data.hub.load_ade20k` returns them so).
:class:`SegmentationBatches` turns rows into batches as mmsegmentation's ADE20K configs do
(``configs/_base_/datasets/ade20k.py``):

* ``reduce_zero_label``: label 0 -> :data:`IGNORE_INDEX` (255), ``k`` -> ``k - 1``;
* training: ``RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)``,
  ``RandomCrop(512, cat_max_ratio=0.75)``, ``RandomFlip(0.5)``, padding to the crop (image 0, label
  255). mmseg's ``PhotoMetricDistortion`` (colour jitter) is not applied;
* evaluation: single scale, ``Resize(scale=(2048, 512), keep_ratio=True)`` of the image; the labels
  stay at their original size (the logits are resized to them, :mod:`apsq.train.segmentation`).

Images are normalised with the ImageNet mean / std (mmseg's ``data_preprocessor``). Randomness comes
from torch's global generator, which the training loop reseeds before every step
(:func:`apsq.train.loop.run_steps`), so batches are reproducible and a resumed run repeats them.

``digit-scenes`` (:func:`digit_scenes`) is the offline stand-in: real photo pixels (scikit-learn's two
sample photos) and real handwritten digits (scikit-learn's ``load_digits``) composited into small
scenes whose every label is exact by construction (``docs/segmentation.md``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F

from apsq.data.splits import check_split, split_of
from apsq.errors import APSQError

IGNORE_INDEX = 255
"""Label of pixels the loss and the metric skip (mmseg's ``ignore_index``)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SegPipeline:
    """One dataset's mmseg-style pipeline settings (see the module docstring).

    ``scale``: ``(long, short)`` side limits of the keep-ratio resize (ADE20K: ``(2048, 512)``);
    ``ratio_range``: the training resize multiplies ``scale`` by a uniform factor in this range;
    ``crop``: square training crop in pixels; ``flip``: random horizontal flip (p = 0.5);
    ``cat_max_ratio``: a training crop is redrawn (up to 10 times) while one class covers more than this
    share of its labelled pixels."""

    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    crop: int = 512
    flip: bool = True
    cat_max_ratio: float = 0.75


ADE20K_PIPELINE = SegPipeline()
"""mmsegmentation's ADE20K 512 x 512 pipeline."""
DIGIT_SCENES_SIZE = 32
"""Side of a ``digit-scenes`` image in pixels."""
DIGIT_SCENES_PIPELINE = SegPipeline(scale=(4 * DIGIT_SCENES_SIZE, DIGIT_SCENES_SIZE), crop=DIGIT_SCENES_SIZE,
                                    flip=False)
"""The ADE20K pipeline at the stand-in's scale (short side 32, crop 32); no flip: a mirrored digit is
not a digit."""


def pipeline_of(name: str) -> SegPipeline:
    """The pipeline of a segmentation ``data.name`` (``ade20k`` or ``digit-scenes``)."""
    from apsq.errors import check_choice

    check_choice("data.name", name, ("ade20k", "digit-scenes"))
    return ADE20K_PIPELINE if name == "ade20k" else DIGIT_SCENES_PIPELINE


def reduce_zero_label(ann: np.ndarray | torch.Tensor) -> torch.Tensor:
    """ADE20K labels -> training labels: 0 ("other") -> :data:`IGNORE_INDEX`, ``k`` -> ``k - 1``
    (mmseg's ``reduce_zero_label``). Returns int64."""
    a = ann.to(torch.int64) if isinstance(ann, torch.Tensor) else torch.from_numpy(np.array(ann, dtype=np.int64))
    out = a - 1
    out[a == 0] = IGNORE_INDEX
    return out


def _resize_shape(h: int, w: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv ``rescale_size`` with ``keep_ratio``: the largest factor that fits ``(long, short)``."""
    long_t, short_t = max(scale), min(scale)
    f = min(long_t / max(h, w), short_t / min(h, w))
    return max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))


def _normalise(img: torch.Tensor) -> torch.Tensor:
    """``[3, H, W]`` float in 0..255 -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD).reshape(3, 1, 1) * 255.0
    return (img - mean) / std


@overload
def _resize(img: torch.Tensor, lab: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def _resize(img: torch.Tensor, lab: None, hw: tuple[int, int]) -> tuple[torch.Tensor, None]: ...
def _resize(img: torch.Tensor, lab: torch.Tensor | None, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bilinear image ``[3, H, W]`` float, nearest labels ``[H, W]``."""
    if tuple(img.shape[-2:]) != hw:
        img = F.interpolate(img[None], size=hw, mode="bilinear", align_corners=False)[0]
        if lab is not None:
            lab = F.interpolate(lab[None, None].float(), size=hw, mode="nearest")[0, 0].long()
    return img, lab


class SegmentationBatches:
    """A :class:`apsq.train.tasks.BatchSource` of segmentation rows.

    ``batch(idx)`` returns ``pixel_values [B, 3, H, W]`` (float32, normalised) and ``labels [B, H', W']``
    (int64, :data:`IGNORE_INDEX` where ignored). Training (``train=True``): random-scale crops of
    ``pipeline.crop`` (H = H' = crop). Evaluation: the keep-ratio resized image and the original labels;
    when the images of ``idx`` differ in size, ``variable_size`` is True and the caller must take one row
    per batch (:func:`apsq.train.evaluate` does).

    Raises:
        APSQError: no rows, or a row whose image is not HxWx3 uint8-like or whose annotation is not HxW.
    """

    def __init__(self, rows: Sequence[dict[str, Any]], pipeline: SegPipeline, train: bool, name: str = "data") -> None:
        if not rows:
            raise APSQError(f"{name}: no segmentation rows")
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        for i, r in enumerate(rows):
            img, ann = np.asarray(r["image"]), np.asarray(r["annotation"])
            if img.ndim != 3 or img.shape[2] != 3 or ann.shape != img.shape[:2]:
                raise APSQError(f"{name} row {i}: image must be HxWx3 and annotation HxW, got {img.shape} / {ann.shape}")
            self.images.append(torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1))  # a writable copy
            self.labels.append(reduce_zero_label(ann))
        self.pipeline, self.train = pipeline, train
        self.variable_size = len({tuple(x.shape) for x in self.images}) > 1

    def __len__(self) -> int:
        return len(self.images)

    def _crop(self, img: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.pipeline
        lo, hi = p.ratio_range
        r = lo + (hi - lo) * float(torch.rand(()))
        img, lab = _resize(img, lab, _resize_shape(img.shape[-2], img.shape[-1], (p.scale[0] * r, p.scale[1] * r)))
        h, w = img.shape[-2:]
        for _ in range(10):
            y = int(torch.randint(0, max(h - p.crop, 0) + 1, ()))
            x = int(torch.randint(0, max(w - p.crop, 0) + 1, ()))
            cl = lab[y:y + p.crop, x:x + p.crop]
            _, counts = torch.unique(cl[cl != IGNORE_INDEX], return_counts=True)
            if len(counts) > 1 and int(counts.max()) / int(counts.sum()) < p.cat_max_ratio:
                break
        img, lab = img[:, y:y + p.crop, x:x + p.crop], lab[y:y + p.crop, x:x + p.crop]
        if p.flip and float(torch.rand(())) < 0.5:
            img, lab = img.flip(-1), lab.flip(-1)
        ph, pw = p.crop - img.shape[1], p.crop - img.shape[2]
        img = _normalise(img)
        if ph or pw:  # mmseg pads the normalised image with 0 and the labels with the ignore index
            img = F.pad(img, (0, pw, 0, ph), value=0.0)
            lab = F.pad(lab, (0, pw, 0, ph), value=IGNORE_INDEX)
        return img, lab

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        imgs, labs = [], []
        for i in idx:
            img, lab = self.images[i].float(), self.labels[i]
            if self.train:
                img, lab = self._crop(img, lab)
            else:
                img, _ = _resize(img, None, _resize_shape(img.shape[-2], img.shape[-1], self.pipeline.scale))
                img = _normalise(img)
            imgs.append(img)
            labs.append(lab)
        if len({tuple(x.shape) for x in imgs}) > 1 or len({tuple(x.shape) for x in labs}) > 1:
            raise APSQError("rows of different sizes in one evaluation batch; evaluate one row per batch "
                            "(eval.batch_size: 1)")
        return {"pixel_values": torch.stack(imgs), "labels": torch.stack(labs)}


# --- the offline stand-in -----------------------------------------------------------------------
DIGIT_SCENES_CLASSES = tuple(f"digit {d}" for d in range(10)) + ("china photo", "flower photo")
"""Class names of ``digit-scenes`` after ``reduce_zero_label`` (training ids 0..11; raw ids 1..12)."""
DIGIT_SCENES_ROWS = {"train": 2000, "validation": 256, "test": 256}
"""Scenes per split."""
_PHOTO_BANDS = {"train": (0.0, 0.7), "validation": (0.7, 0.85), "test": (0.85, 1.0)}
"""Rows of each (half-size) sample photo a split's background crops come from: disjoint bands."""


DIGIT_GLYPH_FRACTION = (9 / 16, 13 / 16)
"""Side of a pasted digit as a fraction of the scene's side, ``[low, high)`` (18..25 px in a 32 px scene)."""
INK_CONTRAST = 96.0
"""Least luminance difference (0..255) between a digit's ink and the mean of the pixels it is painted on."""


def _glyph_px(size: int) -> tuple[int, int]:
    """``[low, high)`` digit side in pixels for a ``size``-pixel scene (:data:`DIGIT_GLYPH_FRACTION`)."""
    return round(DIGIT_GLYPH_FRACTION[0] * size), round(DIGIT_GLYPH_FRACTION[1] * size)


_LUMA = np.array([0.299, 0.587, 0.114])


def _contrasting_ink(rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    """A random RGB ink whose luminance (Rec. 601) differs from ``region``'s mean by >= :data:`INK_CONTRAST`:
    dark ink on a light background, light ink on a dark one (an ink the colour of its background would be
    a label nobody can see)."""
    back = float(region.reshape(-1, 3).mean(0) @ _LUMA)
    while True:
        ink = rng.uniform(0, 255, 3)
        if abs(float(ink @ _LUMA) - back) >= INK_CONTRAST:
            return ink


def _split_seed(split: str) -> int:
    return int(hashlib.sha256(f"digit-scenes:{split}".encode()).hexdigest()[:12], 16)


def digit_scenes(split: str = "train", n: int | None = None, size: int = DIGIT_SCENES_SIZE) -> list[dict[str, Any]]:
    """The ``digit-scenes`` rows (see :func:`_digit_scenes`; made once per process and arguments)."""
    check_split(split)
    if not isinstance(size, int) or not 16 <= size <= 32:
        raise APSQError(f"digit-scenes size must be an int in 16..32 (the photos' validation / test bands are 32 "
                        f"rows); got {size!r}")
    return [dict(r) for r in _digit_scenes(split, DIGIT_SCENES_ROWS[split] if n is None else int(n), size)]


@functools.lru_cache(maxsize=8)
def _digit_scenes(split: str, n: int, size: int) -> tuple[dict[str, Any], ...]:
    """The ``digit-scenes`` stand-in: ``n`` (default :data:`DIGIT_SCENES_ROWS`) scenes of ``size`` x ``size``.

    Each scene: a crop of one of scikit-learn's two sample photos (china, flower; downscaled 2x), a
    random half-plane filled with a crop of the other photo, and one or two handwritten digits
    (scikit-learn's 8 x 8 ``load_digits``, bilinearly enlarged to 9/16..13/16 of the scene's side, 18..25 px
    at 32) painted on in a random ink colour that contrasts with the pixels under it
    (:func:`_contrasting_ink`), with their intensity as alpha. Labels (ADE20K convention): ``1 + d`` where a digit ``d``'s
    alpha >= 0.5, 0 ("other", ignored) on its soft edge (0.15 < alpha < 0.5), 11 / 12 on the china /
    flower pixels. Splits share nothing: digits by the project's hash split
    (:func:`apsq.data.splits.split_of`, ``"digits"``), photo crops from disjoint row bands of each
    photo. Deterministic (seeded by the split's name).

    Raises:
        APSQError: unknown split, ``size`` outside 16..32.
    """
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(_split_seed(split))
    photos = []
    for p in load_sample_images().images:  # [427, 640, 3] uint8, downscaled 2x by averaging
        h, w = (p.shape[0] // 2) * 2, (p.shape[1] // 2) * 2
        half = p[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3))
        lo, hi = _PHOTO_BANDS[split]
        photos.append(half[int(lo * half.shape[0]): int(hi * half.shape[0])])
    d = load_digits()
    keep = [i for i in range(len(d.target)) if split_of("digits", str(i)) == split]
    glyphs, classes = d.images[keep] / 16.0, d.target[keep]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    rows = []
    for _ in range(n):
        a, b = (0, 1) if rng.random() < 0.5 else (1, 0)
        img = np.empty((size, size, 3))
        lab = np.empty((size, size), dtype=np.int64)
        for k, which in ((0, a), (1, b)):
            src = photos[which]
            y0, x0 = rng.integers(0, src.shape[0] - size + 1), rng.integers(0, src.shape[1] - size + 1)
            crop = src[y0:y0 + size, x0:x0 + size]
            if k == 0:
                img[:], lab[:] = crop, 11 + which
            else:  # a random half-plane through a random point of the middle half
                theta = rng.uniform(0, 2 * np.pi)
                cy, cx = rng.uniform(size / 4, 3 * size / 4, 2)
                m = (np.cos(theta) * (xx - cx) + np.sin(theta) * (yy - cy)) > 0
                img[m], lab[m] = crop[m], 11 + which
        for _ in range(int(rng.integers(1, 3))):
            j = int(rng.integers(len(glyphs)))
            g = int(rng.integers(*_glyph_px(size)))
            alpha = F.interpolate(torch.from_numpy(glyphs[j])[None, None], size=(g, g), mode="bilinear",
                                  align_corners=False)[0, 0].clamp(0, 1).numpy()
            y0, x0 = rng.integers(0, size - g + 1), rng.integers(0, size - g + 1)
            region = img[y0:y0 + g, x0:x0 + g]
            ink = _contrasting_ink(rng, region)
            img[y0:y0 + g, x0:x0 + g] = (1 - alpha[..., None]) * region + alpha[..., None] * ink
            lr = lab[y0:y0 + g, x0:x0 + g]
            lr[alpha >= 0.5] = 1 + int(classes[j])
            lr[(alpha > 0.15) & (alpha < 0.5)] = 0
        image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        image.flags.writeable = False
        lab.flags.writeable = False
        rows.append({"image": image, "annotation": lab})
    return tuple(rows)
