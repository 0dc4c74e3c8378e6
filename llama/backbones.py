"""The backbones the job scripts know and the published training recipe, as data (docs/training.md): one
row per backbone (its family, folder, depth, RoPE, and the batch, accumulation, blr and warmup of each
job), and the values every row shares (`RECIPE`). The scripts in scripts/ ask this table for a row; it
imports nothing beyond the standard library (no torch), so asking is instant:

    python -m llama.backbones                        # the table
    python -m llama.backbones llama3_2_1b --shell    # the row as shell assignments (scripts/common.sh)

Every shared recipe value equals the flag's default, except those in `RECIPE_ON_PURPOSE`, which say why
the published scripts pass another value (tests/test_config.py checks both).
"""
import argparse
import shlex
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

DATASETS = ("nextqa", "star", "tvqa")   # the finetuning / baseline benchmarks


@dataclass(frozen=True)
class Job:
    """One job's numbers for one backbone: per-GPU batch and gradient accumulation (4 GPUs), and per
    dataset (pre-alignment: "textvid") the blr and the warmup epochs."""
    batch: int
    accum: int
    blr: Dict[str, float]
    warmup: Dict[str, float]


def _per_dataset(*values) -> Dict[str, float]:
    return dict(zip(DATASETS, values))


@dataclass(frozen=True)
class Row:
    """A backbone of the scripts: `LLAMA=<name>`."""
    name: str
    title: str                    # "Llama-3.2 1B"
    family: str                   # --llama2 / --llama3
    model: str                    # --model
    folder: str                   # the default --llama_model_path: ./pretrained/<folder>/
    layers: int                   # its depth: --adapter_layer (adapters on every layer)
    rope_theta: Optional[float]   # the recipe's --rope_theta (None: the backbone's own)
    rope_scaling: float           # the backbone's own "llama3" RoPE scaling factor (1: none)
    tied: bool                    # its output layer is the token embedding
    pretrain: Job
    finetune: Job
    baseline: Job


def _row(name, title, family, model, folder, layers, theta, scaling, tied, pre, ft, bl) -> Row:
    return Row(name, title, family, model, folder, layers, theta, scaling, tied,
               Job(pre[0], pre[1], {"textvid": pre[2]}, {"textvid": 1}),
               Job(ft[0], ft[1], _per_dataset(*ft[2]), _per_dataset(1, 1, 1)),
               Job(bl[0], bl[1], _per_dataset(*bl[2]), _per_dataset(*bl[3])))


# pretrain: batch, accum, blr; finetune: batch, accum, blr per dataset; baseline: + warmup per dataset.
# Llama-3.1/3.2 rows are ours (docs/training.md): the Llama-3 8B recipe, the backbone's own RoPE.
_L3 = ((14, 8, 5e-3), (20, 4, (1e-2, 1e-2, 5e-3)), (20, 4, (2e-2, 2e-2, 1e-2), (2, 2, 2)))
BACKBONES: Dict[str, Row] = {r.name: r for r in [
    _row("llama2_7b", "Llama-2 7B", "llama2", "7B", "llama2", 32, None, 1.0, False,
         (18, 4, 5e-3), (20, 4, (1e-2, 1e-2, 5e-3)), (20, 4, (1e-2, 2e-2, 2e-2), (2, 2, 2))),
    _row("llama2_13b", "Llama-2 13B", "llama2", "13B", "llama2", 40, None, 1.0, False,
         (4, 8, 8e-3), (6, 16, (5e-3, 5e-3, 5e-3)), (6, 8, (1e-2, 2e-2, 2e-2), (4, 2, 2))),
    _row("llama3_8b", "Llama-3 8B", "llama3", "8B", "llama3", 32, 10000.0, 1.0, False, *_L3),
    _row("llama3_1_8b", "Llama-3.1 8B", "llama3", "8B", "llama3_1", 32, None, 8.0, False, *_L3),
    _row("llama3_2_3b", "Llama-3.2 3B", "llama3", "3B", "llama3_2", 28, None, 32.0, True, *_L3),
    _row("llama3_2_1b", "Llama-3.2 1B", "llama3", "1B", "llama3_2", 16, None, 32.0, True, *_L3),
]}

