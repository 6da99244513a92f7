#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.sh needs on the GPU machine and its image lacks (the image has torch,
# triton, transformers, accelerate, sklearn, hypothesis, pytest, pyyaml, typer, rich; not pydantic, which
# apsq.train.config imports). Run here, where PyPI is reachable: they land in .whl/ (git-ignored via
# .git/info/exclude) and travel with the device tool's `carry: [".whl"]`. CPython 3.12 / manylinux x86-64
# (the image's python3).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-common-dir)/info/exclude"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
for spec in pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
            typing-extensions==4.16.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "$spec"
done
ls -la .whl
