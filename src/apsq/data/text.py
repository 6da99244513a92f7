"""Text classification examples and a tokenized, dynamically padded batch source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextExample:
    """One labelled sentence (or sentence pair)."""

    id: str
    text: str
    label: int | float
    """A class id, or a real value for a regression (e.g. STS-B's similarity)."""
    text_b: str | None = None


class TokenizedText:
    """Examples tokenized once (truncated to ``max_len`` tokens, no padding).

    :meth:`batch` pads a selection of examples to its longest member (dynamic padding), which keeps
    the cost of short sentences low. ``regression``: labels are float32 values (else int64 classes).
    """

    def __init__(self, examples: Sequence[TextExample], tokenizer, max_len: int, regression: bool = False) -> None:
        if not examples:
            raise ValueError("no examples to tokenize")
        a = [e.text for e in examples]
        b = [e.text_b for e in examples]
        pair = any(x is not None for x in b)
        enc = tokenizer(a, [x or "" for x in b] if pair else None, truncation=True, max_length=max_len)
        self.input_ids: list[list[int]] = enc["input_ids"]
        self.token_type_ids: list[list[int]] | None = enc.get("token_type_ids")
        self.labels = torch.tensor([e.label for e in examples], dtype=torch.float32 if regression else torch.long)
        self.pad_id = int(tokenizer.pad_token_id or 0)

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> list[int]:
        """Tokens per example (after truncation)."""
        return [len(r) for r in self.input_ids]

    def batch(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` (and ``token_type_ids``), ``labels`` for rows ``idx``."""
        idx = [int(i) for i in idx]
        width = max(len(self.input_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        tt = torch.zeros((len(idx), width), dtype=torch.long) if self.token_type_ids is not None else None
        for r, i in enumerate(idx):
            row = self.input_ids[i]
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
            if tt is not None and self.token_type_ids is not None:
                tt[r, : len(row)] = torch.tensor(self.token_type_ids[i])
        out = {"input_ids": ids, "attention_mask": mask, "labels": self.labels[idx]}
        if tt is not None:
            out["token_type_ids"] = tt
        return out
