"""apsq.kernels: the options reader, the dispatcher, the typed C entry points, the kernel cache's
safety checks (issue 16 item 11) and the one-time warning of the torch fallback (issue 17 item 4)."""

from __future__ import annotations

import os
import re
import stat
import sys
import warnings
from pathlib import Path

import pytest
import torch

import apsq.cache
from apsq.errors import APSQError
from apsq.kernels import build, chunk, dispatch, int_gemm, options
from apsq.kernels.build import CacheError, LazyLibrary
from apsq.kernels.plan import Plan
from apsq.psum import fused
from apsq.psum.accumulate import psum_accumulate
from apsq.psum.fused import linear_psum, psum_accumulate_fused
from apsq.psum.tiling import linear_partials

ROOT = Path(__file__).resolve().parents[2]
HAS_CC = build.compiler() is not None
needs_cc = pytest.mark.skipif(not HAS_CC, reason="no C compiler on this machine")
PROBE = "int apsq_probe(void) { return 7; }\n"


# ------------------------------------------------------------------------------------------------
# Options: one reader of the environment, two variables.
# ------------------------------------------------------------------------------------------------
def test_backend_switch_and_bad_values(monkeypatch):
    monkeypatch.delenv("APSQ_KERNELS", raising=False)
    assert options.backend() == "auto"
    for value in options.BACKENDS:
        monkeypatch.setenv("APSQ_KERNELS", value)
        assert options.backend() == value
    monkeypatch.setenv("APSQ_KERNELS", "gpu")
    with pytest.raises(APSQError, match="APSQ_KERNELS.*'auto', 'reference', 'c', 'torch', 'triton'.*'gpu'"):
        options.backend()
    with options.override(backend="torch"):  # programmatic choice wins over the variable
        assert options.backend() == "torch"


def test_override_is_scoped_and_checked():
    before = options.current()
    with options.override(isa="portable", chunk_elements=300, int_gemm=False) as opts:
        assert options.current() == opts and opts.isa == "portable" and opts.chunk_elements == 300
    assert options.current() == before
    with pytest.raises(APSQError, match="isa must be one of"):
        with options.override(isa="sse"):
            pass
    with pytest.raises(APSQError, match="chunk_elements"):
        with options.override(chunk_elements=0):
            pass
    with pytest.raises(APSQError, match="unknown kernel option.*chunk"):
        with options.override(chunk=5):
            pass
    with pytest.raises(APSQError, match="fused_lsq must be True or False"):
        with options.override(fused_lsq="off"):
            pass
    assert options.current() == before


def test_cache_root_from_apsq_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("APSQ_CACHE", str(tmp_path / "c"))
    assert apsq.cache.cache_root() == tmp_path / "c"
    assert build.kernel_dir() == tmp_path / "c" / "kernels"
    monkeypatch.delenv("APSQ_CACHE")
    assert apsq.cache.cache_root() == Path(os.path.expanduser("~")) / ".cache" / "apsq"


def test_only_options_reads_the_environment_and_old_switches_are_gone():
    """The kernels read the environment in options.py only; none of the retired switches is left."""
    kernels = ROOT / "src" / "apsq" / "kernels"
    for f in kernels.glob("*.py"):
        if f.name in ("options.py", "triton_psum.py"):
            continue
        text = f.read_text()
        assert "os.environ" not in text and "getenv" not in text, f
    retired = [f"APSQ_{n}" for n in ("FUSED_BACKEND", "FUSED_CHUNK", "INT_GEMM", "GEMM_ISA", "FUSED_LSQ",
                                     "NO_CKERNEL", "CACHE_DIR")]
    pattern = re.compile(r"\b(" + "|".join(retired) + r")\b")
    roots = [ROOT / "src", ROOT / "benchmarks", ROOT / "docs", ROOT / "tests", ROOT / "results"]
    hits = [f"{f.relative_to(ROOT)}: {m.group(0)}" for r in roots if r.exists()
            for f in r.rglob("*") if f.suffix in (".py", ".md", ".c", ".yaml", ".toml") and f != Path(__file__)
            for m in pattern.finditer(f.read_text(errors="replace"))]
    assert not hits, hits


# ------------------------------------------------------------------------------------------------
# The dispatcher.
# ------------------------------------------------------------------------------------------------
def test_routes_for_device_dtype_and_switch(monkeypatch):
    x32, x16 = torch.ones(2), torch.ones(2, dtype=torch.float16)
    monkeypatch.setenv("APSQ_KERNELS", "auto")
    assert dispatch.choose(x32) == ("c" if chunk.available() else "torch")
    assert dispatch.choose(x16) == "reference"
    assert dispatch.choose(torch.ones(2, device="meta")) == "reference"
    if chunk.available():  # 1/s not representable in float32: the torch kernels, exact
        assert dispatch.choose(x32, [2.0**-140]) == "torch"
    for value, want in (("reference", "reference"), ("torch", "torch"), ("triton", "triton")):
        monkeypatch.setenv("APSQ_KERNELS", value)
        assert dispatch.choose(x32) == want
    monkeypatch.setenv("APSQ_KERNELS", "torch")
    assert dispatch.choose(x16) == "reference"


