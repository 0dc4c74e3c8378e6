"""Multiple-choice evaluation: every option of a question is scored by the mean NLL of its scored span
and the prediction is the argmin. With `packed` scoring (default) each question's shared prefix runs
once; `full` runs each option's whole sequence (same scores). Each question is scored on exactly one
rank; after every batch the ranks gather that step's predictions, which rank 0 appends to the
predictions file (so a failure late in a run loses nothing already scored). A score that is not finite
is an error naming the question, never a prediction."""
import json
import math
import os
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dataloader import benchmarks
from dataloader.packing import Batch, ScoringCollate
from llama.adapter import TOPA
from llama.memory import project_to_memory
from llama.build import load_tokenizer_for, load_topa, resolve_dtype
from llama.memory import load_memory
from text.prompts import PromptBuilder
from util import dist
from util.errors import CheckpointError, ConfigError, InputError, one_line
from util.files import write_text_atomic

from .config import EvalConfig, config_dict


def prepare_video(batch: Batch, memory: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Batch video features, projected onto the text memory when given (inference only)."""
    if batch.video is None or memory is None:
        return batch.video
    return project_to_memory(batch.video, memory)


def token_nll(model: TOPA, batch: Batch, video: Optional[torch.Tensor], gate2: bool = True) -> torch.Tensor:
    """NLL of every scored token [N] (fp32). Logits are computed once per distinct predicting position."""
    h = model.hidden(batch.tokens, batch.positions, batch.mask, video, batch.video_start, gate2=gate2)
    logits = model.logits(h.flatten(0, 1)[batch.t_pred])   # [U, vocab] fp32
    lse = torch.logsumexp(logits, dim=-1)                   # [U]
    return lse[batch.t_inv] - logits[batch.t_inv, batch.t_tgt]


def group_mean(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of `values` per group id -> [n_groups]."""
    total = torch.zeros(n_groups, device=values.device).index_add_(0, groups, values)
    count = torch.zeros(n_groups, device=values.device).index_add_(0, groups, torch.ones_like(values))
    return total / count


@torch.no_grad()
def score_batch(model: TOPA, batch: Batch, memory=None) -> List[List[float]]:
    """Per item of the batch, its options' scores (mean span NLL), in option order."""
    nll = token_nll(model, batch, prepare_video(batch, memory))
    scores = group_mean(nll, batch.t_group, batch.n_groups).cpu()
    per_item = torch.bincount(batch.g_item.cpu(), minlength=len(batch.items)).tolist()
    return [s.tolist() for s in scores.split(per_item)]


def shard_indices(n: int, rank: int, world: int) -> List[int]:
    """Every index on exactly one rank (no padding, no duplicates)."""
    return list(range(rank, n, world))


@dataclass
class EvalResult:
    predictions: List[dict]   # in dataset order
    n_too_long: int           # prompts longer than max_seq_len (scored whole)
    n_cut: int = 0            # prompts whose TVQA dialogue was cut (--truncate_dialogue)
    skipped: List[str] = field(default_factory=list)  # ids of questions dropped (--skip_missing)


def prediction_rows(batch: Batch, scores: List[List[float]]) -> Tuple[List[dict], Optional[InputError]]:
    """A prediction for every item of the batch whose scores are all finite, and an error naming the
    first question whose scores are not (such a question never gets a prediction)."""
    rows, error = [], None
    for it, sc in zip(batch.items, scores):
        r = it.record
        if not all(math.isfinite(x) for x in sc):
            error = error or CheckpointError(
                f"{r.source}: question {r.qid}: option scores {sc} are not finite (the model's output "
                "overflowed or is NaN), so it has no prediction; check the checkpoint's tensors, or run with "
                "--precision fp32")
            continue
        rows.append({"index": it.index, "video": r.vid, "qid": r.qid, "type": r.qtype, "answer": r.answer,
                     "prediction": min(range(len(sc)), key=sc.__getitem__), "scores": sc,
                     "length": max(len(s) for s in it.seqs), "cut": any(s.n_cut for s in it.seqs)})
    return rows, error


def public(row: dict) -> dict:
    """A prediction as the predictions file holds it (without the bookkeeping keys)."""
    return {k: v for k, v in row.items() if k not in ("index", "cut")}


def jsonl(rows: List[dict]) -> str:
    """Prediction rows as JSON lines; NaN / Inf can never reach the file (strict JSON)."""
    return "".join(json.dumps(public(p), allow_nan=False) + "\n" for p in rows)


@torch.no_grad()
def evaluate(model: TOPA, dataset, *, batch_size: int, device, memory=None, scoring: str = "packed",
             max_seq_len: Optional[int] = None, num_workers: int = 0, progress: bool = True,
             desc: str = "eval", stream=None) -> EvalResult:
    """Score `dataset` (an MCQADataset), each rank its shard; every rank returns every prediction.
    Prompts longer than `max_seq_len` are scored whole (never cut) and counted.

    Every rank runs the same number of steps (the largest shard's batches) and after each one the ranks
    gather that step's predictions. With `stream` (a path) rank 0 starts that file afresh and appends
    every step's predictions to it as they arrive. A non-finite score, or an input error while a batch
    is read, stops every rank with that error once the step's good predictions are in the stream."""
    model.eval()
    world = dist.world_size()
    part = Subset(dataset, shard_indices(len(dataset), dist.rank(), world))
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=ScoringCollate(scoring))
    n_steps = math.ceil(math.ceil(len(dataset) / world) / batch_size)
    batches = iter(loader)
    preds: List[dict] = []
    out = open(stream, "w", encoding="utf-8") if stream is not None and dist.is_main() else None
    try:
        for _ in tqdm(range(n_steps), desc=desc, disable=not (progress and dist.is_main()), dynamic_ncols=True):
            rows, error = [], None
            try:
                batch = next(batches, None)
                if batch is not None:
                    batch.to(device)
                    rows, error = prediction_rows(batch, score_batch(model, batch, memory))
            except InputError as e:  # e.g. a feature row read by a DataLoader worker
                error = e
            step = dist.gather_objects((rows, None if error is None else (type(error), one_line(error))))
            for step_rows, _ in step:
                preds.extend(step_rows)
                if out is not None:
                    out.write(jsonl(step_rows))
            if out is not None:
                out.flush()
            errors = [e for _, e in step if e is not None]
            if errors:
                cls, msg = errors[0]
                kept = f" ({len(preds)} questions scored before it are in {stream})" if stream and preds else ""
                raise cls(msg + kept)
    finally:
        if out is not None:
            out.close()
    preds.sort(key=lambda p: p["index"])
    seen = [p["index"] for p in preds]
    if seen != list(range(len(dataset))):
        raise RuntimeError(f"evaluation gathered {len(seen)} predictions for {len(dataset)} questions")
    too_long = sum(bool(max_seq_len and p["length"] > max_seq_len) for p in preds)
    return EvalResult(preds, too_long, sum(p["cut"] for p in preds), list(getattr(dataset, "skipped", [])))


