"""Dataset loaders: offline sources (Rotten Tomatoes sentences, scikit-learn digits) and hub loaders
(GLUE, ADE20K through ``datasets``) for users with a network.

Every loader returns plain Python / torch objects with a fixed, documented train / validation / test
split (:func:`apsq.data.splits.split_of`).
"""

from apsq.data.cache import cache_dir
from apsq.data.digits import load_digits_split
from apsq.data.rt_sentences import RT_SOURCE, fetch_rt_sentences, load_rt_sentences
from apsq.data.splits import SPLITS, split_of
from apsq.data.text import TextExample, TokenizedText

__all__ = [
    "RT_SOURCE",
    "SPLITS",
    "TextExample",
    "TokenizedText",
    "cache_dir",
    "fetch_rt_sentences",
    "load_digits_split",
    "load_rt_sentences",
    "split_of",
]
