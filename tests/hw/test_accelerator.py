"""The accelerator description: defaults traceable to their sources, and clear errors for bad files."""

from pathlib import Path

import pytest
import yaml

from apsq.errors import APSQError
from apsq.hw.accelerator import (
    Accelerator,
    default_accelerator,
    load_accelerator,
    mac_pj,
    node_scale,
    sram_pj_per_bit,
)

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "apsq" / "accelerators"


def test_default_loads_and_is_packaged():
    acc = default_accelerator()
    assert acc.technology_nm == 28
    assert (acc.pe_array.rows, acc.pe_array.cols) == (32, 32)
    assert acc.acc_bits == 32 and acc.act_bits == 8
    assert acc is default_accelerator()  # cached
    assert load_accelerator(CONFIGS / "accel_28nm_int8.yaml") == acc


def test_horowitz_sram_rule_fits_the_published_points():
    # Horowitz ISSCC 2014, 45 nm, 64-bit access: 8 KB 10 pJ, 32 KB 20 pJ, 1 MB 100 pJ (within 13 %)
    for kib, pj in ((8, 10.0), (32, 20.0), (1024, 100.0)):
        got = sram_pj_per_bit(kib, 45) * 64
        assert abs(got - pj) / pj < 0.14


def test_default_constants_follow_their_stated_derivation():
    acc = default_accelerator()
    assert node_scale(28) == pytest.approx(28 / 45)
    assert acc.pe_array.mac_pj == pytest.approx(mac_pj(28), rel=2e-3)
    assert acc.pe_array.reg_pj_per_bit == pytest.approx(mac_pj(28) / 16, rel=2e-3)
    for buf in (acc.buffers.input, acc.buffers.weight, acc.buffers.psum, acc.buffers.output):
        bank = buf.capacity_kib / buf.banks
        assert buf.read_pj_per_bit == pytest.approx(sram_pj_per_bit(bank, 28), rel=2e-3)
        assert buf.write_pj_per_bit == buf.read_pj_per_bit
    assert acc.dram.read_pj_per_bit == pytest.approx(1300 / 64, rel=2e-3)  # 1.3 nJ per 64 bits
    assert acc.buffers.psum.banks == 4  # the RAE's four banks
    assert acc.dram_bits_per_cycle == pytest.approx(12.8e9 * 8 / 500e6)


def _write(tmp_path, data) -> Path:
    p = tmp_path / "acc.yaml"
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _default_dict() -> dict:
    return yaml.safe_load((CONFIGS / "accel_28nm_int8.yaml").read_text())


def test_malformed_yaml(tmp_path):
    with pytest.raises(APSQError, match="not valid YAML"):
        load_accelerator(_write(tmp_path, "name: [unclosed\n  pe_array: {rows: 3"))


def test_missing_file(tmp_path):
    with pytest.raises(APSQError, match="does not exist"):
        load_accelerator(tmp_path / "nope.yaml")


@pytest.mark.parametrize("where", ["pe_array", "top", "workload"])
def test_a_key_given_twice_is_refused_naming_it(tmp_path, where):
    # PyYAML keeps the last of two equal keys: a pasted `cols: 8` under `cols: 16` was priced as an
    # 8-column array without a word. Every config file goes through errors.read_yaml.
    text = (CONFIGS / "accel_28nm_int8.yaml").read_text()
    if where == "pe_array":
        text = text.replace("  cols: 32\n", "  cols: 32\n  cols: 8\n")
        key = "cols"
    elif where == "top":
        text = text.replace("clock_mhz: 500", "clock_mhz: 500\nclock_mhz: 400")
        key = "clock_mhz"
    else:
        from apsq.hw.workloads import load_workload_file

        p = _write(tmp_path, "layers:\n  - {name: fc, m: 4, k: 64, n: 8, m: 16}\n")
        with pytest.raises(APSQError, match=r"key 'm' twice") as exc:
            load_workload_file(p)
        assert str(p) in str(exc.value)
        return
    p = _write(tmp_path, text)
    with pytest.raises(APSQError, match=f"key '{key}' twice") as exc:
        load_accelerator(p)
    assert str(p) in str(exc.value) and "line" in str(exc.value)