def _replace_triton(monkeypatch, module) -> None:
    """``apsq.kernels.triton_psum`` as ``module`` (None: not importable), whether or not it was imported."""
    import apsq.kernels

    monkeypatch.setitem(sys.modules, "apsq.kernels.triton_psum", module)
    if module is None:
        monkeypatch.delattr(apsq.kernels, "triton_psum", raising=False)
    else:
        monkeypatch.setattr(apsq.kernels, "triton_psum", module, raising=False)


def _case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-40, 40, (6, 50), generator=gen).double() * 2.0**-4
    w = torch.randint(-40, 40, (7, 50), generator=gen).double() * 2.0**-5
    s = torch.exp2(torch.tensor([-1.0, -2.0, 0.0, -1.0]))
    return x, w, s


@pytest.mark.parametrize("value", ["reference", "torch", "auto", "c", "triton"])
def test_every_backend_gives_the_reference_values(monkeypatch, value):
    if value == "c" and not chunk.available():
        pytest.skip("the C kernels do not build here")
    monkeypatch.setenv("APSQ_KERNELS", value)
    if value == "triton":  # Triton not importable: the reference, not an error
        _replace_triton(monkeypatch, None)
    x, w, s = _case()
    ref = psum_accumulate(linear_partials(x, w, 16), s, mode="apsq", gs=2)
    assert torch.equal(linear_psum(x, w, s, 16, mode="apsq", gs=2), ref)
    assert torch.equal(linear_psum(x, w, s, 16, mode="apsq", gs=2, x_step=torch.tensor(2.0**-4),
                                   w_step=torch.tensor(2.0**-5)), ref)
    assert torch.equal(psum_accumulate_fused(linear_partials(x, w, 16), s, mode="apsq", gs=2), ref)


