#!/usr/bin/env bash
# Install everything bisr-deploy needs on a fresh Debian machine (run as root, or with sudo for apt-get):
# the Python package with its pinned dependencies, and the aarch64 cross toolchain + emulation for --target arm.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { [ -t 2 ] && echo "==> $*" >&2 || true; }  # progress on a terminal only, as the CLI's (bisr_deploy/progress.py)
step "1/3 PyTorch 2.13 (CPU build)"
python3 -m pip install --quiet "torch==2.13.0"
step "2/3 bisr-deploy and its pinned dependencies (TVM, ONNX, ONNX Runtime, ...)"
python3 -m pip install --quiet -e ".[test]"
if [ -f .ci/setup-arm.sh ]; then
  step "3/3 aarch64 cross toolchain, qemu and the aarch64 emulation environment (.ci/setup-arm.sh, minutes)"
  bash .ci/setup-arm.sh
fi
