"""The words of the training tests' Rotten Tomatoes stand-in (conftest.py writes it; the decoder tests build
a vocabulary from them). A module of its own: ``from conftest import ...`` takes whichever ``conftest`` was
imported first, so it failed when tests/beyond ran in the same session."""

WORDS_POS = "good great moving funny brilliant charming smart warm lovely superb".split()
WORDS_NEG = "bad dull boring awful flat tedious messy weak stale clumsy".split()
