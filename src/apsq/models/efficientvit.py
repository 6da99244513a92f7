"""EfficientViT (MIT), Cai et al., "EfficientViT: Lightweight Multi-Scale Attention for High-Resolution
Dense Prediction", ICCV 2023 — the B1 backbone and its segmentation head, written here from the paper's
description and its published configuration (timm cannot be installed in this project).

B1: ``width_list = [16, 32, 64, 128, 256]``, ``depth_list = [1, 2, 3, 3, 4]``, attention head
dimension ``dim = 16``, MBConv expansion 4, BatchNorm + Hardswish.

- input stem: 3x3 stride-2 conv (3 -> 16), then ``depth_list[0]`` residual depthwise-separable blocks;
- stages 1, 2: MBConv blocks (first one stride 2), widths 32, 64;
- stages 3, 4: a stride-2 MBConv, then EfficientViT blocks (lightweight multi-scale linear attention,
  "LiteMLA", with ReLU kernels and a 5x5 multi-scale token aggregation, followed by an MBConv), widths
  128, 256;
- segmentation head (ADE20K config): 1x1 projections of stages 4/3/2 to width 64, upsampled to stride 8
  and added, 3 residual MBConv blocks (expand 4), a 1x1 classifier to 150 classes (the ADE20K head has
  no final expansion conv; the Cityscapes one expands to 4 x 64 first: ``final_expand=4``).

The ReLU linear attention computes, per head, ``vk = [V; 1] · Kᵀ`` (a (d+1) x d matrix, reduced over
the H·W tokens) and ``out = vk · Q``: two matmuls that the energy tracer records.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientViTBackbone", "EfficientViTSeg", "efficientvit_b1_seg", "B1_WIDTHS", "B1_DEPTHS", "B1_DIM"]

B1_WIDTHS = (16, 32, 64, 128, 256)
B1_DEPTHS = (1, 2, 3, 3, 4)
B1_DIM = 16


class ConvBNAct(nn.Sequential):
    """Conv2d ('same' padding) + optional BatchNorm + optional Hardswish."""

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int = 3,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
        norm: bool = True,
        act: bool = True,
    ) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias)]
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        if act:
            layers.append(nn.Hardswish())
        super().__init__(*layers)


class DSConv(nn.Module):
    """Depthwise 3x3 (+BN+act) then pointwise 1x1 (+BN)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.depth_conv = ConvBNAct(cin, cin, 3, stride, groups=cin)
        self.point_conv = ConvBNAct(cin, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand, 3x3 depthwise, 1x1 project.

    ``fewer_norm`` (stage-3/4 downsampling and EfficientViT blocks): the first two convs have a bias and
    no BatchNorm, only the projection is normalised.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: float = 4, fewer_norm: bool = False) -> None:
        super().__init__()
        mid = round(cin * expand)
        self.inverted_conv = ConvBNAct(cin, mid, 1, bias=fewer_norm, norm=not fewer_norm)
        self.depth_conv = ConvBNAct(mid, mid, 3, stride, groups=mid, bias=fewer_norm, norm=not fewer_norm)
        self.point_conv = ConvBNAct(mid, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class Residual(nn.Module):
    """``main(x) + x`` (identity shortcut)."""

    def __init__(self, main: nn.Module) -> None:
        super().__init__()
        self.main = main

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention (ReLU kernel), heads of dimension ``dim``."""

    apsq_reductions = ("vk_matmul", "out_matmul")
    """The two activation x activation matmuls of :meth:`_linear_attention`: apsq leaves them in full
    precision and ``apsq.quantize_`` lists them in ``model.apsq_report.skipped``."""

    def __init__(self, channels: int, dim: int = B1_DIM, scales: tuple[int, ...] = (5,), eps: float = 1e-15) -> None:
        super().__init__()
        heads = channels // dim
        total = heads * dim
        self.dim, self.eps = dim, eps
        self.qkv = nn.Conv2d(channels, 3 * total, 1, bias=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                nn.Conv2d(3 * total, 3 * total, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.proj = ConvBNAct(total * (1 + len(scales)), channels, 1, act=False)

    def _linear_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        b, _, h, w = qkv.shape
        qkv = qkv.reshape(b, -1, 3 * self.dim, h * w)  # [B, heads, 3d, HW]
        q, k, v = qkv[:, :, : self.dim], qkv[:, :, self.dim : 2 * self.dim], qkv[:, :, 2 * self.dim :]
        q, k = F.relu(q), F.relu(k)
        v = F.pad(v, (0, 0, 0, 1), value=1.0)  # [B, heads, d+1, HW]
        vk = torch.matmul(v, k.transpose(-1, -2))  # [B, heads, d+1, d], reduction over HW
        out = torch.matmul(vk, q)  # [B, heads, d+1, HW], reduction over d
        out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return out.reshape(b, -1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [op(qkv) for op in self.aggreg], dim=1)
        return self.proj(self._linear_attention(qkv))


class EfficientViTBlock(nn.Module):
    """Context (LiteMLA) then local (MBConv) module, both residual."""

    def __init__(self, channels: int, dim: int = B1_DIM, expand: float = 4) -> None:
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, dim))
        self.local_module = Residual(MBConv(channels, channels, 1, expand, fewer_norm=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


class EfficientViTBackbone(nn.Module):
    """Returns the feature maps of stages 1-4 (strides 4, 8, 16, 32) and the stem (stride 2)."""

    def __init__(
        self,
        widths: tuple[int, ...] = B1_WIDTHS,
        depths: tuple[int, ...] = B1_DEPTHS,
        dim: int = B1_DIM,
        expand: float = 4,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        stem: list[nn.Module] = [ConvBNAct(in_channels, widths[0], 3, 2)]
        stem += [Residual(DSConv(widths[0], widths[0])) for _ in range(depths[0])]
        self.input_stem = nn.Sequential(*stem)
        cin = widths[0]
        stages: list[nn.Module] = []
        for w, d in zip(widths[1:3], depths[1:3]):
            blocks: list[nn.Module] = []
            for i in range(d):
                block = MBConv(cin, w, 2 if i == 0 else 1, expand)
                blocks.append(block if i == 0 else Residual(block))
                cin = w
            stages.append(nn.Sequential(*blocks))
        for w, d in zip(widths[3:], depths[3:]):
            blocks = [MBConv(cin, w, 2, expand, fewer_norm=True)]
            cin = w
            blocks += [EfficientViTBlock(cin, dim, expand) for _ in range(d)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.widths = tuple(widths)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = {"stage0": self.input_stem(x)}
        x = feats["stage0"]
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            feats[f"stage{i}"] = x
        return feats


class SegHead(nn.Module):
    """EfficientViT segmentation head: fuse stages 4/3/2 at stride 8, MBConv middle, 1x1 classifier."""

    def __init__(
        self,
        in_channels: tuple[int, ...] = (256, 128, 64),
        strides: tuple[int, ...] = (32, 16, 8),
        head_stride: int = 8,
        width: int = 64,
        depth: int = 3,
        expand: float = 4,
        final_expand: int | None = None,
        num_classes: int = 150,
    ) -> None:
        super().__init__()
        self.fids = ("stage4", "stage3", "stage2")
        self.inputs = nn.ModuleList(ConvBNAct(c, width, 1, act=False) for c in in_channels)
        self.factors = tuple(s // head_stride for s in strides)
        self.middle = nn.Sequential(*[Residual(MBConv(width, width, 1, expand)) for _ in range(depth)])
        out = width * (final_expand or 1)
        self.final = ConvBNAct(width, out, 1) if final_expand else nn.Identity()
        self.classifier = nn.Conv2d(out, num_classes, 1, bias=True)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        # upsampled to the stride-8 map's size (ceil(H / 8) x ceil(W / 8)): the same interpolation as the
        # fixed factor where the input's sides are multiples of 32, and any other size works too (an ADE20K
        # image resized keep-ratio to 512 x 683 made 88- and 86-wide maps under the fixed factor)
        size = feats[self.fids[-1]].shape[-2:]
        x = None
        for fid, proj, factor in zip(self.fids, self.inputs, self.factors):
            y = proj(feats[fid])
            if factor > 1:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            x = y if x is None else x + y
        return self.classifier(self.final(self.middle(x)))


class EfficientViTSeg(nn.Module):
    """Backbone + segmentation head; logits at 1/8 of the input resolution."""

    def __init__(self, backbone: EfficientViTBackbone, head: SegHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def efficientvit_b1_seg(num_classes: int = 150, dataset: str = "ade20k") -> EfficientViTSeg:
    """EfficientViT-B1 with its segmentation head: ``ade20k`` (150 classes, no final expansion) or
    ``cityscapes`` (final 1x1 expansion to 4 x 64; pass ``num_classes=19``)."""
    from apsq.errors import check_choice

    check_choice("dataset", dataset, ("ade20k", "cityscapes"))
    backbone = EfficientViTBackbone(B1_WIDTHS, B1_DEPTHS, B1_DIM)
    head = SegHead(num_classes=num_classes, final_expand=4 if dataset == "cityscapes" else None)
    return EfficientViTSeg(backbone, head)