# The values every published job passes (flag -> value), and per job the ones that differ between jobs.
RECIPE = {"adapter_len": 50, "max_feats": 10, "bias": 3.5, "tau": 100.0, "weight_decay": 0.1, "variance": 0.0}
RECIPE_ON_PURPOSE = {
    "bias": "gate2 starts at -3.5 in every published script and checkpoint; the flag keeps the original code's "
            "default, 3.0, so that a command without --bias means what it meant there"}
JOBS = {"pretrain": {"epochs": 20, "max_seq_len": 150}, "finetune": {"epochs": 5, "max_seq_len": 128},
        "baseline": {"epochs": 10, "max_seq_len": 128}}


def get(name: str) -> Row:
    if name not in BACKBONES:
        raise KeyError(f"unknown LLAMA={name} ({','.join(BACKBONES)})")
    return BACKBONES[name]


def scaling_releases(factor: float) -> str:
    """The releases whose backbones have RoPE scaling `factor` of their own: "Llama-2, Llama-3" for 1."""
    releases = [r.title.rsplit(" ", 1)[0] for r in BACKBONES.values() if r.rope_scaling == float(factor)]
    return ", ".join(dict.fromkeys(releases))


def _num(v: float) -> str:
    return f"{v:g}"


def shell(row: Row) -> List[Tuple[str, str]]:
    """The row and the recipe as (shell variable, value): DATASETS (finetuning's), FAMILY, MODEL, FOLDER,
    THETA (- : the backbone's),
    LAYERS; PRE_*, FT_*, BL_* (BATCH, ACCUM, BLR[_<dataset>], WARMUP[_<dataset>], EPOCHS, MAX_SEQ_LEN);
    and the shared recipe values by their flag names in capitals (BIAS, ADAPTER_LEN, ...)."""
    out = [("DATASETS", " ".join(DATASETS)), ("FAMILY", row.family), ("MODEL", row.model), ("FOLDER", row.folder),
           ("THETA", "-" if row.rope_theta is None else _num(row.rope_theta)), ("LAYERS", str(row.layers))]
    for prefix, job, name in (("PRE", row.pretrain, "pretrain"), ("FT", row.finetune, "finetune"),
                              ("BL", row.baseline, "baseline")):
        out += [(f"{prefix}_BATCH", str(job.batch)), (f"{prefix}_ACCUM", str(job.accum))]
        for what, values in (("BLR", job.blr), ("WARMUP", job.warmup)):
            if list(values) == ["textvid"]:
                out.append((f"{prefix}_{what}", _num(values["textvid"])))
            else:
                out += [(f"{prefix}_{what}_{ds}", _num(v)) for ds, v in values.items()]
        out += [(f"{prefix}_{k.upper()}", _num(v)) for k, v in JOBS[name].items()]
    out += [(k.upper(), _num(v)) for k, v in RECIPE.items()]
    return out


def _table() -> str:
    head = f"{'LLAMA':<12} {'backbone':<13} {'flags':<24} {'layers':>6}  {'RoPE':<16} pretrain (batch x accum, blr)"
    lines = [head]
    for r in BACKBONES.values():
        rope = (f"theta {r.rope_theta:g}" if r.rope_theta else "own") + (f", x{r.rope_scaling:g}" if r.rope_scaling > 1
                                                                         else "")
        p = r.pretrain
        lines.append(f"{r.name:<12} {r.title:<13} {'--' + r.family + ' --model ' + r.model:<24} {r.layers:>6}  "
                     f"{rope:<16} {p.batch} x {p.accum}, {p.blr['textvid']:g}")
    lines.append("shared: " + ", ".join(f"--{k} {v:g}" for k, v in RECIPE.items()) + "; "
                 + "; ".join(f"{job}: " + ", ".join(f"--{k} {v}" for k, v in vals.items())
                             for job, vals in JOBS.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m llama.backbones", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help=f"a backbone: {', '.join(BACKBONES)} (default: print the table)")
    p.add_argument("--shell", action="store_true", help="print the row as shell assignments (scripts/common.sh)")
    a = p.parse_args(argv)
    if a.name is None:
        print(_table())
        return 0
    try:
        row = get(a.name)
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    for k, v in shell(row) if a.shell else [(k.lower(), v) for k, v in shell(row)]:
        print(f"{k}={shlex.quote(v)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
