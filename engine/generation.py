"""Generation-based evaluation (MVBench, MSR-VTT, VATEX): every item's answer is generated greedily
under its benchmark's protocol (text/protocols.py) and read from the decoded text.

  items     each record's prompt `[BOS] enc(P1) VIDEO×T enc(P2)` and fitted video [T, 768], all built and
            checked before the model loads; a record without features is an error naming it (or, with
            skip_missing, left out and counted)
  batches   items sorted by prompt length, cut into batches of `batch_size` (the run shell, engine/evaluation.py,
            runs them over the processes: N processes give exactly the outputs of one)
  decoding  the inference core (engine/infer.py: `greedy_generate` from a KV cache; kv_cache=False:
            recomputing the whole sequence per token, the reference); the memory projection per the
            protocol or the flags. A token picked from scores that are not finite is an error naming the
            item, never an answer
  outputs   streamed per step by the run shell; at the end rank 0 rewrites the predictions in item
            order and writes the metric file, each atomically:
            MVBench   predictions_mvbench_<split>.jsonl (task, index, video, answer = gold letter, text =
                      decoded answer text, prediction = letter or null, correct) and
                      accuracy_mvbench_<split>.json (per task and Avg = all correct / all questions,
                      answers that are no valid letter counted)
            captions  predictions_<ds>_<split>.jsonl (video, caption, text = raw generated text) and
                      metrics_<ds>_<split>.json (COCO caption metrics, engine/caption_metrics.py)

MVBench's `correct` is the published check (text/protocols.py), which also accepts an answer that
is no letter at all (a bare "("): `prediction` is then null and the table counts such answers. With
letter_constrained, each item is also answered by the argmax of the first generated position's
logits over the item's valid letters (`prediction_constrained`, always a letter), reported beside it.
"""
import json
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import torch

from dataloader import benchmarks
from dataloader.base import fit_frames
from llama.adapter import TOPA
from text.protocols import (LETTERS, GenProtocol, letter_ids, masked_ids, predicted_letter, prompt_ids,
                            published_correct)
from text.tokenizer import Tokenizer
from util import dist
from util.errors import DataError, NonFiniteError
from util.files import write_text_atomic

from . import infer
from .caption_metrics import METRICS, check_tools, coco_caption_metrics
from .config import EvalConfig
from .evaluation import StepRows, gather_steps, jsonl, my_batches, output_names


@dataclass
class GenItem:
    index: int
    record: object            # MVBenchRecord or CaptionRecord (a feature `key`, `prompt_fields()`, `source`)
    prompt: List[int]         # [BOS] enc(P1) VIDEO×T enc(P2)
    video: torch.Tensor       # [T, 768], rows L2-normalised


def make_items(records, features, tok: Tokenizer, protocol: GenProtocol, T: int, *, skip_missing: bool = False,
               what: str = "") -> Tuple[List[GenItem], List[str]]:
    """Items of every record whose video has features; (items, keys of the records left out). A record
    without features (or with zero rows) is a DataError naming it unless `skip_missing`."""
    bad = [r for r in records if r.key not in features or features.n_rows(r.key) == 0]
    if bad:
        names = ", ".join(f"{r.key} ({r.source})" for r in bad[:3]) + (", ..." if len(bad) > 3 else "")
        msg = f"{what}: {len(bad)} of {len(records)} items have no features in {features.where}: {names}"
        if not skip_missing:
            raise DataError(msg + " (--skip_missing leaves them out and counts them)")
        if dist.is_main():
            print(f"warning: {msg}; left out", file=sys.stderr, flush=True)
    skipped = {r.key for r in bad}
    kept = [r for r in records if r.key not in skipped]
    items = [GenItem(i, r, prompt_ids(tok, protocol.p1, protocol.p2_text(**r.prompt_fields()), T),
                     fit_frames(features(r.key), T)) for i, r in enumerate(kept)]
    return items, [r.key for r in bad]


