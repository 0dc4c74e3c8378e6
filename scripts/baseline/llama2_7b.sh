#!/usr/bin/env bash
# The former per-backbone path, kept so that existing commands work: scripts/baseline.sh with LLAMA=llama2_7b.
LLAMA=llama2_7b exec bash "$(dirname "${BASH_SOURCE[0]}")/../baseline.sh" "$@"