def accuracy(predictions: List[dict], type_groups=None) -> Dict[str, dict]:
    """{bucket: {"correct", "total", "acc"}} over answered questions: "total" plus the buckets that
    `type_groups(qtype)` names (NExT-QA: C/T/D and each raw type)."""
    buckets = defaultdict(lambda: [0, 0])
    for p in predictions:
        if p["answer"] is None:
            continue
        ok = int(p["prediction"] == p["answer"])
        for b in ["total"] + (list(type_groups(p["type"])) if type_groups else []):
            buckets[b][0] += ok
            buckets[b][1] += 1
    return {b: {"correct": c, "total": n, "acc": 100.0 * c / n} for b, (c, n) in sorted(buckets.items())}


def format_table(acc: Dict[str, dict], title: str) -> str:
    lines = [title, f"{'bucket':<10} {'acc %':>7} {'correct':>8} {'total':>6}"]
    order = ["total"] + [b for b in acc if b != "total"]
    lines += [f"{b:<10} {acc[b]['acc']:7.2f} {acc[b]['correct']:8d} {acc[b]['total']:6d}" for b in order if b in acc]
    return "\n".join(lines)


def output_names(dataset_name: str, split: str) -> Dict[str, str]:
    """The result files of one evaluation, by kind."""
    tag = f"{dataset_name}_{split}"
    return {"predictions": f"predictions_{tag}.jsonl", "accuracy": f"accuracy_{tag}.json",
            "skipped": f"skipped_{tag}.txt", "submission": f"submission_{tag}.json"}


