"""Multiple-choice evaluation: every option of a question is scored by the mean NLL of its scored span
and the prediction is the argmin. With `packed` scoring (default) each question's shared prefix runs
once; `full` runs each option's whole sequence (same scores). Each question is scored on exactly one
rank; every rank gathers all predictions."""
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dataloader import benchmarks
from dataloader.packing import Batch, ScoringCollate
from llama.adapter import TOPA, project_to_memory
from llama.build import load_topa, resolve_dtype
from llama.checkpoint import load_memory
from llama.prompts import PromptBuilder
from util import dist

from .config import EvalConfig


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


@torch.no_grad()
def evaluate(model: TOPA, dataset, *, batch_size: int, device, memory=None, scoring: str = "packed",
             max_seq_len: Optional[int] = None, num_workers: int = 0, progress: bool = True,
             desc: str = "eval") -> EvalResult:
    """Score `dataset` (an MCQADataset) on this rank's shard and gather on every rank. Prompts longer
    than `max_seq_len` are scored whole (never cut) and counted."""
    model.eval()
    part = Subset(dataset, shard_indices(len(dataset), dist.rank(), dist.world_size()))
    loader = DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=ScoringCollate(scoring))
    preds, too_long, n_cut = [], 0, 0
    bar = tqdm(loader, desc=desc, disable=not (progress and dist.is_main()), dynamic_ncols=True)
    for batch in bar:
        batch.to(device)
        for it, scores in zip(batch.items, score_batch(model, batch, memory)):
            r = it.record
            longest = max(len(s) for s in it.seqs)
            too_long += bool(max_seq_len and longest > max_seq_len)
            n_cut += any(s.n_cut for s in it.seqs)
            pred = min(range(len(scores)), key=scores.__getitem__)
            preds.append({"index": it.index, "video": r.vid, "qid": r.qid, "type": r.qtype,
                          "answer": r.answer, "prediction": pred, "scores": scores, "length": longest})
    gathered = [p for part_preds in dist.gather_objects(preds) for p in part_preds]
    gathered.sort(key=lambda p: p["index"])
    seen = [p["index"] for p in gathered]
    if seen != list(range(len(dataset))):
        raise RuntimeError(f"evaluation gathered {len(seen)} predictions for {len(dataset)} questions")
    return EvalResult(gathered, sum(dist.gather_objects(too_long)), sum(dist.gather_objects(n_cut)))


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


def write_eval_outputs(result: EvalResult, output_dir, dataset_name: str, split: str, type_groups=None,
                       submission: bool = False) -> dict:
    """predictions_<ds>_<split>.jsonl, accuracy_<ds>_<split>.json (and a submission file for test sets).
    Call on rank 0 only. Returns the accuracy dict."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds = result.predictions
    with open(out / f"predictions_{dataset_name}_{split}.jsonl", "w") as f:
        for p in preds:
            f.write(json.dumps({k: v for k, v in p.items() if k != "index"}) + "\n")
    acc = accuracy(preds, type_groups)
    with open(out / f"accuracy_{dataset_name}_{split}.json", "w") as f:
        json.dump({"accuracy": acc, "n_questions": len(preds), "n_longer_than_max_seq_len": result.n_too_long,
                   "n_dialogue_cut": result.n_cut}, f, indent=2)
    if submission:
        with open(out / f"submission_{dataset_name}_{split}.json", "w") as f:
            json.dump({p["qid"]: p["prediction"] for p in preds}, f)
    return acc


def result_title(name: str, split: str, result: EvalResult, max_seq_len: int) -> str:
    title = f"{name} {split}: {len(result.predictions)} questions"
    if result.n_too_long:
        title += f" ({result.n_too_long} longer than max_seq_len={max_seq_len}, scored whole)"
    if result.n_cut:
        title += f" ({result.n_cut} with dialogue cut to fit max_seq_len={max_seq_len})"
    return title


def run(cfg: EvalConfig) -> Optional[dict]:
    """eval.py: load the model and the benchmark split, score every question once over the ranks, and
    on rank 0 write the outputs and print the accuracy table. Returns the accuracy dict (rank 0)."""
    rank, world, device = dist.init_distributed(cfg.run.device)
    torch.manual_seed(cfg.run.seed)
    dtype = resolve_dtype(cfg.model.precision, device)
    model, tok, _ = load_topa(cfg.model, device, dtype, resume=cfg.resume)
    if cfg.resume is None and dist.is_main():
        print("warning: no --resume checkpoint: evaluating freshly initialised TOPA parameters")
    memory = load_memory(cfg.data.memory_file).to(device) if cfg.data.memory else None
    bench = benchmarks.get(cfg.data.dataset)
    builder = PromptBuilder(tok, model.args.max_feats)
    ds = benchmarks.build_mcqa_dataset(bench.name, cfg.data.data_root, cfg.split, builder,
                                       skip_missing=cfg.data.skip_missing, sub=cfg.data.sub,
                                       dialogue_max_len=cfg.data.dialogue_max_len(bench.name))
    res = evaluate(model, ds, batch_size=cfg.data.batch_size, device=device, memory=memory, scoring=cfg.scoring,
                   max_seq_len=cfg.data.max_seq_len, num_workers=cfg.data.num_workers,
                   desc=f"{bench.name}/{cfg.split}")
    acc = None
    if dist.is_main():
        acc = write_eval_outputs(res, cfg.run.output_dir, bench.name, cfg.split, bench.type_groups,
                                 submission=cfg.split == "test")
        title = result_title(bench.name, cfg.split, res, cfg.data.max_seq_len)
        print(format_table(acc, title) if acc else title + " (no answers: nothing to score)")
    dist.barrier()
    dist.cleanup()
    return acc