def plan_batches(items: List[GenItem], batch_size: int) -> List[List[int]]:
    """Item indices sorted by prompt length (ties by index), in batches: the same for any world size."""
    order = sorted(range(len(items)), key=lambda i: (len(items[i].prompt), i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def generate_batch(model: TOPA, tok: Tokenizer, its: List[GenItem], protocol: GenProtocol, decoding: infer.Decoding,
                   memory=None) -> StepRows:
    """The answers of one batch (see `generate`), and an error naming the first item one of whose
    tokens was picked from scores that are not finite (that item gets no answer)."""
    prompts = [infer.Prompt(it.prompt, it.video, len(it.record.candidates) if decoding.letters else 0) for it in its]
    rows, error = [], None
    for it, g in zip(its, infer.generate(model, tok, prompts, decoding, memory)):
        if not g.finite:
            error = error or NonFiniteError(
                f"{it.record.source}: item {it.record.key}: the model's next-token scores are not finite (its "
                "output overflowed or is NaN), so it has no answer; check the checkpoint's tensors, or run "
                "with --precision fp32")
            continue
        o = {"index": it.index, "ids": g.ids, "after": g.after, "answer": protocol.cut(g.after), "text": g.text}
        if decoding.letters:
            o["letter"] = LETTERS[g.letter]
        rows.append(o)
    return rows, error


def generate_steps(model: TOPA, tok: Tokenizer, items: List[GenItem], batches: List[List[int]], protocol: GenProtocol,
                   *, memory=None, masked=(), letters=None, kv_cache: bool = True) -> Iterator[StepRows]:
    """(answers, error) of each of `batches` (lists of item indices) in turn (see `generate_batch`)."""
    decoding = infer.Decoding(protocol.max_new_tokens, protocol.marker, tuple(masked), tuple(letters or ()),
                              kv_cache=kv_cache)
    for b in batches:
        yield generate_batch(model, tok, [items[i] for i in b], protocol, decoding, memory)


def decoding_ids(tok: Tokenizer, items: List[GenItem], protocol: GenProtocol, letter_constrained: bool,
                 warn=lambda s: None) -> Tuple[List[int], Optional[List[int]]]:
    """The ids the protocol masks out, and (letter_constrained) the ids of the valid letters."""
    masked = masked_ids(tok, warn=warn) if protocol.mask else []
    if not (letter_constrained and items):
        return masked, None
    return masked, letter_ids(tok, max(len(it.record.candidates) for it in items))


@torch.no_grad()
def generate(model: TOPA, tok: Tokenizer, items: List[GenItem], protocol: GenProtocol, *, batch_size: int,
             memory: Optional[torch.Tensor] = None, kv_cache: bool = True,
             letter_constrained: bool = False, progress: bool = True, desc: str = "generate") -> List[dict]:
    """Generate every item once over the ranks as eval.py does (engine/evaluation.py), without a predictions
    stream; every rank returns every answer, in item order. Per item: `index`, `ids` (generated, EOS left
    out), `after` (the decoded text after the marker), `answer` (the protocol's cut of it), `text` (the
    generated text as it reads in context) and, with `letter_constrained`, `letter` (argmax of the first
    step over the item's valid letters). The model's device runs it."""
    model.eval()
    masked, letters = decoding_ids(tok, items, protocol, letter_constrained,
                                   warn=print if dist.is_main() else (lambda s: None))
    batches, n_steps = my_batches(plan_batches(items, batch_size))
    steps = generate_steps(model, tok, items, batches, protocol, memory=memory, masked=masked, letters=letters,
                           kv_cache=kv_cache)
    return gather_steps(steps, n_steps, len(items), desc=desc, progress=progress)


# ---- what the predictions file holds per item ----

def prediction_row(item: GenItem, o: dict, metric: str, letter_constrained: bool = False) -> dict:
    r = item.record
    if metric == "caption":
        return {"video": r.key, "caption": o["answer"], "text": o["text"]}
    p = {"task": r.task, "index": r.index, "video": r.video, "answer": r.gold, "text": o["answer"],
         "prediction": predicted_letter(o["answer"], len(r.candidates)),
         "correct": published_correct(o["answer"], r.gold)}
    if letter_constrained:
        p["prediction_constrained"] = o["letter"]
        p["correct_constrained"] = o["letter"] == r.gold
    return p


# ---- MVBench: accuracy by the published check ----

def mvbench_accuracy(preds: List[dict]) -> "OrderedDict[str, dict]":
    """{task: {correct, total, acc, not_a_letter[, correct_constrained, acc_constrained]}} in the order
    tasks first appear, then "Avg" over all questions (all correct / all questions)."""
    rows, avg = OrderedDict(), {"correct": 0, "total": 0, "not_a_letter": 0}
    for p in preds:
        for row in (rows.setdefault(p["task"], {"correct": 0, "total": 0, "not_a_letter": 0}), avg):
            row["correct"] += int(p["correct"])
            row["total"] += 1
            row["not_a_letter"] += int(p["prediction"] is None)
            if "correct_constrained" in p:
                row["correct_constrained"] = row.get("correct_constrained", 0) + int(p["correct_constrained"])
    if preds:
        rows["Avg"] = avg
    for row in rows.values():
        row["acc"] = 100.0 * row["correct"] / row["total"]
        if "correct_constrained" in row:
            row["acc_constrained"] = 100.0 * row["correct_constrained"] / row["total"]
    return rows


def mvbench_table(acc, title: str) -> str:
    constrained = "Avg" in acc and "acc_constrained" in acc["Avg"]
    head = f"{'task':<26} {'acc %':>7} {'correct':>8} {'total':>6} {'no letter':>9}"
    lines = [title, head + (f" {'letters-only %':>14}" if constrained else "")]
    for task, r in acc.items():
        line = f"{task:<26} {r['acc']:7.2f} {r['correct']:8d} {r['total']:6d} {r['not_a_letter']:9d}"
        lines.append(line + (f" {r['acc_constrained']:14.2f}" if constrained else ""))
    return "\n".join(lines)


def caption_table(metrics: dict, title: str) -> str:
    names = [m for m in METRICS + ("SPICE",) if m in metrics]
    return "\n".join([title + " (x 100, as papers print them)"] +
                     [f"{m:<8} {100 * metrics[m]:7.2f}" for m in names])


# ---- the run ----

def write_outputs(out_dir, bench, split: str, items, outs, settings: dict, skipped: List[str],
                  letter_constrained: bool = False, spice: bool = False) -> dict:
    """The predictions (item order) and the metric file (rank 0); prints the table. Returns the
    accuracy / metrics dict."""
    out, metric = Path(out_dir), bench.protocol.metric
    names = output_names(bench.name, split)
    preds = [prediction_row(it, o, metric, letter_constrained) for it, o in zip(items, outs)]
    write_text_atomic(jsonl(preds), out / names["predictions"])
    title = f"{bench.title} {split}: {len(items)} {'questions' if metric == 'choice' else 'videos'}"
    if skipped:
        title += f" ({len(skipped)} without features left out)"
    record = {"n_items": len(items), "n_skipped": len(skipped), "skipped": skipped, "settings": settings}
    if metric == "choice":
        acc = mvbench_accuracy(preds)
        bare = sum(p["prediction"] is None for p in preds)
        bare_ok = sum(p["prediction"] is None and p["correct"] for p in preds)
        result = {"accuracy": acc, "n_not_a_letter": bare, "n_not_a_letter_counted_correct": bare_ok, **record}
        write_text_atomic(json.dumps(result, indent=2, allow_nan=False) + "\n", out / names["accuracy"])
        title += f"; published check: {bare} answers are no valid letter ({bare_ok} of them counted correct)"
        print(mvbench_table(acc, title) if acc else title)
        return acc
    metrics = coco_caption_metrics({it.record.key: it.record.refs for it in items},
                                   {p["video"]: p["caption"] for p in preds}, spice=spice) if items else {}
    write_text_atomic(json.dumps({"metrics": metrics, **record}, indent=2, allow_nan=False) + "\n",
                      out / names["metrics"])
    print(caption_table(metrics, title))
    return metrics


class GenerationTask:
    """eval.py on a generation benchmark, as the run shell runs it (engine/evaluation.py)."""
    done = "items generated"

    def __init__(self, cfg: EvalConfig):
        self.cfg, self.gen = cfg, cfg.generation
        self.protocol = benchmarks.get(cfg.data.dataset).protocol
        self.skipped: List[str] = []

    def check(self):
        if self.protocol.metric == "caption":
            check_tools(self.gen.spice)  # before hours of generation, not after

    def items(self, run) -> List[GenItem]:
        """Every record's prompt and fitted video, checked against the features."""
        cfg = self.cfg
        records = run.bench.read(cfg.data.data_root, cfg.split, False)
        items, self.skipped = make_items(records, run.bench.features(cfg.data.data_root), run.tok, self.protocol,
                                         cfg.model.max_feats, skip_missing=cfg.data.skip_missing,
                                         what=f"{run.bench.title} {cfg.split}")
        return items

    def batches(self, items: List[GenItem]) -> List[List[int]]:
        return plan_batches(items, self.cfg.data.batch_size)

    def steps(self, run, model, memory, items, batches) -> Iterator[StepRows]:
        self.masked, letters = decoding_ids(run.tok, items, self.protocol, self.gen.letter_constrained,
                                            warn=print if dist.is_main() else (lambda s: None))
        return generate_steps(model, run.tok, items, batches, self.protocol, memory=memory, masked=self.masked,
                              letters=letters, kv_cache=self.gen.kv_cache)

    def row(self, items, o: dict) -> dict:
        return prediction_row(items[o["index"]], o, self.protocol.metric, self.gen.letter_constrained)

    def finish(self, run, items, rows: List[dict]) -> dict:
        """The output files and the table (rank 0); returns the accuracy / metrics dict."""
        settings = run.settings(memory=self.cfg.use_memory, max_new_tokens=self.protocol.max_new_tokens,
                                masked_ids=self.masked)
        return write_outputs(run.out, run.bench, self.cfg.split, items, rows, settings, self.skipped,
                             letter_constrained=self.gen.letter_constrained, spice=self.gen.spice)
