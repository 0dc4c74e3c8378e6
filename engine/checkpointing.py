"""Training checkpoints in the released layout plus what an exact `--resume` needs, resuming, and the
output folder's rules.

    {model: trainable tensors only (the released key names), optimizer, epoch, scaler,
     args (argparse.Namespace of the flags), config (plain nested dicts), param_names, rng, sampler, best}

A mid-epoch checkpoint (`--save_every`) adds `iteration` (batches of `epoch` done; `epoch` is then the
epoch in progress, not a finished one) and `epoch_totals` (the epoch's running loss sums and counts,
summed over ranks). It is written only at an accumulation boundary, when no gradient is pending, so the
optimizer state is the whole training state. The sampler state records the position.

Everything is a tensor, a plain container or an `argparse.Namespace`, so the file loads with
`llama.weights.load_topa_checkpoint` (weights_only=True). Files are written atomically
(`save_atomic`); `checkpoint_last.pth` / `checkpoint_best.pth` are atomically replaced hard links to the
newest file (a copy where the file system has no hard links).

Runs never mix in one `--output_dir` (`check_output_dir`, `prepare_resume_dir`): a new run refuses a
folder that holds a run's files unless `--overwrite` (which deletes exactly those files), and a resumed
run drops the log lines written after its checkpoint and the temporary files of a killed save.
"""
import math
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from llama.build import resolve_dtype
from util import dist
from util.errors import CheckpointError, ConfigError
from util.files import save_atomic
from util.logging import LOG_NAME, rewind_log
from util.schedule import param_groups

from .config import config_dict, flat_args


def checkpoint_name(epoch: int, iteration: Optional[int] = None) -> str:
    """`checkpoint_{epoch}.pth`, the original codebase's name (e.g. checkpoint_19.pth after 20 epochs);
    `checkpoint_{epoch}_iter{iteration}.pth` for a mid-epoch checkpoint (`iteration` batches done)."""
    return f"checkpoint_{epoch}.pth" if iteration is None else f"checkpoint_{epoch}_iter{iteration}.pth"


CHECKPOINT_FILE = re.compile(r"^checkpoint_(\d+)(?:_iter(\d+))?\.pth$")


def checkpoint_position(ckpt: dict) -> Tuple[int, float]:
    """(epoch, batches done): (epoch, inf) for a finished epoch, (epoch, iteration) mid-epoch."""
    it = ckpt.get("iteration")
    return int(ckpt["epoch"]), math.inf if it is None else int(it)


# ---- RNG states as tensors / plain containers ----

def capture_rng() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def restore_rng(state: Optional[dict]):
    if not state:
        return
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---- files ----

def link_atomic(src: Path, dst: Path):
    """Make `dst` name the same file as `src`, atomically (a crash leaves the old `dst` or the new one)."""
    src, dst = Path(src), Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here: an fsynced copy
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def training_state(model, optimizer, scaler, epoch: int, cfg, sampler_state: Optional[dict] = None,
                   best: Optional[dict] = None, iteration: Optional[int] = None,
                   epoch_totals: Optional[dict] = None) -> dict:
    """The checkpoint dict. `iteration`/`epoch_totals` only for a mid-epoch checkpoint (see the module
    docstring); call it at an accumulation boundary (no gradient pending)."""
    names = [n for n, _ in model.trainable_parameters()]
    state = {
        "model": {n: p.detach().to("cpu", copy=True) for n, p in model.trainable_parameters()},
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "args": flat_args(cfg),
        "config": config_dict(cfg),
        "param_names": names,
        "rng": capture_rng(),
        "sampler": sampler_state,
        "best": best,
    }
    if iteration is not None:
        state.update(iteration=int(iteration), epoch_totals=epoch_totals)
        state["sampler"] = dict(sampler_state or {}, batches_done=int(iteration))
    return state


def save_checkpoint(output_dir, state: dict, also: tuple = ("last",)) -> Path:
    """Write `checkpoint_{epoch}.pth` (mid-epoch: `checkpoint_{epoch}_iter{iteration}.pth`) atomically,
    then point `checkpoint_<name>.pth` at it for each name in `also` ("last", "best"). Then the older
    mid-epoch checkpoints go: only the newest one is kept, and none once its epoch's checkpoint exists."""
    out = Path(output_dir)
    path = out / checkpoint_name(state["epoch"], state.get("iteration"))
    save_atomic(state, path)
    for name in also:
        link_atomic(path, out / f"checkpoint_{name}.pth")
    if "last" in also:
        for old in out.glob("checkpoint_*_iter*.pth"):
            if old.name != path.name and CHECKPOINT_FILE.match(old.name):
                old.unlink()
    return path


