"""The deploy study's FP32 MiniLM: configs/minilm_fp32.yaml's 200-step schedule, stopped after its step-50
checkpoint (the 2-core machine was shared by 8 sessions), copied to runs/deploy/fp32_step50.safetensors."""

from __future__ import annotations

import shutil
from pathlib import Path

from apsq.train.config import load_config
from apsq.train.loop import CKPT, train

STOP = 50
OUT = Path("runs/deploy/fp32")


class _Stop(Exception):
    pass


def _after(stage: str, step: int) -> None:
    if stage == "finetune" and step == STOP:  # called after the checkpoint due at this step is written
        raise _Stop


if __name__ == "__main__":
    cfg = load_config(Path(__file__).with_name("configs") / "minilm_fp32.yaml")
    try:
        train(cfg, OUT, resume=(OUT / CKPT).exists(), on_step=_after)
    except _Stop:
        pass
    shutil.copyfile(OUT / CKPT, OUT.parent / "fp32_step50.safetensors")
    print(f"FP32 step-{STOP} checkpoint: {OUT.parent / 'fp32_step50.safetensors'}")
