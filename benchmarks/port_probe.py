"""Peak multiply-accumulate rates of this core for the PSUM kernel's instructions (x86-64 with AVX2 + FMA).

`python benchmarks/port_probe.py [--json PATH]`: compiles a small C program with ``cc`` (inline assembly, so
the compiler cannot fold or reorder the work) and measures, on one thread, registers only (no memory):

* ``vpmaddwd`` + ``vpaddd`` (int16 pairs into int32, what the AVX2 integer kernel's tile products run on),
  6 independent accumulators: 16 MAC per instruction;
* ``vfmadd231ps`` (fp32 FMA, what an fp32 GEMM runs on), 12 independent accumulators: 8 MAC per instruction;
* the two mixed, 4 ``vpmaddwd`` with 8 FMAs and 4 with 5: whether a hybrid micro-kernel (some outputs
  in int16, the rest in fp32 from float copies of the codes) could beat either alone.

This backs the floor in ``docs/performance.md`` (issue 26 A): on the AMD EPYC (Zen 2) of this project's
machines both instructions reach the same peak, and mixing them gains at most a fifth on the products,
before any load.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
from pathlib import Path

from apsq.machine import describe

_SOURCE = r"""
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
#define R 100000000L
#define MADD(d, a) "vpmaddwd %%ymm14,%%ymm15,%%ymm" #d "\n vpaddd %%ymm" #d ",%%ymm" #a ",%%ymm" #a "\n"
#define FMA(a) "vfmadd231ps %%ymm14,%%ymm15,%%ymm" #a "\n"
#define CLOB "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13"
int main(void) {
    long k; double t, ti, tf, tm, tm2;
    __asm__ volatile("vpxor %%ymm14,%%ymm14,%%ymm14\n vpxor %%ymm15,%%ymm15,%%ymm15" ::: "xmm14", "xmm15");
    t = now();
    for (k = 0; k < R; k++) __asm__ volatile(MADD(8,0) MADD(9,1) MADD(10,2) MADD(11,3) MADD(12,4) MADD(13,5) ::: CLOB);
    ti = now() - t; t = now();
    for (k = 0; k < R; k++) __asm__ volatile(FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6) FMA(7) FMA(8) FMA(9)
                                             FMA(10) FMA(11) ::: CLOB);
    tf = now() - t; t = now();
    for (k = 0; k < R; k++) __asm__ volatile(MADD(8,0) FMA(1) FMA(2) MADD(9,3) FMA(4) FMA(5) MADD(10,6) FMA(7)
                                             FMA(11) MADD(12,13) ::: CLOB);
    tm = now() - t; t = now();
    for (k = 0; k < R; k++) __asm__ volatile(MADD(8,0) FMA(1) MADD(9,3) FMA(4) MADD(10,6) FMA(7) MADD(12,13)
                                             FMA(11) FMA(2) ::: CLOB);
    tm2 = now() - t;
    printf("%.2f %.2f %.2f %.2f\n", R * 6 * 16 / ti / 1e9, R * 12 * 8 / tf / 1e9,
           R * (4 * 16 + 8 * 8) / tm / 1e9, R * (4 * 16 + 5 * 8) / tm2 / 1e9);
    return 0;
}
"""

_KEYS = ("vpmaddwd_gmac_s", "fma_fp32_gmac_s", "mixed_4madd_8fma_gmac_s", "mixed_4madd_5fma_gmac_s")


def probe() -> dict[str, float]:
    """The four rates in G MAC/s (one thread). Raises RuntimeError on a CPU that is not x86-64 or when
    ``cc`` fails (the program needs AVX2 and FMA: SIGILL without them)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise RuntimeError(f"port_probe needs an x86-64 CPU with AVX2 and FMA; this is {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "probe.c", Path(tmp) / "probe"
        src.write_text(_SOURCE)
        subprocess.run(["cc", "-O2", str(src), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    return dict(zip(_KEYS, map(float, out), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="also write the rates and the machine here")
    args = ap.parse_args()
    rates = probe()
    for key, val in rates.items():
        print(f"{key:28s} {val:7.1f}")
    best = max(rates["vpmaddwd_gmac_s"], rates["fma_fp32_gmac_s"])
    mixed = max(rates["mixed_4madd_8fma_gmac_s"], rates["mixed_4madd_5fma_gmac_s"])
    print(f"mixed / the better alone: {mixed / best:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"command": "python benchmarks/port_probe.py --json " + str(args.json),
                                         "machine": describe(), "rates": rates,
                                         "mixed_over_best": mixed / best}, indent=2) + "\n")


if __name__ == "__main__":
    main()
