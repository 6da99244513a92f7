"""Semantic segmentation in training: pixel losses, distillation on logits, mIoU as mmsegmentation.

Logits are ``[B, C, h, w]`` (the models predict at a fraction of the input size); labels ``[B, H, W]``
int64 with :data:`apsq.data.segmentation.IGNORE_INDEX` where ignored. As in mmseg, the logits are
resized bilinearly (``align_corners=False``) to the labels' size before the loss and the metric.
"""

from __future__ import annotations

from typing import TypedDict

import torch
import torch.nn.functional as F

from apsq.data.segmentation import IGNORE_INDEX
from apsq.errors import APSQError


def resize_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``logits [B, C, h, w]`` bilinearly resized to the labels' ``[H, W]`` (unchanged when equal)."""
    if logits.dim() != 4 or labels.dim() != 3 or logits.shape[0] != labels.shape[0]:
        raise APSQError(f"segmentation logits must be [B, C, h, w] and labels [B, H, W]; got "
                        f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if tuple(logits.shape[-2:]) == tuple(labels.shape[-2:]):
        return logits
    return F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)


def pixel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels (ignored pixels count nowhere; 0 when none is labelled)."""
    x = resize_logits(logits, labels)
    if not bool((labels != IGNORE_INDEX).any()):
        return x.sum() * 0.0
    return F.cross_entropy(x, labels, ignore_index=IGNORE_INDEX)


def pixel_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 KL(p_t || p_s)`` per logit pixel (over the class axis 1), averaged over pixels: the text
    models' distillation loss with every logit pixel one example."""
    if student.shape != teacher.shape or student.dim() != 4:
        raise APSQError(f"student and teacher logits must both be [B, C, h, w]; got {tuple(student.shape)} and "
                        f"{tuple(teacher.shape)}")
    c = student.shape[1]
    s = student.permute(0, 2, 3, 1).reshape(-1, c) / temperature
    t = teacher.permute(0, 2, 3, 1).reshape(-1, c) / temperature
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean") * (
        temperature * temperature)


def area_counts(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[4, C]`` float64 areas of one batch: intersection, union, predicted, labelled pixels per class,
    over the pixels whose label is not ignored (mmseg's ``intersect_and_union``).

    ``pred``, ``labels``: ``[B, H, W]`` class ids (pred in ``0..C-1``)."""
    if pred.shape != labels.shape:
        raise APSQError(f"predictions {tuple(pred.shape)} and labels {tuple(labels.shape)} differ in shape")
    keep = labels != IGNORE_INDEX
    p, y = pred[keep].long(), labels[keep].long()
    if p.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise APSQError(f"labels must be 0..{num_classes - 1} or {IGNORE_INDEX} (ignored); got "
                        f"{int(y.min())}..{int(y.max())}")
    inter = torch.bincount(p[p == y], minlength=num_classes)[:num_classes].double()
    area_p = torch.bincount(p, minlength=num_classes)[:num_classes].double()
    area_y = torch.bincount(y, minlength=num_classes)[:num_classes].double()
    return torch.stack([inter, area_p + area_y - inter, area_p, area_y])


class SegMetrics(TypedDict):
    """What :func:`segmentation_metrics` returns."""

    miou: float
    """Mean IoU over the classes in the mean (NaN when there is none)."""
    pixel_accuracy: float
    """All intersections over all labelled pixels (NaN when no pixel is labelled)."""
    classes: int
    """Classes in the mean (union non-zero)."""
    iou: list[float | None]
    """IoU per class, None where the union is 0."""


def segmentation_metrics(counts: torch.Tensor) -> SegMetrics:
    """``{"miou", "pixel_accuracy", "classes"}`` from :func:`area_counts` summed over the whole set.

    mIoU as mmseg's ``total_area_to_metrics``: IoU per class = intersection / union of the totals, the
    mean over classes whose union is non-zero (a class neither labelled nor predicted is NaN there and
    ``nanmean`` skips it; a class predicted but never labelled counts with IoU 0). Pixel accuracy
    (``aAcc``): all intersections over all labelled pixels. ``classes``: classes in the mean;
    ``iou``: per class (None where the union is 0)."""
    inter, union, _, area_y = counts.double()
    present = union > 0
    miou = float((inter[present] / union[present]).mean()) if bool(present.any()) else float("nan")
    acc = float(inter.sum() / area_y.sum()) if float(area_y.sum()) > 0 else float("nan")
    iou = [float(i / u) if u > 0 else None for i, u in zip(inter.tolist(), union.tolist())]
    return {"miou": miou, "pixel_accuracy": acc, "classes": int(present.sum()), "iou": iou}
