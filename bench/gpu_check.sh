#!/usr/bin/env bash
# One command for a GPU node (< 8 min on one H100/H200): numerics, SDPA kernels, evaluation, training,
# generation and ViT-L/14 speed, peak memory vs the computed table, at the real 7B/8B/13B shapes with
# random weights (no download). --tiny: the same on CPU with tiny shapes (< 1 min; CI runs it).
# Writes <--out, default ./gpu_check>/gpu_check.json and gpu_check.md. Reads tests/fixtures (--fixtures: another).
#   bash bench/gpu_check.sh [--tiny] [--out DIR]
set -euo pipefail
exec python "$(dirname "${BASH_SOURCE[0]}")/gpu_check.py" "$@"
