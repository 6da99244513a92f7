"""EfficientViT-B1 segments inputs of any size, not only multiples of 32 (trial-vis).

Its head upsampled the stride-32 and stride-16 maps by a fixed factor and added them to the stride-8 map:
at 512 x 683 (an ADE20K image after the evaluation's keep-ratio resize) the maps were 88 and 86 wide and
the forward raised a RuntimeError; ``apsq eval vision --image-size 48`` did the same. The head now
upsamples to the stride-8 map's size, which at multiples of 32 is the same interpolation bit for bit.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from apsq.models.efficientvit import efficientvit_b1_seg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return efficientvit_b1_seg(num_classes=12).eval()


@pytest.mark.parametrize("hw", [(33, 47), (64, 80), (72, 96)])
def test_any_input_size_gives_logits_at_one_eighth_rounded_up(model, hw):
    with torch.no_grad():
        y = model(torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1)))
    assert y.shape == (1, 12, -(-hw[0] // 8), -(-hw[1] // 8))
    assert torch.isfinite(y).all()


def test_at_multiples_of_32_the_head_is_the_fixed_factor_upsampling(model):
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = model.backbone(x)
        head, want = model.head, None
        for fid, proj, factor in zip(head.fids, head.inputs, head.factors):
            y = proj(feats[fid])
            if factor > 1:
                y = F.interpolate(y, scale_factor=factor, mode="bilinear", align_corners=False)
            want = y if want is None else want + y
        want = head.classifier(head.final(head.middle(want)))
        assert torch.equal(model(x), want)
