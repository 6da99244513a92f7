"""Small local GLUE files in GLUE's own field format (the hub's ``nyu-mll/glue`` columns), with a signal a
model can learn in a few steps: the label follows from the words."""

from __future__ import annotations

import json
import random
from pathlib import Path

POS = "good great moving funny brilliant charming smart warm lovely superb".split()
NEG = "bad dull boring awful flat tedious messy weak stale clumsy".split()
NOUNS = "film actor story plot music scene ending cast script director".split()


def glue_rows(task: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` rows of GLUE ``task`` with its fields (``idx`` and ``label`` included)."""
    r = random.Random(f"{task}:{seed}")
    rows = []
    for i in range(n):
        y = r.randrange(2)
        words = POS if y else NEG
        a = f"the {r.choice(NOUNS)} is {r.choice(words)} and {r.choice(words)}"
        if task in ("cola", "sst2"):
            rows.append({"sentence": a, "label": y, "idx": i})
        elif task == "stsb":
            b = f"the {r.choice(NOUNS)} is {r.choice(POS + NEG)}"
            shared = len(set(a.split()) & set(b.split()))
            rows.append({"sentence1": a, "sentence2": b, "label": float(min(5.0, 1.2 * shared + r.random())), "idx": i})
        else:
            b = f"a {r.choice(NOUNS)} that was {r.choice(words if y else POS)}"
            keys = {"mrpc": ("sentence1", "sentence2"), "qqp": ("question1", "question2"),
                    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
                    "wnli": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis")}[task]
            label = y if task != "mnli" else r.randrange(3)
            rows.append({keys[0]: a, keys[1]: b, "label": label, "idx": i})
    return rows


def write_glue(folder: Path, task: str, n_train: int = 48, n_val: int = 24) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, n, seed in (("train", n_train, 0), ("validation", n_val, 1)):
        p = folder / f"{task}_{split}.jsonl"
        p.write_text("".join(json.dumps(x) + "\n" for x in glue_rows(task, n, seed)))
        paths.append(p)
    return paths[0], paths[1]
