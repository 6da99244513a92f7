"""Output error of quantized vision models per PSUM variant on real photos (issue 5, experiment 2).

No pretrained Segformer or EfficientViT weights and no segmentation data exist offline, so this
measures how far each quantized model's output moves from the *same* full-precision model on real
photos (scikit-learn's two sample images): relative logit error and the share of pixels whose
predicted class changes (a proxy for the mIoU change). The models are randomly initialised with a
fixed seed; their BatchNorm statistics are first estimated on random crops of the photos so that
activations have realistic ranges. Calibration uses one photo, evaluation the other.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import apsq
from apsq.device import module_device, module_dtype, resolve_device, to_device
from apsq.errors import APSQError, check_choice, check_int, require

VISION_MODELS = ("segformer-b0", "efficientvit-b1")
VARIANTS: tuple[tuple[str, str, int], ...] = (
    ("w8a8", "none", 1), ("psq", "psq", 1),
    ("apsq_gs1", "apsq", 1), ("apsq_gs2", "apsq", 2), ("apsq_gs3", "apsq", 3), ("apsq_gs4", "apsq", 4),
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sample_photos(size: int) -> torch.Tensor:
    """scikit-learn's two sample photos (china, flower) as a normalised ``[2, 3, size, size]`` batch."""
    import numpy as np

    datasets = require("sklearn.datasets", extra="demo", what="the sample photos (scikit-learn's load_sample_images)")
    imgs = torch.from_numpy(np.stack(datasets.load_sample_images().images)).to(torch.float32)
    imgs = imgs.permute(0, 3, 1, 2) / 255.0
    imgs = F.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    return (imgs - mean) / std


class _Logits(nn.Module):
    """Uniform ``model(x) -> logits`` wrapper (Hugging Face Segformer returns an output object)."""

    def __init__(self, model: nn.Module, hf: bool) -> None:
        super().__init__()
        self.model, self.hf = model, hf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits if self.hf else self.model(x)


def build_vision_model(name: str, seed: int = 0) -> nn.Module:
    """Seeded random-init Segformer-B0 (transformers config) or EfficientViT-B1 (ours), 150 classes."""
    check_choice("model", name, VISION_MODELS)
    torch.manual_seed(seed)
    if name == "segformer-b0":
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        cfg = SegformerConfig()
        cfg.num_labels = 150  # a PreTrainedConfig property (not in the typed __init__)
        return _Logits(SegformerForSemanticSegmentation(cfg), hf=True)
    from apsq.models.efficientvit import efficientvit_b1_seg

    return _Logits(efficientvit_b1_seg(num_classes=150), hf=False)


@torch.no_grad()
def estimate_batchnorm(model: nn.Module, photos: torch.Tensor, crops: int = 8, seed: int = 0) -> None:
    """Set BatchNorm running statistics from random half-size crops (cumulative average); the crops
    are drawn on the CPU (seeded) and moved to the model's device and dtype."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    g = torch.Generator().manual_seed(seed)
    size = photos.shape[-1]
    half = size // 2
    model.train()
    device, dtype = module_device(model), module_dtype(model)
    for _ in range(crops):
        i, j = (int(v) for v in torch.randint(0, size - half + 1, (2,), generator=g))
        crop = photos[:, :, i:i + half, j:j + half]
        model(to_device(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False), device, dtype))
    model.eval()


@torch.no_grad()
def vision_output_error(name: str, image_size: int = 256, seed: int = 0,
                        variants: tuple[tuple[str, str, int], ...] = VARIANTS,
                        device: str | torch.device | None = "auto", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Per variant: relative logit error and changed-pixel share vs full precision on the second photo.

    The models run on ``device`` (``"auto"``: CUDA when present) in ``dtype``; the photos are moved
    there and the logits compared on the CPU in float32.

    Raises:
        APSQError: bad ``model`` / ``image_size`` / ``device``, before any model is built.
    """
    check_choice("model", name, VISION_MODELS)
    check_int("image_size", image_size, lo=32)
    dev = resolve_device(device, "device")
    photos = sample_photos(image_size)
    fp = build_vision_model(name, seed).to(device=dev, dtype=dtype)
    estimate_batchnorm(fp, photos, seed=seed)
    calib, test = photos[:1], to_device(photos[1:], dev, dtype)
    ref = fp(test).float().cpu()
    ref_cls = ref.argmax(1)
    rows = {}
    for vname, mode, gs in variants:
        t0 = time.time()
        model = copy.deepcopy(fp)
        apsq.quantize_(model, apsq.APSQConfig(mode=mode, gs=gs, attention_matmuls=True))
        apsq.calibrate(model, [calib])
        out = model(test).float().cpu()
        rows[vname] = {
            "mode": mode, "gs": gs,
            "rel_error": float((out - ref).norm() / ref.norm()),
            "changed_pixels": float((out.argmax(1) != ref_cls).float().mean()),
            "seconds": round(time.time() - t0, 1),
        }
    return {"model": name, "image_size": image_size, "seed": seed, "device": dev.type, "variants": rows}


def plot_vision_errors(results: list[dict[str, Any]], path: str | Path) -> Path:
    """Relative output error per variant, one line per model (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for res in results:
        names = list(res["variants"])
        ax.plot(range(len(names)), [100 * res["variants"][n]["rel_error"] for n in names], "o-",
                label=f"{res['model']} @ {res['image_size']}px")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("relative output error vs FP32 (%)")
    ax.set_title("Random-init vision models on real photos, calibration only")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def run_vision(models: list[str], image_size: int, seed: int, json_out: Path | None, png_out: Path | None,
               progress: bool = True, device: str | torch.device | None = "auto") -> list[dict[str, Any]]:
    """Run :func:`vision_output_error` for ``models`` on ``device``, writing JSON / PNG if asked.

    Raises:
        APSQError: no model, an unknown one, ``image_size`` < 32 or a bad ``device``, before any model runs.
    """
    from rich.progress import Progress

    if not models:
        raise APSQError(f"models: name at least one of {', '.join(VISION_MODELS)}")
    for m in models:
        check_choice("models", m, VISION_MODELS)
    check_int("image_size", image_size, lo=32)
    resolve_device(device, "device")

    results = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("vision models", total=len(models))
        for m in models:
            results.append(vision_output_error(m, image_size, seed, device=device))
            bar.advance(task)
    if json_out:
        json_out.write_text(json.dumps({"results": results, "command": (
            f"apsq eval vision --image-size {image_size} --seed {seed} --json {json_out}"
            + (f" --png {png_out}" if png_out else ""))}, indent=2))
    if png_out:
        plot_vision_errors(results, png_out)
    return results
