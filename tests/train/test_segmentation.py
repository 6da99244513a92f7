"""Segmentation in training: mIoU as mmsegmentation, the ignore index, the ADE20K loader on fixtures,
the stand-in digit-scenes, one short QAT run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apsq.data.segmentation import (
    ADE20K_PIPELINE,
    IGNORE_INDEX,
    SegmentationBatches,
    SegPipeline,
    digit_scenes,
    reduce_zero_label,
)
from apsq.errors import APSQError
from apsq.train.config import parse_config
from apsq.train.segmentation import (
    area_counts,
    pixel_cross_entropy,
    pixel_distillation,
    segmentation_metrics,
)

I = IGNORE_INDEX


def test_miou_matches_a_hand_computed_case():
    # 3 classes; class 2 is predicted once but never labelled (IoU 0, counted); pixel (1, 2) ignored
    labels = torch.tensor([[[0, 0, 1], [1, 1, I]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    c = area_counts(pred, labels, 3)
    # class 0: inter 1, pred 1, label 2 -> union 2; class 1: inter 2, pred 3, label 3 -> union 4;
    # class 2: inter 0, pred 1, label 0 -> union 1
    assert c.tolist() == [[1, 2, 0], [2, 4, 1], [1, 3, 1], [2, 3, 0]]
    m = segmentation_metrics(c)
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 4 + 0) / 3)
    assert m["pixel_accuracy"] == pytest.approx(3 / 5)
    assert m["classes"] == 3
    assert m["iou"] == pytest.approx([1 / 2, 2 / 4, 0.0])


def test_miou_sums_areas_over_the_set_and_skips_absent_classes():
    """Two images: the dataset mIoU is from summed areas (not the mean of per-image mIoUs); a class
    neither labelled nor predicted anywhere is left out of the mean (mmseg's nanmean)."""
    a_lab, a_pred = torch.tensor([[[0, 0, 0, 0]]]), torch.tensor([[[0, 0, 0, 1]]])
    b_lab, b_pred = torch.tensor([[[1, 1, 1, 1]]]), torch.tensor([[[1, 1, 1, 1]]])
    total = area_counts(a_pred, a_lab, 4) + area_counts(b_pred, b_lab, 4)
    m = segmentation_metrics(total)
    # class 0: 3 / 4; class 1: inter 4, union 5 -> 4 / 5; classes 2, 3 absent
    assert m["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert m["classes"] == 2 and m["iou"][2:] == [None, None]
    assert m["pixel_accuracy"] == pytest.approx(7 / 8)


def test_ignored_pixels_change_neither_loss_nor_metric():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 4, 4, generator=g)
    labels = torch.randint(0, 5, (2, 4, 4), generator=g)
    labels[0, :2] = I
    other = logits.clone()
    other[0, :, :2] = torch.randn(5, 2, 4, generator=g) * 10  # only the ignored pixels differ
    assert torch.equal(pixel_cross_entropy(logits, labels), pixel_cross_entropy(other, labels))
    keep = labels != I
    flat = logits.permute(0, 2, 3, 1)[keep]
    assert torch.allclose(pixel_cross_entropy(logits, labels), torch.nn.functional.cross_entropy(flat, labels[keep]))
    c1 = area_counts(logits.argmax(1), labels, 5)
    c2 = area_counts(other.argmax(1), labels, 5)
    assert torch.equal(c1, c2) and float(c1[3].sum()) == float(keep.sum())
    all_ignored = torch.full_like(labels, I)
    assert float(pixel_cross_entropy(logits, all_ignored)) == 0.0


def test_labels_out_of_range_and_shape_mismatch_are_errors():
    with pytest.raises(APSQError, match="labels must be 0..2"):
        area_counts(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 3), 3)
    with pytest.raises(APSQError, match="differ in shape"):
        area_counts(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long), 3)


