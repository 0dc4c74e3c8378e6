#!/usr/bin/env bash
# Baseline: the finetuning of scripts/finetune.sh without TextVid pre-alignment (fresh TOPA parameters), with
# the published recipe (docs/training.md): 10 epochs, wd 0.1, max_seq_len 128; batch, accumulation, and the
# blr and warmup per dataset from the backbone's row in llama/backbones.py (4 GPUs).
# Usage (from the folder that holds pretrained/ and data/):
#   [LLAMA=...] [DATASET=nextqa|star|tvqa] bash scripts/baseline.sh [extra train.py args]
TOPA_JOB=baseline exec bash "$(dirname "${BASH_SOURCE[0]}")/finetune.sh" "$@"
