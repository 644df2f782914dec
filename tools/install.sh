#!/usr/bin/env bash
# Install everything bisr-deploy needs on a fresh Debian machine (run as root, or with sudo for apt-get):
# the Python package with its pinned dependencies, and the aarch64 cross toolchain + emulation for --target arm.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet "torch==2.13.0"
python3 -m pip install --quiet -e ".[test]"
if [ -f .ci/setup-arm.sh ]; then
  bash .ci/setup-arm.sh
fi
