"""``apsq data fetch NAME``: fetch an offline dataset into the cache (the work is :mod:`apsq.data`)."""

from __future__ import annotations

import typer

from apsq.cli.common import console, fail, typer_app
from apsq.errors import literal

__all__ = ["DATASETS", "register"]

DATASETS = ("rt-sentences",)


def register(app: typer.Typer) -> None:
    """Add the ``data`` sub-app (``fetch``) to the ``apsq`` command line."""
    data_app = typer_app(help="Datasets: fetch the offline ones into the cache ($APSQ_CACHE or ~/.cache/apsq).",
                         no_args_is_help=True)

    @data_app.command("fetch")
    def fetch(name: str = typer.Argument(..., help="Dataset: rt-sentences."),
              force: bool = typer.Option(False, help="Download again even if cached.")) -> None:
        """Fetch a dataset once (Rotten Tomatoes sentences from the vaderSentiment==3.3.2 sdist on PyPI).

        Safe to run from several processes at once: one fetches, the others wait for it (a lock on the
        cache folder) and then read the same files."""
        from apsq.data.rt_sentences import fetch_rt_sentences, load_rt_sentences
        from apsq.data.splits import SPLITS
        from apsq.errors import APSQError

        if name not in DATASETS:
            fail(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
        con = console()
        try:
            with con.status(f"fetching {literal(name)} ..."):
                path = fetch_rt_sentences(force=force)
            sizes = {s: len(load_rt_sentences(s, fetch=False)) for s in SPLITS}
        except APSQError as exc:
            fail(exc, code=1)
        con.print(f"{literal(name)}: cached in {literal(path)}; split sizes {sizes}")

    app.add_typer(data_app, name="data")