def test_not_a_mapping(tmp_path):
    with pytest.raises(APSQError, match="must be a mapping"):
        load_accelerator(_write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("buffers", "psum", "capacity_kib"), -1, "buffers.psum.capacity_kib"),
        (("pe_array", "rows"), 0, "pe_array.rows"),
        (("pe_array", "mac_pj"), -0.1, "pe_array.mac_pj"),
        (("dram", "bandwidth_gbs"), 0, "dram.bandwidth_gbs"),
        (("buffers", "input", "banks"), "four", "buffers.input.banks"),
    ],
)
def test_bad_field_is_named(tmp_path, path, value, field):
    d = _default_dict()
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(APSQError, match=f"field '{field}'"):
        load_accelerator(_write(tmp_path, d))


def test_missing_and_unknown_fields_are_named(tmp_path):
    d = _default_dict()
    del d["buffers"]["weight"]
    d["pe_array"]["colz"] = 3
    with pytest.raises(APSQError) as exc:
        load_accelerator(_write(tmp_path, d))
    assert "buffers.weight" in str(exc.value) and "pe_array.colz" in str(exc.value)


def test_accumulator_must_hold_a_product():
    d = _default_dict()
    d["acc_bits"] = 12
    with pytest.raises(APSQError, match="acc_bits"):
        Accelerator.from_dict(d)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("pe_array", "rows"), 10**20, "pe_array.rows"),
        (("clock_mhz",), float("inf"), "clock_mhz"),
        (("dram", "read_pj_per_bit"), float("nan"), "dram.read_pj_per_bit"),
        (("buffers", "psum", "capacity_kib"), 1e300, "buffers.psum.capacity_kib"),
        (("pe_array", "weight_reg_pj_per_bit"), -1.0, "pe_array.weight_reg_pj_per_bit"),
        (("rae",), {"shift_pj": float("inf")}, "rae.shift_pj"),
    ],
)
def test_every_number_has_a_finite_range(tmp_path, path, value, field):
    # issue 16 item 4: `rows: 1e20` and `clock_mhz: .inf` are clear errors, not an OverflowError or NaN latency
    d = _default_dict()
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(APSQError, match=f"field '{field}'"):
        load_accelerator(_write(tmp_path, d))


def test_yaml_inf_text_is_refused(tmp_path):
    text = (CONFIGS / "accel_28nm_int8.yaml").read_text().replace("clock_mhz: 500", "clock_mhz: .inf")
    with pytest.raises(APSQError, match="clock_mhz"):
        load_accelerator(_write(tmp_path, text))


def test_builtin_accelerators_by_name():
    tpu = load_accelerator("zigzag-tpu-like")
    assert tpu.name == "zigzag-tpu-like" and tpu.pe_array.rows == tpu.pe_array.cols == 32
    # ZigZag tpu_like: MAC 0.04 pJ; rf_128B 0.095 pJ / 8 b; rf_2B 0.021 pJ / 16 b; sram 416.16 / 378.4 pJ per
    # 2048 b; dram 700 / 750 pJ per 64 b
    assert tpu.pe_array.mac_pj == 0.04
    assert tpu.pe_array.reg_pj("weight") == pytest.approx(0.095 / 8)
    assert tpu.pe_array.reg_pj("psum") == pytest.approx(0.021 / 16)
    assert tpu.pe_array.reg_pj("input") == 0.0
    assert tpu.buffers.psum.read_pj_per_bit == pytest.approx(416.16 / 2048, rel=1e-4)
    assert tpu.buffers.psum.write_pj_per_bit == pytest.approx(378.4 / 2048, rel=1e-4)
    assert tpu.dram.read_pj_per_bit == pytest.approx(700 / 64) and tpu.dram.write_pj_per_bit == pytest.approx(750 / 64)
    shared = sum(getattr(tpu.buffers, b).capacity_kib for b in tpu.shared_sram)
    assert shared == 2048  # one 2 MiB SRAM for inputs and outputs (PSUMs included)
    assert load_accelerator("default") == default_accelerator()
    with pytest.raises(APSQError, match=r"'zigzag-tpu-lik' does not exist: give a built-in \(default, .*zigzag-tpu-like-is"):
        load_accelerator("zigzag-tpu-lik")  # a typo lists the built-in names