def check_optimizer_state(ckpt: dict, model, source: str):
    """The saved optimizer state must belong to these parameters, in this order (an optimizer state
    written by another codebase may order its parameters differently: --finetune loads weights only)."""
    if not ckpt.get("optimizer") or "param_groups" not in ckpt["optimizer"]:
        raise CheckpointError(f"{source}: has no optimizer state to continue from; --finetune loads its weights only")
    names = [n for n, _ in model.trainable_parameters()]
    saved = ckpt.get("param_names")
    if saved is not None and list(saved) != names:
        raise CheckpointError(f"{source}: its optimizer state is for parameters {list(saved)[:3]}..., this model "
                              f"trains {names[:3]}...; resume with --finetune to load the weights only")
    ids = [i for g in ckpt["optimizer"]["param_groups"] for i in g["params"]]
    ours = [p for g in param_groups(model.trainable_parameters(), 0.0) for p in g["params"]]
    if len(ids) != len(ours):
        raise CheckpointError(f"{source}: optimizer state has {len(ids)} parameters, the model trains "
                              f"{len(ours)}; resume with --finetune to load the weights only")
    for i, p in zip(ids, ours):
        saved_shape = tuple(ckpt["optimizer"]["state"].get(i, {}).get("exp_avg", p).shape)
        if saved_shape != tuple(p.shape):
            raise CheckpointError(f"{source}: optimizer state of parameter {i} has shape {saved_shape}, the "
                                  f"model's is {tuple(p.shape)}; resume with --finetune to load the weights only")


# ---- resume ----

# training flags a resume compares with the checkpoint's `args`, and what a change means
SCHEDULE = "the lr schedule continues with the new value"
TRAIN_FLAGS = {
    "lr": SCHEDULE, "blr": SCHEDULE, "min_lr": SCHEDULE, "warmup_epochs": SCHEDULE, "epochs": SCHEDULE,
    "accum_iter": "the effective batch (and an lr from --blr) changes from here on",
    "batch_size": "the effective batch, the data order (and an lr from --blr) change from here on",
    "weight_decay": "the new weight decay applies from here on",
    "clip_grad": "the new gradient clipping applies from here on",
    "precision": "the backbone computes in the new dtype from here on",
    "vaq": "the training losses change from here on", "qav": "the training losses change from here on",
    "video_caption": "the training batches change from here on", "openvqa": "the training items change from here on",
    "answer_balance": "the training items change from here on", "variance": "the training items change from here on",
    "weight_captioning": "the training losses change from here on", "tau": "the training losses change from here on",
    "seed": "the data order changes from here on", "dataset": "training continues on other data",
    "train_split": "training continues on other data", "sub": "the training prompts change from here on",
    "truncate_dialogue": "the training prompts change from here on",
    "group_by_length": "the data order changes from here on",
}
# what fixes a mid-epoch position: the rest of the epoch must be the rest of the same permutation
DATA_ORDER = ("batch_size", "world_size", "seed", "dataset", "train_split", "video_caption", "items",
              "group_by_length")


def _show(v) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return "unset" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def changed_settings(ckpt: dict, cfg, world: int, n_items: int, device) -> List[Tuple[str, object, object]]:
    """[(flag, run's value, checkpoint's value)] for every training setting of `TRAIN_FLAGS` (plus the
    world size and the training set's size) that differs from what the checkpoint recorded. Settings
    the checkpoint did not record (e.g. released checkpoints) are not compared."""
    saved = ckpt.get("args")
    saved = vars(saved) if saved is not None and not isinstance(saved, dict) else (saved or {})
    now = vars(flat_args(cfg))
    out = []
    for flag in TRAIN_FLAGS:
        if flag not in saved:
            continue
        a, b = now.get(flag), saved[flag]
        if flag == "precision":   # compare what runs: unset means bf16 on GPU, fp32 on CPU
            try:
                a, b = (str(resolve_dtype(x, torch.device(device))).replace("torch.", "") for x in (a, b))
            except KeyError:
                pass
        if a != b:
            out.append((flag, a, b))
    sampler = ckpt.get("sampler") or {}
    if "world_size" in sampler and sampler["world_size"] != world:
        out.append(("world_size", world, sampler["world_size"]))
    if "n" in sampler and sampler["n"] != n_items:
        out.append(("items", n_items, sampler["n"]))
    return out