def write_eval_outputs(result: EvalResult, output_dir, dataset_name: str, split: str, type_groups=None,
                       submission: bool = False, settings: Optional[dict] = None) -> dict:
    """predictions_<ds>_<split>.jsonl (dataset order), accuracy_<ds>_<split>.json (with the skipped
    questions and `settings`, the run's), skipped_<ds>_<split>.txt (their ids, one a line) when some were
    skipped, and a submission file for test sets; each written atomically. Call on rank 0 only. Returns
    the accuracy dict."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(dataset_name, split)
    preds = result.predictions
    write_text_atomic(jsonl(preds), out / names["predictions"])
    if result.skipped:
        write_text_atomic("".join(f"{q}\n" for q in result.skipped), out / names["skipped"])
    elif (out / names["skipped"]).exists():  # a previous run's list would now be wrong
        (out / names["skipped"]).unlink()
    acc = accuracy(preds, type_groups)
    record = {"accuracy": acc, "n_questions": len(preds), "n_longer_than_max_seq_len": result.n_too_long,
              "n_dialogue_cut": result.n_cut, "n_skipped": len(result.skipped),
              "skipped_ids_file": names["skipped"] if result.skipped else None, "settings": settings}
    write_text_atomic(json.dumps(record, indent=2, allow_nan=False) + "\n", out / names["accuracy"])
    if submission:
        write_text_atomic(json.dumps({p["qid"]: p["prediction"] for p in preds}), out / names["submission"])
    return acc


def result_title(name: str, split: str, result: EvalResult, max_seq_len: int) -> str:
    title = f"{name} {split}: {len(result.predictions)} questions"
    if result.n_too_long:
        title += f" ({result.n_too_long} longer than max_seq_len={max_seq_len}, scored whole)"
    if result.n_cut:
        title += f" ({result.n_cut} with dialogue cut to fit max_seq_len={max_seq_len})"
    return title


def prepare_output_dir(path) -> Path:
    """Create `path` and write (then remove) a file in it: an output folder that cannot hold the results
    is an error now, not after hours of scoring."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"--output_dir {path}: cannot write there ({e.strerror or e})") from None
    return out


def run(cfg: EvalConfig) -> Optional[dict]:
    """eval.py: check everything the run reads and writes, load the model, score every question once
    over the ranks (streaming the predictions), and on rank 0 write the outputs and print the accuracy
    table. Returns the accuracy dict (rank 0).

    Order: output folder, tokenizer, annotations and features, memory, then the TOPA checkpoint (its
    tensors and recorded settings), and only then the backbone (minutes for 13B)."""
    rank, world, device = dist.init_distributed(cfg.run.device)
    torch.manual_seed(cfg.run.seed)
    dtype = resolve_dtype(cfg.model.precision, device)
    bench = benchmarks.get(cfg.data.dataset)
    out = prepare_output_dir(cfg.run.output_dir) if dist.is_main() else Path(cfg.run.output_dir)
    tok = load_tokenizer_for(cfg.model)
    builder = PromptBuilder(tok, cfg.model.max_feats)
    ds = benchmarks.build_mcqa_dataset(bench.name, cfg.data.data_root, cfg.split, builder,
                                       skip_missing=cfg.data.skip_missing, sub=cfg.data.sub,
                                       dialogue_max_len=cfg.data.dialogue_max_len(bench.name))
    memory = load_memory(cfg.data.memory_file) if cfg.data.memory else None
    model, _, _ = load_topa(cfg.model, device, dtype, tokenizer=tok, resume=cfg.resume)
    if cfg.resume is None and dist.is_main():
        print("warning: no --resume checkpoint: evaluating freshly initialised TOPA parameters", file=sys.stderr)
    memory = memory.to(device) if memory is not None else None
    names = output_names(bench.name, cfg.split)
    if dist.is_main():  # a previous run's results must not sit beside this run's streamed predictions
        for kind in ("accuracy", "skipped", "submission"):
            (out / names[kind]).unlink(missing_ok=True)
    res = evaluate(model, ds, batch_size=cfg.data.batch_size, device=device, memory=memory, scoring=cfg.scoring,
                   max_seq_len=cfg.data.max_seq_len, num_workers=cfg.data.num_workers,
                   desc=f"{bench.name}/{cfg.split}", stream=out / names["predictions"])
    acc = None
    if dist.is_main():
        settings = {"config": config_dict(cfg), "checkpoint": str(Path(cfg.resume).resolve()) if cfg.resume else None,
                    "world_size": world}
        acc = write_eval_outputs(res, out, bench.name, cfg.split, bench.type_groups,
                                 submission=cfg.split == "test", settings=settings)
        title = result_title(bench.name, cfg.split, res, cfg.data.max_seq_len)
        print(format_table(acc, title) if acc else title + " (no answers: nothing to score)")
        if res.skipped:
            print(f"{len(res.skipped)} questions were skipped (--skip_missing); their ids are in "
                  f"{out / names['skipped']}")
    dist.barrier()
    dist.cleanup()
    return acc
