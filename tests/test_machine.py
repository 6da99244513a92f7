"""``apsq.machine``: the machine and float settings that results and benchmarks record beside their numbers."""

from __future__ import annotations

import platform

import pytest

from apsq import machine

XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Gold 6338\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n"
OLD = "processor\t: 0\nmodel name\t: Intel(R) Core(TM)2 Duo\nflags\t\t: fpu sse2 avx512fake\n"


@pytest.mark.parametrize(("info", "name", "isa"), [(XEON, "Intel(R) Xeon(R) Gold 6338", "AVX-512"),
                                                   (EPYC, "AMD EPYC 7B12", "AVX2"),
                                                   (OLD, "Intel(R) Core(TM)2 Duo", "")])
def test_cpuinfo_is_read_once_for_name_and_vector_isa(monkeypatch, info, name, isa) -> None:
    monkeypatch.setattr(machine, "_cpuinfo", lambda: info)
    assert machine.cpu_name() == name
    assert machine.vector_isa() == isa  # whole flags only: "avx512fake" is not avx512f
    assert machine.cpu_label() == (f"{name} ({isa})" if isa else name)


def test_without_cpuinfo_the_names_fall_back(monkeypatch) -> None:
    monkeypatch.setattr(machine, "_cpuinfo", lambda: "")
    assert machine.cpu_name() == (platform.processor() or platform.machine() or "unknown")
    assert machine.vector_isa() == "" and machine.cpu_label() == machine.cpu_name()


def test_describe_and_float_environment(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("APSQ_KERNELS", raising=False)
    d = machine.describe()
    assert set(d) == {"cpu", "vector_isa", "cpus", "load_avg_1m"} and d["cpus"] >= 1
    env = machine.float_environment()
    assert env["OMP_NUM_THREADS"] == "1" and env["APSQ_KERNELS"] is None
    assert set(machine.FLOAT_SETTINGS) <= set(env) and env["threads"] >= 1 and env["cpu_capability"]
