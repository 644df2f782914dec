#!/usr/bin/env bash
# Install what the ARM (aarch64) tests need, then build the cached aarch64 emulation environment.
#   - Debian packages: the aarch64 cross toolchain (gcc/g++/binutils, used to link TVM modules and the
#     native loader), qemu-user (runs aarch64 binaries on x86_64) and llvm-19 (llc and llvm-mca, for
#     `bisr-deploy estimate`, x86 and ARM alike);
#   - a JDK (javac, java) for the Android JNI binding's test on the host JVM;
#   - the arm64 foreign architecture, so that `apt-get download pkg:arm64` finds the aarch64 sysroot packages;
#   - the emulation environment itself (aarch64 Python + TVM/numpy wheels), built by tools/arm_env.py into
#     $BISR_ARM_ENV (default ~/.cache/bisr-deploy/arm-env). Idempotent: a second run does nothing new.
# Needs root (apt-get) and network to Debian's archive and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends llvm-19 \
    gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user make g++ binutils \
    openjdk-17-jdk-headless >/dev/null
python3 tools/arm_env.py build
