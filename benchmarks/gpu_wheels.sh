#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py installs on a GPU machine that has torch, lightning,
# transformers, peft and accelerate but no network: hydra-core, omegaconf, antlr4 (built here
# from its pure-Python sdist) and bitsandbytes (manylinux x86-64, CUDA kernels included).
# About 44 MB in all, nearly all of it bitsandbytes. Usage: bash benchmarks/gpu_wheels.sh [DIR]
set -euo pipefail
dest="${1:-$(dirname "$0")/gpu_wheels}"
mkdir -p "$dest"
pip download -q --no-deps --only-binary=:all: -d "$dest" hydra-core==1.3.2 omegaconf==2.3.0
pip download -q --no-deps --only-binary=:all: -d "$dest" \
  --python-version 3.12 --platform manylinux_2_24_x86_64 bitsandbytes==0.50.2
pip wheel -q --no-deps -w "$dest" antlr4-python3-runtime==4.9.3
du -sh "$dest"
ls "$dest"
