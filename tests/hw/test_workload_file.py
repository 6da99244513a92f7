"""Workload YAML files: GEMMs and convolutions, validated, with errors naming the layer and the field."""

import json

import pytest
import typer
import yaml
from typer.testing import CliRunner

from apsq.errors import APSQError
from apsq.hw.energy import compare
from apsq.cli.energy import register
from apsq.hw.workloads import builtin_workload, load_workload_file, workload_from_dict


def _file(tmp_path, data, name="net.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_gemm_and_conv_layers(tmp_path):
    p = _file(tmp_path, {
        "layers": [
            {"name": "fc", "m": 128, "k": 768, "n": 3072},
            {"name": "qk", "m": 128, "k": 64, "n": 128, "count": 12, "kind": "matmul", "w_is_weight": False},
            {"name": "stem", "conv": {"in_channels": 3, "out_channels": 32, "kernel": 7, "stride": 4, "padding": 3,
                                      "input": [512, 512]}},
            {"name": "dw", "conv": {"in_channels": 128, "out_channels": 128, "kernel": 3, "padding": 1, "groups": 128,
                                    "input": 128}},
            {"name": "c1", "conv": {"in_channels": 16, "out_channels": 8, "kernel": 5, "input": 100, "dims": 1}},
        ]
    })
    w = load_workload_file(p)
    assert w.name == "net"
    fc, qk, stem, dw, c1 = w.layers
    assert (fc.m, fc.k, fc.n, fc.count, fc.kind) == (128, 768, 3072, 1, "linear")
    assert (qk.count, qk.w_is_weight, qk.kind) == (12, False, "matmul")
    # the traced Segformer-B0 stem and depthwise conv have these shapes (im2col, as trace.py records them)
    seg = {(ly.m, ly.k, ly.n, ly.count) for ly in builtin_workload("segformer-b0").layers}
    assert (stem.m, stem.k, stem.n, stem.count) in seg and (dw.m, dw.k, dw.n, dw.count) in seg
    assert (c1.m, c1.k, c1.n, c1.kind) == (96, 80, 8, "conv1d")


def test_a_file_prices_like_the_traced_model(tmp_path):
    bert = builtin_workload("bert-base", seq_len=64)
    layers = [{"name": ly.name, "m": ly.m, "k": ly.k, "n": ly.n, "count": ly.count, "kind": ly.kind,
               "w_is_weight": ly.w_is_weight} for ly in bert.layers]
    w = load_workload_file(_file(tmp_path, {"name": "bert", "layers": layers}))
    a, b = compare(w, "is", 2), compare(bert, "is", 2)
    assert a.baseline.total_pj == pytest.approx(b.baseline.total_pj) and a.reduction == pytest.approx(b.reduction)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"layers": [{"name": "a", "m": 4, "k": 5}]}, "layer 0 ('a')"),
        ({"layers": [{"name": "a", "m": 4, "k": 5}]}, "missing n"),
        ({"layers": [{"name": "a", "m": "4", "k": 5, "n": 1}]}, "field 'm'"),
        ({"layers": [{"name": "x", "m": 1, "k": 1, "n": 1}, {"name": "b", "m": 0, "k": 5, "n": 1}]}, "layer 1 ('b'), field 'm'"),
        ({"layers": [{"name": "a", "m": 10**20, "k": 5, "n": 1}]}, "less than or equal"),
        ({"layers": [{"name": "a", "m": 4, "k": 5, "n": 1, "w_is_weight": "false"}]}, "field 'w_is_weight'"),
        ({"layers": [{"name": "a", "m": 4, "k": 5, "n": 1, "kind": "lstm"}]}, "field 'kind'"),
        ({"layers": [{"name": "a", "m": 4, "k": 5, "n": 1, "extra": 1}]}, "field 'extra'"),
        ({"layers": [{"name": "c", "conv": {"in_channels": 3, "out_channels": 8, "kernel": 7, "input": 3}}]}, "no output"),
        ({"layers": [{"name": "c", "conv": {"in_channels": 3, "out_channels": 8, "kernel": 3, "input": 8,
                                            "groups": 2}}]}, "groups (2) must divide"),
        ({"layers": [{"name": "c", "m": 1, "k": 1, "n": 1, "conv": {"in_channels": 3, "out_channels": 8,
                                                                    "kernel": 3, "input": 8}}]}, "not both"),
        ({"layers": []}, "field 'layers'"),
        ({"layers": [{"name": "a", "m": 1, "k": 1, "n": 1}, {"name": "a", "m": 1, "k": 1, "n": 1}]}, "repeated: 'a'"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_errors_name_the_layer_and_field(data, needle):
    with pytest.raises(APSQError) as exc:
        workload_from_dict(data, "f.yaml")
    assert needle in str(exc.value) and "f.yaml" in str(exc.value)


def test_cli_workload_option(tmp_path):
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:
        pass

    p = _file(tmp_path, {"layers": [{"name": "fc", "m": 512, "k": 1024, "n": 512}]})
    r = CliRunner().invoke(app, ["energy", "--workload", str(p), "-d", "is", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["workload"] == "net" and [ly["name"] for ly in out["layers"]["apsq"]] == ["fc"]
    assert set(out["schedules"]) == {"untiled", "tiled"}
    bad = _file(tmp_path, {"layers": [{"name": "fc", "m": 0, "k": 1, "n": 1}]}, "bad.yaml")
    r = CliRunner().invoke(app, ["energy", "--workload", str(bad)])
    assert r.exit_code == 2 and "layer 0 ('fc'), field 'm'" in " ".join(r.output.split())
    r = CliRunner().invoke(app, ["energy", "--workload", str(p), "-m", "bert-base"])
    assert r.exit_code == 2 and "exactly one of" in " ".join(r.output.split())