def test_per_operand_registers_default_to_the_shared_value():
    acc = default_accelerator()
    assert {acc.pe_array.reg_pj(op) for op in ("input", "weight", "psum", "output")} == {acc.pe_array.reg_pj_per_bit}


def test_dram_presets_have_sources():
    from apsq.hw.accelerator import DRAM_PRESETS, with_dram

    assert {"ddr3", "ddr4", "lpddr4", "hbm2"} <= set(DRAM_PRESETS)
    for name, (pj, source) in DRAM_PRESETS.items():
        assert 0 < pj < 100 and len(source) > 20, name
        acc = with_dram(default_accelerator(), name)
        assert acc.dram.read_pj_per_bit == acc.dram.write_pj_per_bit == pj
    assert DRAM_PRESETS["ddr3"][0] == default_accelerator().dram.read_pj_per_bit
    with pytest.raises(APSQError, match="'ddr3'"):
        with_dram(default_accelerator(), "ddr9")


def test_psum_port_carries_the_per_cycle_psum_traffic():
    # IS/WS: every column reads and writes one acc_bits running sum per cycle
    acc = default_accelerator()
    assert acc.buffers.psum.bits_per_cycle >= 2 * acc.pe_array.cols * acc.acc_bits


def test_own_accelerator_section_of_the_docs():
    # docs/energy-model.md §2 "Your own accelerator": technology_nm is a label (it scales nothing), and the
    # 22 nm numbers it quotes are the first-order rules' values
    from apsq.hw.energy import compare
    from apsq.hw.workloads import Layer, Workload

    doc = (Path(__file__).resolve().parents[2] / "docs" / "energy-model.md").read_text()
    assert "`technology_nm` is a label" in doc
    quoted = f"{mac_pj(22):.4f} pJ MAC, {mac_pj(22) / 16:.4f} pJ/bit register, {sram_pj_per_bit(16, 22):.3f} pJ/bit"
    assert quoted in doc
    d = _default_dict()
    d["technology_nm"] = 7
    w = Workload("w", (Layer("a", "linear", 64, 256, 64),))
    assert compare(w, "ws", 2, accelerator=Accelerator.from_dict(d)).apsq.total_pj == compare(w, "ws", 2).apsq.total_pj


@pytest.mark.parametrize(("shared", "psum_pj", "needle"), [
    (["input", "psum"], 0.09, "buffers.psum.read_pj_per_bit = 0.09"),
    (["input", "input"], 0.1375, "each once"),
    (["psum"], 0.1375, "at least two"),
])
def test_shared_sram_is_one_memory(tmp_path, shared, psum_pj, needle):
    # shared_sram [input, psum] with different energies: the ZigZag conversion built the one memory from the
    # input buffer's energies (the PSUM buffer's silently replaced) while this model kept both
    d = _default_dict()
    d["shared_sram"] = shared
    d["buffers"]["psum"]["read_pj_per_bit"] = psum_pj
    with pytest.raises(APSQError, match="shared_sram") as exc:
        load_accelerator(_write(tmp_path, d))
    assert needle in str(exc.value)
    d["buffers"]["psum"]["read_pj_per_bit"] = 0.1375
    d["shared_sram"] = ["input", "psum", "output"]
    assert load_accelerator(_write(tmp_path, d)).shared_sram == ("input", "psum", "output")