def test_pixel_distillation_is_the_text_kl_per_pixel():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 2, 2, generator=g)
    flat = lambda x: x.permute(0, 2, 3, 1).reshape(-1, 3)  # noqa: E731
    ref = torch.nn.functional.kl_div(torch.log_softmax(flat(s) / 2, -1), torch.log_softmax(flat(t) / 2, -1),
                                     log_target=True, reduction="batchmean") * 4
    assert torch.allclose(pixel_distillation(s, t, 2.0), ref)
    assert float(pixel_distillation(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_reduce_zero_label():
    assert reduce_zero_label(np.array([[0, 1, 150]])).tolist() == [[I, 0, 149]]


def _ade_fixture(folder, n=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("validation", 2)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(count):
                h, w = 20 + 2 * i, 30
                img = rng.integers(0, 256, (h, w, 3)).tolist()
                ann = rng.integers(0, 151, (h, w)).tolist()
                f.write(json.dumps({"image": img, "annotation": ann}) + "\n")
    return folder


def test_ade20k_loader_and_pipeline_on_fixtures(tmp_path):
    pytest.importorskip("datasets")
    from apsq.data.hub import load_ade20k
    from apsq.train.tasks import build_task

    folder = _ade_fixture(tmp_path / "ade")
    rows = load_ade20k("train", data_files=str(folder / "train.jsonl"))
    assert len(rows) == 4 and rows[1]["image"].shape == (22, 30, 3) and rows[1]["annotation"].dtype == np.int64
    cfg = parse_config({"model": {"name": "segformer-b0", "num_labels": 150},
                        "data": {"name": "ade20k", "path": str(folder)}})
    task = build_task(cfg)
    assert task.eval_split == "test" and len(task.eval) == 2  # ADE20K's validation set is the reported one
    torch.manual_seed(0)
    b = task.train.batch([0, 1])
    assert b["pixel_values"].shape == (2, 3, 512, 512) and b["labels"].shape == (2, 512, 512)
    lab = b["labels"]
    assert bool(((lab == I) | ((lab >= 0) & (lab < 150))).all())
    e = task.eval.batch([0])  # keep-ratio resize to short side 512; labels at the original size
    assert e["pixel_values"].shape == (1, 3, 512, 768) and e["labels"].shape == (1, 20, 30)
    assert task.eval.variable_size
    with pytest.raises(APSQError, match="different sizes"):
        task.eval.batch([0, 1])


def test_training_crops_pad_with_the_ignore_index_and_are_seeded():
    rows = [{"image": np.full((8, 8, 3), 100, np.uint8), "annotation": np.arange(64).reshape(8, 8) % 3 + 1}]
    pipe = SegPipeline(scale=(16, 8), ratio_range=(0.5, 0.5), crop=8, flip=True)
    data = SegmentationBatches(rows, pipe, train=True)
    torch.manual_seed(3)
    a = data.batch([0])
    torch.manual_seed(3)
    assert torch.equal(a["labels"], data.batch([0])["labels"])
    assert a["labels"].shape == (1, 8, 8)
    assert bool((a["labels"][0, 4:] == I).all()) and bool((a["pixel_values"][0, :, 4:] == 0).all())
    assert ADE20K_PIPELINE.crop == 512 and ADE20K_PIPELINE.ratio_range == (0.5, 2.0)


def test_bad_rows_are_refused():
    with pytest.raises(APSQError, match="row 0"):
        SegmentationBatches([{"image": np.zeros((4, 4, 3)), "annotation": np.zeros((4, 5))}], ADE20K_PIPELINE, False)


def test_digit_scenes_are_deterministic_labelled_and_disjoint():
    a, b = digit_scenes("test", n=6), digit_scenes("test", n=6)
    assert all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))
    lab = np.stack([x["annotation"] for x in a])
    assert lab.min() >= 0 and lab.max() <= 12 and set(np.unique(lab)) & {11, 12}
    assert ((lab >= 1) & (lab <= 10)).any()  # digits are there
    v = digit_scenes("validation", n=6)
    assert not any(np.array_equal(x["image"], y["image"]) for x in a for y in v)
    with pytest.raises(APSQError, match="size"):
        digit_scenes("test", n=1, size=40)


def test_digit_scenes_digits_are_large_and_visible():
    """Pasted digits are 18..25 px (a digit's labelled strokes fit in that box; two touching digits of
    one class may merge, hence the 90 %) and large on average; the ink contrasts with the pixels it covers
    (:data:`INK_CONTRAST` in luminance): a label nobody can see is not a label."""
    from scipy import ndimage

    from apsq.data.segmentation import _LUMA, INK_CONTRAST, _contrasting_ink, _glyph_px

    assert _glyph_px(32) == (18, 26)
    spans = []
    for row in digit_scenes("train", n=60):
        lab = row["annotation"]
        for d in range(1, 11):
            comps, _ = ndimage.label(lab == d, structure=np.ones((3, 3)))
            for sl in ndimage.find_objects(comps):
                spans.append(max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start))
    spans_a = np.array(spans)
    assert (spans_a <= 25).mean() >= 0.9 and spans_a.mean() >= 14, spans
    rng = np.random.default_rng(0)
    for back in (0.0, 60.0, 128.0, 200.0, 255.0):
        region = np.full((5, 5, 3), back)
        ink = _contrasting_ink(rng, region)
        assert abs(float(ink @ _LUMA) - back) >= INK_CONTRAST


def test_config_pairs_segmentation_models_with_segmentation_data():
    with pytest.raises(APSQError, match="segformer-b0"):
        parse_config({"model": {"name": "digits-cnn", "num_labels": 12}, "data": {"name": "digit-scenes"}})
    with pytest.raises(APSQError, match="num_labels: 150"):
        parse_config({"model": {"name": "efficientvit-b1", "num_labels": 12}, "data": {"name": "ade20k"}})
    with pytest.raises(APSQError, match="selection_split"):
        parse_config({"model": {"name": "efficientvit-b1", "num_labels": 12}, "data": {"name": "digit-scenes"},
                      "eval": {"selection_split": "train"}})


