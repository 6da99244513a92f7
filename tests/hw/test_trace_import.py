"""``apsq energy --trace path/to/mymodel.py:make`` on a user's file that imports its own sibling module
(``from mylayers import Block``), as ``python mymodel.py`` allows: the file was executed without its folder
on ``sys.path``, so the import failed, and any error while importing the file came out as a raw traceback
instead of an error naming the file (the new-user run of "bring your own model")."""

from __future__ import annotations

import sys

from typer.testing import CliRunner

from apsq.cli import app


def _energy(*args):
    return CliRunner().invoke(app, ["energy", *args])


def test_a_file_importing_its_sibling_module_traces_from_another_directory(tmp_path, monkeypatch):
    src = tmp_path / "proj"
    src.mkdir()
    (src / "byom_sibling_layers.py").write_text(
        "import torch\nclass Block(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = torch.nn.Linear(64, 32)\n"
        "    def forward(self, x):\n        return self.fc(x)\n")
    (src / "mine.py").write_text(
        "import torch\nfrom byom_sibling_layers import Block\n"
        "def make():\n    return Block(), (torch.zeros(4, 64),)\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = list(sys.path)
    r = _energy("--trace", f"{src / 'mine.py'}:make", "--json")
    assert r.exit_code == 0, r.output
    assert sys.path == before  # the folder is on the path for that import only
    sys.modules.pop("byom_sibling_layers", None)


def test_an_error_while_importing_the_file_names_it(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("import torch\nraise RuntimeError('my setup failed')\ndef make():\n    pass\n")
    r = _energy("--trace", f"{f}:make")
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "broken.py" in out and "RuntimeError: my setup failed" in out
    assert "Traceback" not in r.output
