"""Local stand-ins of the paper's seven zero-shot tasks, each row in its hub dataset's own format
(field names and types as on the hub: HellaSwag's label a digit string, WinoGrande's answer "1"/"2",
ARC / OpenBookQA choices ``{"text", "label"}`` with an ``answerKey``), and a tiny LLaMA to run them."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("the a film cat dog ran sat good bad fast slow red blue house tree water fire sun moon river "
         "stone bird walked under over green small big").split()


def sentence(r: random.Random, n: int = 6) -> str:
    return " ".join(r.choice(WORDS) for _ in range(n))


def task_rows(task: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` rows of ``task`` in the hub's format (seeded)."""
    r = random.Random(f"{task}:{seed}")
    labels = ["A", "B", "C", "D"]
    out: list[dict] = []
    for i in range(n):
        if task == "boolq":
            out.append({"question": sentence(r, 5), "passage": sentence(r, 12), "idx": i, "label": r.randrange(2)})
        elif task == "piqa":
            out.append({"goal": sentence(r), "sol1": sentence(r, 4), "sol2": sentence(r, 4), "label": r.randrange(2)})
        elif task == "hellaswag":
            out.append({"ind": i, "activity_label": sentence(r, 2), "ctx_a": sentence(r), "ctx_b": sentence(r, 3),
                        "ctx": "", "endings": [sentence(r, 4) for _ in range(4)], "source_id": f"s{i}",
                        "split": "val", "split_type": "indomain", "label": str(r.randrange(4))})
        elif task == "winogrande":
            out.append({"sentence": f"{sentence(r, 3)} _ {sentence(r, 3)}", "option1": r.choice(WORDS),
                        "option2": r.choice(WORDS), "answer": r.choice("12")})
        elif task in ("arc_easy", "arc_challenge"):
            out.append({"id": f"q{i}", "question": sentence(r),
                        "choices": {"text": [sentence(r, 3) for _ in labels], "label": labels},
                        "answerKey": r.choice(labels)})
        elif task == "openbookqa":
            out.append({"id": f"q{i}", "question_stem": sentence(r),
                        "choices": {"text": [sentence(r, 3) for _ in labels], "label": labels},
                        "answerKey": r.choice(labels)})
        else:
            raise ValueError(task)
    return out


def write_task_files(folder: Path, tasks, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        (folder / f"{t}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in task_rows(t, n)))
    return folder


def save_tiny_llama(folder: Path, hidden: int = 64) -> Path:
    """A small LLaMA (one layer, from a config; :mod:`apsq.eval.llm`) with its BPE tokenizer, saved in HF format."""
    import torch

    from apsq.eval import llm

    torch.manual_seed(0)
    s = llm.LLMSettings(vocab_size=300, hidden_size=hidden, num_layers=1, num_heads=2, intermediate_size=2 * hidden,
                        max_len=64)
    r = random.Random(0)
    tok = llm.train_tokenizer([sentence(r, 8) for _ in range(200)], s.vocab_size)
    model = llm.build_llama(s, len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