def _setting(flag: str, now, then) -> str:
    if flag == "world_size":
        return f"world size {now} (checkpoint: {then})"
    if flag == "items":
        return f"the training set has {now} items (checkpoint: {then})"
    return f"--{flag} {_show(now)} (checkpoint: {_show(then)})"


def describe_change(flag: str, now, then) -> str:
    """One line: `resume: --lr 0.001 (checkpoint: 0.01): the lr schedule continues with the new value`."""
    why = {"world_size": TRAIN_FLAGS["batch_size"], "items": TRAIN_FLAGS["seed"]}.get(flag) or TRAIN_FLAGS[flag]
    return f"resume: {_setting(flag, now, then)}: {why}"


@dataclass
class Resumed:
    epoch: int                            # the first epoch to run
    iteration: int = 0                    # batches of `epoch` already done (a mid-epoch checkpoint)
    best: Optional[dict] = None
    epoch_totals: Optional[dict] = None   # the epoch's running totals at the checkpoint (mid-epoch only)

    @property
    def position(self) -> Tuple[int, float]:
        """The checkpoint's place in the run: (epoch, batches done), inf for a finished epoch."""
        return (self.epoch, self.iteration) if self.iteration else (self.epoch - 1, math.inf)


def resume_training(ckpt: dict, source: str, model, optimizer, scaler, sampler, cfg, world: int, device) -> Resumed:
    """Continue the run that wrote `ckpt` exactly: optimizer (weight decay from the flags), grad scaler,
    RNG, epoch and, for a mid-epoch checkpoint, the batch position and the epoch's running totals.

    Every training setting that differs from the checkpoint's is stated on one line (rank 0). The run
    goes on with the new values, except that a mid-epoch checkpoint refuses a change of what orders
    the epoch's data (batch size, world size, seed, dataset, the training set's size): the rest of the
    epoch would not be the rest of the same permutation (items seen twice or never)."""
    # the model settings (backbone, rope_theta, adapter shape, ...) were compared when the checkpoint was
    # read (llama.build.load_topa -> check_recorded_settings), before the backbone loaded
    check_optimizer_state(ckpt, model, source)
    changes = changed_settings(ckpt, cfg, world, sampler.n, device)
    epoch, iteration = checkpoint_position(ckpt)
    mid_epoch = iteration != math.inf
    if mid_epoch:
        order = [c for c in changes if c[0] in DATA_ORDER]
        if order:
            what = ", ".join(_setting(*c) for c in order)
            raise ConfigError(f"{source} is a mid-epoch checkpoint (epoch {epoch}, {iteration} batches done): it "
                              f"continues only with the same data order, but {what}; keep those settings, or "
                              f"{_restart_before(source, epoch)}")
    if dist.is_main():
        for c in changes:
            print(describe_change(*c), flush=True)
    optimizer.load_state_dict(ckpt["optimizer"])
    for g, fresh in zip(optimizer.param_groups, param_groups([], cfg.optim.weight_decay)):
        g["weight_decay"] = fresh["weight_decay"]
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt.get("rng"))
    if mid_epoch:
        if dist.is_main():
            print(f"resumed {source}: epoch {epoch}, {iteration} batches done; continuing there", flush=True)
        return Resumed(epoch, iteration, ckpt.get("best"), ckpt.get("epoch_totals"))
    if dist.is_main():
        print(f"resumed {source}: epoch {epoch} done, continuing at epoch {epoch + 1}", flush=True)
    return Resumed(epoch + 1, 0, ckpt.get("best"))


def _restart_before(source: str, epoch: int) -> str:
    """Where a run whose mid-epoch checkpoint (of `epoch`) cannot continue with new settings can start
    from: the epoch checkpoint before it, where that file exists; else a new run."""
    before = Path(source).parent / checkpoint_name(epoch - 1)
    if epoch > 0 and before.is_file():
        return f"resume from the epoch checkpoint before it ({before})"
    return (f"start a new run with them (no epoch checkpoint before it: {before.name} does not exist)" if epoch > 0
            else "start a new run with them (it is in the first epoch: no epoch checkpoint comes before it)")


