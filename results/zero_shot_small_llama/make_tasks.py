"""Write the zero-shot stand-in task files: held-out movie-review sentences (the test split of apsq's
corpus, never trained on) in the formats of HellaSwag, PIQA, WinoGrande and ARC-easy
(:func:`apsq.eval.zero_shot_tasks.write_sentence_tasks`), for ``apsq eval zero-shot --local-data``; with
``--selection-items N`` also ``<task>.selection.jsonl`` from the corpus's *validation* sentences (never
trained on, never evaluated): the items ``--selection-items`` chooses the gs on."""

from __future__ import annotations

import argparse
from pathlib import Path

from apsq.eval.llm import load_corpus
from apsq.eval.zero_shot_tasks import write_sentence_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--selection-items", type=int, default=0)
    a = ap.parse_args()
    corpus = load_corpus(names=("movies",))
    write_sentence_tasks(corpus["test"], a.out, a.items, a.seed)
    print(f"wrote {a.out}: {a.items} items per task from {len(corpus['test'])} held-out (test) sentences")
    if a.selection_items:
        write_sentence_tasks(corpus["validation"], a.out, a.selection_items, a.seed, selection=True)
        print(f"and {a.selection_items} selection items per task from {len(corpus['validation'])} validation sentences")


if __name__ == "__main__":
    main()
