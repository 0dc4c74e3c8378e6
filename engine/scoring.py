"""Multiple-choice scoring (NExT-QA, STAR, TVQA, EgoSchema): every option of a question is scored by the
mean NLL of its scored span (the inference core, engine/infer.py) and the prediction is the argmin.
With `packed` scoring (default) each question's shared prefix runs once; `full` runs each option's
whole sequence (same scores). A score that is not finite is an error naming the question, never a
prediction.

`ScoringTask` is what the run shell (engine/evaluation.py) runs for eval.py; `evaluate` is the same scoring
for training's per-epoch evaluation (no stream, no run of its own).
"""
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import torch
from torch.utils.data import DataLoader

from dataloader import benchmarks
from dataloader.packing import Batch, ScoringCollate
from llama.adapter import TOPA
from text.prompts import PromptBuilder
from util.errors import InputError, NonFiniteError
from util.files import write_text_atomic

from . import infer
from .config import EvalConfig
from .evaluation import StepRows, gather_steps, jsonl, my_batches, output_names


def prediction_rows(batch: Batch, scores: List[infer.Scored]) -> StepRows:
    """A prediction for every item of the batch whose scores are all finite, and an error naming the
    first question whose scores are not (such a question never gets a prediction)."""
    rows, error = [], None
    for it, s in zip(batch.items, scores):
        r, sc = it.record, s.nll
        if not s.finite:
            error = error or NonFiniteError(
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


def plan_batches(n: int, batch_size: int) -> List[List[int]]:
    """Questions in dataset order, `batch_size` a batch: the same for any number of processes."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def score_steps(model: TOPA, dataset, batches: List[List[int]], *, device, memory=None, scoring: str = "packed",
                num_workers: int = 0) -> Iterator[StepRows]:
    """(rows, error) of each of `batches` in turn. An input error while a batch is read (a feature row
    read by a DataLoader worker) is that step's error, and the last step."""
    loader = iter(DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                             collate_fn=ScoringCollate(scoring)))
    while True:
        try:
            batch = next(loader, None)
            if batch is None:
                return
            batch.to(device)
            yield prediction_rows(batch, infer.score(model, batch, memory))
        except InputError as e:
            yield [], e
            return


@dataclass
class EvalResult:
    predictions: List[dict]   # in dataset order
    n_too_long: int           # prompts longer than max_seq_len (scored whole)
    n_cut: int = 0            # prompts whose TVQA dialogue was cut (--truncate_dialogue)
    skipped: List[str] = field(default_factory=list)  # ids of questions dropped (--skip_missing)

    @classmethod
    def of(cls, predictions: List[dict], dataset, max_seq_len: Optional[int]) -> "EvalResult":
        too_long = sum(bool(max_seq_len and p["length"] > max_seq_len) for p in predictions)
        return cls(predictions, too_long, sum(p["cut"] for p in predictions), list(getattr(dataset, "skipped", [])))


@torch.no_grad()
def evaluate(model: TOPA, dataset, *, batch_size: int, device, memory=None, scoring: str = "packed",
             max_seq_len: Optional[int] = None, num_workers: int = 0, progress: bool = True,
             desc: str = "eval") -> EvalResult:
    """Score `dataset` (an MCQADataset) over the ranks as eval.py does (engine/evaluation.py), without a
    predictions stream; every rank returns every prediction. Prompts longer than `max_seq_len` are
    scored whole (never cut) and counted."""
    model.eval()
    batches, n_steps = my_batches(plan_batches(len(dataset), batch_size))
    steps = score_steps(model, dataset, batches, device=device, memory=memory, scoring=scoring,
                        num_workers=num_workers)
    preds = gather_steps(steps, n_steps, len(dataset), desc=desc, progress=progress)
    return EvalResult.of(preds, dataset, max_seq_len)


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
                       submission: bool = False, settings: Optional[dict] = None) -> dict:
    """predictions_<ds>_<split>.jsonl (dataset order), accuracy_<ds>_<split>.json (with the skipped
    questions and `settings`, the run's), skipped_<ds>_<split>.txt (their ids, one a line) when some were
    skipped, and a submission file for test sets; each written atomically. Call on rank 0 only. Returns
    the accuracy dict."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(dataset_name, split)
    preds = result.predictions
    write_text_atomic(jsonl(map(public, preds)), out / names["predictions"])
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




class ScoringTask:
    """eval.py on a multiple-choice benchmark, as the run shell runs it (engine/evaluation.py)."""
    done = "questions scored"

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg

    def check(self):
        pass

    def items(self, run):
        """The benchmark's MCQADataset: annotations read and checked against the features."""
        cfg = self.cfg
        return benchmarks.build_mcqa_dataset(run.bench.name, cfg.data.data_root, cfg.split,
                                             PromptBuilder(run.tok, cfg.model.max_feats),
                                             skip_missing=cfg.data.skip_missing, sub=cfg.data.sub,
                                             dialogue_max_len=cfg.data.dialogue_max_len(run.bench.name))

    def batches(self, dataset) -> List[List[int]]:
        return plan_batches(len(dataset), self.cfg.data.batch_size)

    def steps(self, run, model, memory, dataset, batches) -> Iterator[StepRows]:
        return score_steps(model, dataset, batches, device=run.device, memory=memory, scoring=self.cfg.scoring,
                           num_workers=self.cfg.data.num_workers)

    def row(self, dataset, row: dict) -> dict:
        return public(row)

    def finish(self, run, dataset, rows: List[dict]) -> dict:
        """The output files and the accuracy table (rank 0); returns the accuracy dict."""
        cfg, bench = self.cfg, run.bench
        res = EvalResult.of(rows, dataset, cfg.data.max_seq_len)
        acc = write_eval_outputs(res, run.out, bench.name, cfg.split, bench.type_groups,
                                 submission=cfg.split == "test", settings=run.settings())
        title = result_title(bench.name, cfg.split, res, cfg.data.max_seq_len)
        print(format_table(acc, title) if acc else title + " (no answers: nothing to score)")
        if res.skipped:
            print(f"{len(res.skipped)} questions were skipped (--skip_missing); their ids are in "
                  f"{run.out / output_names(bench.name, cfg.split)['skipped']}")
        return acc