# ---- the output folder: runs never mix ----

def run_files(out: Path) -> List[Path]:
    """The files a training run writes in `out`: checkpoint_*.pth, log.jsonl, tensorboard/, eval/, and
    the temporary files of atomic writes (.checkpoint_*.tmp, .log.jsonl.*.tmp). Nothing else."""
    if not out.is_dir():
        return []
    found = sorted(p for p in out.glob("checkpoint_*.pth") if p.is_file())
    found += [p for p in (out / LOG_NAME,) if p.is_file()]
    found += [p for p in (out / "tensorboard", out / "eval") if p.is_dir()]
    found += sorted(p for p in out.glob(".checkpoint_*.tmp") if p.is_file())
    found += sorted(p for p in out.glob(f".{LOG_NAME}.*.tmp") if p.is_file())
    return found


def _listing(paths: List[Path], n: int = 8) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths]
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _delete(paths: List[Path]):
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()


def check_output_dir(output_dir, resume: Optional[str], continuing: bool, overwrite: bool):
    """Before anything is built: a new run (also `--finetune --resume X`) needs an `--output_dir` that
    holds no run files, or `--overwrite` (which deletes exactly those). A continued run (`--resume`
    without `--finetune`) writes into the folder of its checkpoint, or into a folder without run files."""
    out = Path(output_dir)
    files = run_files(out)
    src = Path(resume).resolve() if resume else None
    if overwrite:
        doomed = {p.resolve() for p in files}
        if src is not None and src in doomed:
            raise ConfigError(f"--overwrite would delete {resume}, the checkpoint this run starts from; "
                              f"copy it elsewhere first, or leave out --overwrite")
        if files and dist.is_main():
            print(f"--overwrite: deleting the previous run's files in {out}: {_listing(files)}", flush=True)
        _delete(files)
        return
    if not files:
        return
    if continuing and src.parent == out.resolve():
        return
    what = f"--output_dir {out} already holds a training run's files ({_listing(files)})"
    if continuing:
        raise ConfigError(f"{what}, but --resume {resume} continues the run in {Path(resume).parent}: write into "
                          "that folder, an empty one, or pass --overwrite to delete those files first")
    how = (f"--finetune starts a new run: continue that one with --resume {out / 'checkpoint_last.pth'} and no "
           "--finetune" if resume else f"continue that run with --resume {out / 'checkpoint_last.pth'}")
    raise ConfigError(f"{what}: {how}, start over with --overwrite (deletes those files only), or choose another "
                      "folder")


def prepare_resume_dir(output_dir, resume: str, position: Tuple[int, float]):
    """A continued run in the folder of its checkpoint (at `position`): refuse when the folder holds
    newer checkpoints (they would mix with the continuation: resume from the newest, or move them
    away); drop log lines and `eval/epoch_<e>` results written after the checkpoint; delete temporary
    files of a killed save."""
    out = Path(output_dir)
    if Path(resume).resolve().parent != out.resolve():
        return
    newer = []
    for p in out.glob("checkpoint_*.pth"):
        m = CHECKPOINT_FILE.match(p.name)
        if m and (int(m[1]), math.inf if m[2] is None else int(m[2])) > position:
            newer.append(p)
    if newer:
        raise ConfigError(f"{out} holds checkpoints written after {resume} ({_listing(sorted(newer))}): resume from "
                          f"{out / 'checkpoint_last.pth'} to continue the newest, or move them away to continue "
                          f"from {Path(resume).name}")
    dropped = rewind_log(out, *position)
    evals = [p for p in (out / "eval").glob("epoch_*") if p.name[6:].isdigit() and (int(p.name[6:]), math.inf) > position]
    stale = [p for p in run_files(out) if p.name.endswith(".tmp")]
    _delete(evals + stale)
    if dropped or evals or stale:
        print(f"resume: dropped what was written after the checkpoint: {dropped} log line(s), {len(evals)} "
              f"evaluation folder(s), {len(stale)} temporary file(s) of an interrupted save", flush=True)