@pytest.mark.slow
def test_short_segmentation_qat_run(tmp_path):
    """EfficientViT-B1 on digit-scenes: FP32 steps, calibration, APSQ QAT steps, mIoU on the test split
    and on the selection (validation) split; the CLI-facing result names the metric."""
    from apsq.train.loop import train

    cfg = parse_config({
        "seed": 0, "threads": 1,
        "model": {"name": "efficientvit-b1", "num_labels": 12},
        "data": {"name": "digit-scenes", "train_limit": 8, "eval_limit": 4},
        "finetune": {"steps": 2, "batch_size": 4, "lr": 1e-3},
        "apsq": {"mode": "apsq", "gs": 2, "tile": 32, "exclude": ["*classifier"]},
        "qat": {"steps": 2, "batch_size": 4, "calib_batches": 1},
        "distill": {"ce_weight": 0.5},
        "eval": {"selection_split": "validation"},
    })
    res = train(cfg, tmp_path / "run", progress=False)
    model = res.pop("model")
    assert res["metric"] == "miou" and res["model_init"].startswith("random initialisation")
    for key in ("fp32_accuracy", "accuracy", "pixel_accuracy", "fp32_pixel_accuracy", "selection_accuracy"):
        assert 0.0 <= res[key] <= 1.0, key
    assert res["selection_split"] == "validation"
    assert any("QuantConv2d" in type(m).__name__ for m in model.modules())
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    qat = [x for x in lines if x.get("stage") == "qat" and "kd" in x]
    assert len(qat) == 2 and all(np.isfinite(x["loss"]) for x in qat)


def test_sweep_selects_gs_on_the_selection_split_never_the_reported_one():
    from apsq.eval.sweep import select_gs

    def run(mode, gs, test, val):
        return {"apsq": {"mode": mode, "gs": gs}, "accuracy": test, "selection_accuracy": val,
                "selection_split": "validation"}

    runs = {"w8a8": run("none", 1, 0.90, 0.95), "apsq_gs1": run("apsq", 1, 0.80, 0.91),
            "apsq_gs2": run("apsq", 2, 0.85, 0.90), "apsq_gs3": run("apsq", 3, 0.70, 0.91)}
    sel = select_gs(runs)
    assert sel["selected_gs"] == 1 and sel["gs_selected_on"] == "validation"  # best test (gs 2) is not taken
    assert sel["selection"]["w8a8"] == 0.95
    del runs["apsq_gs3"]["selection_accuracy"]
    assert select_gs(runs) == {}


def test_energy_meaning_names_the_traced_input():
    """The energy line printed beside a sweep says what the model was traced on: an image for the vision
    models, tokens for text (it said "64 tokens" for a 32 x 32 Segformer)."""
    from apsq.eval.setup import traced_input

    seg = parse_config({"model": {"name": "segformer-b0", "num_labels": 12}, "data": {"name": "digit-scenes"}})
    assert traced_input(seg) == "one 32 x 32 image"
    text = parse_config({"model": {"name": "minilm", "max_len": 64}, "data": {"name": "rt-sentences"}})
    assert traced_input(text) == "64 tokens" and traced_input(text, 128) == "128 tokens"


def test_an_empty_ade20k_validation_split_says_what_it_is_and_how_to_fix_it(tmp_path):
    """With a few training images the 10 % hash split that ``validation`` names can be empty; the error said
    only "ade20k validation: no segmentation rows" (trial-vis: six images and ``eval.selection_split``)."""
    pytest.importorskip("datasets")
    from apsq.train.tasks import build_task

    folder = _ade_fixture(tmp_path / "ade")  # four training images: hash buckets train / test, none validation
    cfg = parse_config({"model": {"name": "segformer-b0", "num_labels": 150},
                        "data": {"name": "ade20k", "path": str(folder)}, "eval": {"selection_split": "validation"}})
    with pytest.raises(APSQError, match=r"ade20k validation.* 10 % hash split of the 4 training images.*none.*"
                                        r"eval.selection_split"):
        build_task(cfg)


def test_ade20k_from_one_file_takes_its_test_rows_from_eval_path_never_the_training_rows(tmp_path):
    """``data.path`` = one JSON-lines file served training *and* the reported test split (the same images),
    and ``data.eval_path`` was ignored for ade20k (trial-vis)."""
    pytest.importorskip("datasets")
    from apsq.train.tasks import build_task

    folder = _ade_fixture(tmp_path / "ade")
    model = {"name": "segformer-b0", "num_labels": 150}
    one = {"name": "ade20k", "path": str(folder / "train.jsonl")}
    with pytest.raises(APSQError, match=r"data.path .*one file.*training images.*data.eval_path"):
        build_task(parse_config({"model": model, "data": one}))
    task = build_task(parse_config({"model": model, "data": {**one, "eval_path": str(folder / "validation.jsonl")}}))
    assert len(task.eval) == 2 and len(task.train) == 4  # validation.jsonl's two rows; train: 4 (no hash validation)
    # a folder still pairs train.jsonl with validation.jsonl, and eval_path wins over validation.jsonl
    other = _ade_fixture(tmp_path / "other", n=3, seed=1)
    task = build_task(parse_config({"model": model, "data": {"name": "ade20k", "path": str(other), "eval_path":
                                                             str(folder / "train.jsonl")}}))
    assert len(task.eval) == 4 and len(task.train) == 3
