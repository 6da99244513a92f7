"""A traced quantized model carries its own PSUM tile, as it carries its own gs. Before the fix a model
quantized with ``tile=8`` was priced on the default 32-row array without a word (``apsq energy --trace
mymodel.py:make``), while the same tile from ``--gs-config`` was refused: the two descriptions of one
accumulation disagreed silently (the new-user run of "bring your own model")."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import apsq
from apsq.cli import app
from apsq.errors import APSQError
from apsq.hw.accelerator import load_accelerator
from apsq.hw.energy import evaluate
from apsq.hw.workloads import trace


def _traced(tile: int):
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    apsq.quantize_(m, apsq.APSQConfig(gs=2, tile=tile))
    return trace(m, torch.zeros(4, 64))


def test_layers_record_the_traced_tile():
    w = _traced(8)
    assert [ly.tile for ly in w.layers] == [8, 8]
    assert all(ly.tile is None for ly in w.without_own_gs().layers)


def test_a_traced_tile_other_than_the_rows_warns_or_is_refused():
    w = _traced(8)
    with pytest.warns(UserWarning, match="PSUM tile 8 .* pe_array.rows = 32"):
        evaluate(w, "ws", "apsq")
    with pytest.raises(APSQError, match=r"PSUM tile 8 \(layer .0. and 1 more\) does not match .* override_tile"):
        evaluate(w, "ws", "apsq", tile_mismatch="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(w, "ws", "apsq", override_tile=True)  # said on purpose: silent
        evaluate(_traced(32), "ws", "apsq")  # matching the array: silent
        acc = load_accelerator("default")
        acc8 = acc.model_copy(update={"pe_array": acc.pe_array.model_copy(update={"rows": 8})})
        evaluate(w, "ws", "apsq", accelerator=acc8)


def test_cli_refuses_the_traced_tile_mismatch_and_names_the_way_out(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text("import torch, apsq\nfrom torch import nn\n"
                 "def make():\n"
                 "    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))\n"
                 "    apsq.quantize_(m, apsq.APSQConfig(gs=2, tile=8))\n"
                 "    return m, (torch.zeros(4, 64),)\n")
    r = CliRunner().invoke(app, ["energy", "--trace", f"{f}:make", "--json"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "PSUM tile 8" in out and "--override-tile" in out
    r = CliRunner().invoke(app, ["energy", "--trace", f"{f}:make", "--json", "--override-tile"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["gs"] == 2