def test_reference_switch_runs_the_reference_loop(monkeypatch):
    calls = []
    real = fused.psum_accumulate
    monkeypatch.setattr(fused, "psum_accumulate", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setenv("APSQ_KERNELS", "reference")
    x, w, s = _case(1)
    linear_psum(x, w, s, 16, mode="psq")
    psum_accumulate_fused(linear_partials(x, w, 16), s, mode="psq")
    assert len(calls) == 2


def test_triton_route_calls_gemm_psum_and_falls_back_on_none(monkeypatch):
    calls = []
    fake = type(sys)("apsq.kernels.triton_psum")
    fake.gemm_psum = lambda x3, w3, scales, tile, plan, x_step, w_step: calls.append((x3.shape, plan.n)) or None
    _replace_triton(monkeypatch, fake)
    monkeypatch.setenv("APSQ_KERNELS", "triton")
    x, w, s = _case(2)
    y = linear_psum(x, w, s, 16, mode="apsq", gs=2)
    assert calls == [(torch.Size([1, 6, 50]), 4)]
    assert torch.equal(y, psum_accumulate(linear_partials(x, w, 16), s, mode="apsq", gs=2))


# ------------------------------------------------------------------------------------------------
# The fallback without a compiler warns once (issue 17 item 4); a forced C backend is an error.
# ------------------------------------------------------------------------------------------------
def _no_compiler(monkeypatch) -> None:
    """As on a machine without a C compiler: every kernel library fails to build, nothing warned yet."""
    from apsq.kernels import lsq

    monkeypatch.setattr(build, "compiler", lambda: None)
    fresh = lambda name: LazyLibrary(name, lambda: PROBE, lambda lib: None)  # noqa: E731
    monkeypatch.setattr(chunk, "_LIB", fresh("psum_chunk"))
    monkeypatch.setattr(lsq, "_LIB", fresh("lsq_kernel"))
    monkeypatch.setattr(int_gemm, "_LIBS", {k: fresh("psum_gemm") for k in int_gemm.GEMM_ISAS})
    monkeypatch.setattr(build, "_WARNED", set())


def test_without_compiler_the_torch_kernels_are_used_with_one_warning(monkeypatch):
    from apsq.nn.config import LayerQuantConfig
    from apsq.nn.layers import QuantLinear

    _no_compiler(monkeypatch)
    with pytest.raises(RuntimeError, match="no C compiler"):
        build.build_library("probe", PROBE)
    monkeypatch.setenv("APSQ_KERNELS", "auto")
    x, w, s = _case(3)
    torch.manual_seed(0)
    layer = QuantLinear(50, 7, qcfg=LayerQuantConfig(tile=16, mode="apsq", gs=2)).double().train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch.choose(x) == "torch"
        y = linear_psum(x, w, s, 16, mode="apsq", gs=2)
        for _ in range(2):  # a training step of a quantized layer: LSQ and PSUM kernels, twice
            layer(x).sum().backward()
    msgs = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    assert len(msgs) == 1 and "no C compiler" in msgs[0] and "slower torch code" in msgs[0], msgs
    assert torch.equal(y, psum_accumulate(linear_partials(x, w, 16), s, mode="apsq", gs=2))
    monkeypatch.setenv("APSQ_KERNELS", "c")
    with pytest.raises(APSQError, match="APSQ_KERNELS=c but the C kernels did not build: no C compiler"):
        dispatch.choose(x)


# ------------------------------------------------------------------------------------------------
# Typed entry points: a wrong argument is refused before the call.
# ------------------------------------------------------------------------------------------------
@needs_cc
def test_typed_entries_refuse_bad_arguments_before_the_call():
    lib = chunk.library()
    plan = Plan("apsq", 3, 2, 8)
    p, out, lb = torch.zeros(3, 10), torch.empty(10), torch.empty(10, dtype=torch.uint8)
    args = dict(p=p, n=3, E=10, sd=[1.0] * 3, si=[1.0] * 3, apsq=1, gs=2, qn=plan.qn, qp=plan.qp, out=out, lb=lb)
    chunk.FWD(lib, **args)  # well formed
    with pytest.raises(ValueError, match="'out' must be torch.float32, got torch.float64"):
        chunk.FWD(lib, **{**args, "out": torch.empty(10, dtype=torch.float64)})
    with pytest.raises(ValueError, match="'p' must have 30 elements, got 24"):
        chunk.FWD(lib, **{**args, "p": torch.zeros(3, 8)})
    with pytest.raises(ValueError, match="'p' must be a contiguous CPU tensor"):
        chunk.FWD(lib, **{**args, "p": torch.zeros(10, 3).t()})
    with pytest.raises(ValueError, match="'sd' needs 3 values, got 2"):
        chunk.FWD(lib, **{**args, "sd": [1.0, 1.0]})
    with pytest.raises(ValueError, match="'lb' must be torch.uint8 or torch.int16"):
        chunk.FWD(lib, **{**args, "lb": torch.empty(10, dtype=torch.int32)})
    with pytest.raises(TypeError, match="missing arguments \\['gs'\\]"):
        chunk.FWD(lib, **{k: v for k, v in args.items() if k != "gs"})
    with pytest.raises(TypeError, match="'n' must be an int"):
        chunk.FWD(lib, **{**args, "n": 3.0})
    if int_gemm.available():
        gemm = int_gemm.library()
        with pytest.raises(ValueError, match="'dst' must be torch.int16"):
            int_gemm.CODES(gemm, src=torch.zeros(2, 4), R=2, K=4, tile=2, te=2, inv_step=[1.0], per_row=0,
                           dst=torch.empty(2, 4, dtype=torch.int32))
    assert all(f.argtypes is not None for f in (lib.apsq_fwd_f32, lib.apsq_bwd_f64))


# ------------------------------------------------------------------------------------------------
# The kernel cache (issue 16 item 11).
# ------------------------------------------------------------------------------------------------
def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_unwritable_cache_falls_back_to_a_private_folder(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")  # APSQ_CACHE is a file: <it>/kernels cannot be created (even as root)
    monkeypatch.setenv("APSQ_CACHE", str(blocker))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    got = build.kernel_dir()
    assert got == tmp_path / "tmp" / f"apsq-{os.getuid()}" / "kernels"
    for folder in (got, got.parent):
        assert _mode(folder) == 0o700 and os.lstat(folder).st_uid == os.getuid()


def test_a_fallback_folder_others_can_use_is_refused(monkeypatch, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    monkeypatch.setenv("APSQ_CACHE", str(blocker))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    planted = tmp_path / f"apsq-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)  # made by someone else, open to all
    with pytest.raises(CacheError, match="mode 777"):
        build.kernel_dir()
    planted.chmod(0o700)
    monkeypatch.setattr(apsq.cache, "_uid", lambda: os.getuid() + 1)  # as if another user owned it
    with pytest.raises(CacheError, match="owned by uid"):
        build.check_private(planted, strict=True)
    planted.rmdir()
    planted.symlink_to(tmp_path)
    monkeypatch.setattr(apsq.cache, "_uid", lambda: os.getuid())
    with pytest.raises(CacheError, match="symbolic link"):
        build.kernel_dir()


def test_group_writable_cache_folder_is_not_used(monkeypatch, tmp_path):
    root = tmp_path / "c"
    (root / "kernels").mkdir(parents=True)
    (root / "kernels").chmod(0o777)
    monkeypatch.setenv("APSQ_CACHE", str(root))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert build.kernel_dir() == tmp_path / f"apsq-{os.getuid()}" / "kernels"  # not the open folder


@needs_cc
def test_built_libraries_are_private_and_hash_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("APSQ_CACHE", str(tmp_path))
    lib = build.build_library("probe", PROBE)
    assert lib.apsq_probe() == 7
    folder = tmp_path / "kernels"
    (so,) = folder.glob("probe_*.so")
    record = so.with_name(so.name + ".sha256")
    assert _mode(folder) == 0o700 and _mode(so) == 0o600 and record.exists()
    build.load_verified(so)
    # damaged or replaced after the build: refused by load_verified, rebuilt by build_library
    good = so.read_bytes()
    swap = so.with_name("swap.tmp")  # a new file in its place (writing into a loaded library would crash)
    swap.write_bytes(good + b"\0")
    swap.chmod(0o600)
    os.replace(swap, so)
    with pytest.raises(CacheError, match="content hash"):
        build.load_verified(so)
    assert build.build_library("probe", PROBE).apsq_probe() == 7
    assert so.read_bytes() == good
    # a library without a record of what was built (planted): never loaded as is
    record.unlink()
    with pytest.raises(CacheError, match="cannot stat"):
        build.load_verified(so)
    assert build.build_library("probe", PROBE).apsq_probe() == 7 and record.exists()
    # a library file others may write
    so.chmod(0o666)
    with pytest.raises(CacheError, match="mode 666"):
        build.load_verified(so)


@needs_cc
def test_kernel_builds_from_scratch(monkeypatch, tmp_path):
    """A fresh cache: the PSUM chunk kernel compiles (well under a minute) and loads from kernels/."""
    monkeypatch.setenv("APSQ_CACHE", str(tmp_path))
    lib = chunk.build()
    assert hasattr(lib, "apsq_fwd_f32") and list((tmp_path / "kernels").glob("psum_chunk_*.so"))


@needs_cc
def test_concurrent_first_builds_agree(tmp_path):
    """Four processes building one library into one fresh cache all load it (atomic, identical files)."""
    import subprocess

    code = ("import sys; from apsq.kernels import build; "
            f"lib = build.build_library('probe', {PROBE!r}); sys.exit(0 if lib.apsq_probe() == 7 else 1)")
    env = {**os.environ, "APSQ_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE) for _ in range(4)]
    errs = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errs
    assert len(list((tmp_path / "kernels").glob("probe_*.so"))) == 1
    assert not list((tmp_path / "kernels").glob(".*.tmp"))  # no temp file left behind


def test_a_forced_c_backend_that_does_not_build_fails_quantize_before_it_changes_the_model(monkeypatch):
    """``APSQ_KERNELS=c`` without a compiler failed at the first quantized forward: for ``apsq train``, after
    the full-precision stage (trial-vis). ``quantize_`` (and so train / sweep's early check) says it first."""
    import apsq
    from apsq.nn.transform import quant_layers

    _no_compiler(monkeypatch)
    monkeypatch.setenv("APSQ_KERNELS", "c")
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with pytest.raises(APSQError, match="APSQ_KERNELS=c but the C kernels did not build: no C compiler"):
        apsq.quantize_(model, apsq.APSQConfig())
    assert not list(quant_layers(model)) and not hasattr(model, "apsq_report")


def test_forced_triton_on_cpu_tensors_without_the_interpreter_says_it_runs_the_reference(monkeypatch):
    """``APSQ_KERNELS=triton`` on CPU tensors without ``TRITON_INTERPRET=1`` ran the reference loop without a
    word (trial-vis); now one RuntimeWarning per process says so, and the values are the reference's."""
    triton_psum = pytest.importorskip("apsq.kernels.triton_psum")
    if not triton_psum.available():
        pytest.skip("Triton is not installed")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if triton_psum.interpreting():
        pytest.skip("the interpreter is on in this process")
    monkeypatch.setattr(triton_psum, "_WARNED_DEVICES", set())
    monkeypatch.setenv("APSQ_KERNELS", "triton")
    x, w, s = _case(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = linear_psum(x, w, s, 16, mode="apsq", gs=2)
        linear_psum(x, w, s, 16, mode="apsq", gs=2)
    msgs = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    assert len(msgs) == 1 and "TRITON_INTERPRET=1" in msgs[0] and "reference loop" in msgs[0], msgs
    assert torch.equal(y, psum_accumulate(linear_partials(x, w, 16), s, mode="apsq", gs=2))
