"""``apsq data fetch NAME``: fetch an offline dataset into the cache."""

from __future__ import annotations

import typer
from rich.console import Console

DATASETS = ("rt-sentences",)


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Datasets: fetch the offline ones into the cache ($APSQ_CACHE or ~/.cache/apsq).",
                           no_args_is_help=True)

    @data_app.command("fetch")
    def fetch(name: str = typer.Argument(..., help="Dataset: rt-sentences."),
              force: bool = typer.Option(False, help="Download again even if cached.")) -> None:
        """Fetch a dataset once (Rotten Tomatoes sentences from the vaderSentiment==3.3.2 sdist on PyPI).

        Safe to run from several processes at once: one fetches, the others wait for it (a lock on the
        cache folder) and then read the same files."""
        from apsq.data.rt_sentences import fetch_rt_sentences, load_rt_sentences
        from apsq.data.splits import SPLITS
        from apsq.errors import APSQError, literal, print_error

        console = Console()
        if name not in DATASETS:
            print_error(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
            raise typer.Exit(2)
        try:
            with console.status(f"fetching {literal(name)} ..."):
                path = fetch_rt_sentences(force=force)
            sizes = {s: len(load_rt_sentences(s, fetch=False)) for s in SPLITS}
        except APSQError as exc:
            print_error(exc)
            raise typer.Exit(1) from exc
        console.print(f"{literal(name)}: cached in {literal(path)}; split sizes {sizes}")

    app.add_typer(data_app, name="data")
