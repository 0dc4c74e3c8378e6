"""Generation-based evaluation (MVBench, MSR-VTT, VATEX): every item's answer is generated greedily
under its benchmark's protocol (text/protocols.py) and read from the decoded text.

  items     each record's prompt `[BOS] enc(P1) VIDEO×T enc(P2)` and fitted video [T, 768], all built and
            checked before the model loads; a record without features is an error naming it (or, with
            skip_missing, left out and counted)
  batches   items sorted by prompt length, cut into batches of `batch_size`; step s runs batch
            s * world + rank on each rank. The batches do not depend on the number of processes, so N
            processes give exactly the outputs of one, and every item is generated once
  decoding  `greedy_generate` from a KV cache (kv_cache=False: recomputing the whole sequence per token,
            the reference); the memory projection per the protocol or the flags. A token picked from
            scores that are not finite is an error naming the item, never an answer
  outputs   after every step the ranks gather its answers and rank 0 appends them to the predictions
            file (a failure late in a run loses nothing already generated); at the end rank 0 rewrites
            it in item order and writes the metric file, each atomically:
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
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from tqdm import tqdm

from dataloader import benchmarks
from dataloader.base import fit_frames
from llama.adapter import TOPA
from llama.memory import project_to_memory
from llama.build import load_tokenizer_for, load_topa, resolve_dtype
from llama.memory import load_memory
from llama.generation import greedy_generate
from text.protocols import (LETTERS, GenProtocol, generated_text, letter_ids, masked_ids, predicted_letter,
                             prompt_ids, published_correct)
from text.tokenizer import Tokenizer
from util import dist
from util.errors import CheckpointError, DataError, InputError, one_line
from util.files import write_text_atomic

from .caption_metrics import METRICS, check_tools, coco_caption_metrics
from .config import EvalConfig, config_dict
from .evaluation import prepare_output_dir


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


def generate_batch(model: TOPA, tok: Tokenizer, its: List[GenItem], protocol: GenProtocol, *, device,
                   memory=None, masked=(), letters=None, kv_cache: bool = True) -> Tuple[List[dict], Optional[InputError]]:
    """The answers of one batch (see `generate`), and an error naming the first item one of whose
    tokens was picked from scores that are not finite (that item gets no answer)."""
    video = torch.stack([it.video for it in its]).to(device)
    if memory is not None:
        video = project_to_memory(video, memory)
    first, bad = [], []

    def observe(t, logits):  # [B, vocab] after masking
        bad.append((~torch.isfinite(logits).all(-1)).cpu())
        if t == 0 and letters:
            first.append(logits[:, letters].float().cpu())

    ids = greedy_generate(model, [it.prompt for it in its], video, max_new_tokens=protocol.max_new_tokens,
                          eos_id=tok.eos_id, masked_ids=masked, use_cache=kv_cache, observe=observe)
    rows, error = [], None
    for b, (it, gen) in enumerate(zip(its, ids)):
        picked = min(len(gen) + 1, len(bad))  # the steps whose pick this row took (an EOS step too)
        if any(bool(bad[t][b]) for t in range(picked)):
            error = error or CheckpointError(
                f"{it.record.source}: item {it.record.key}: the model's next-token scores are not finite (its "
                "output overflowed or is NaN), so it has no answer; check the checkpoint's tensors, or run "
                "with --precision fp32")
            continue
        after, text = generated_text(tok, it.prompt, gen, protocol.marker)
        o = {"index": it.index, "ids": gen, "after": after, "answer": protocol.cut(after), "text": text}
        if letters:
            o["letter"] = LETTERS[int(first[0][b, :len(it.record.candidates)].argmax())]
        rows.append(o)
    return rows, error


@torch.no_grad()
def generate(model: TOPA, tok: Tokenizer, items: List[GenItem], protocol: GenProtocol, *, batch_size: int,
             device, memory: Optional[torch.Tensor] = None, kv_cache: bool = True,
             letter_constrained: bool = False, progress: bool = True, desc: str = "generate",
             stream: Optional[Callable[[List[dict]], None]] = None) -> List[dict]:
    """Generate every item once over the ranks; every rank returns every answer, in item order. Per
    item: `index`, `ids` (generated, EOS left out), `after` (the decoded text after the marker),
    `answer` (the protocol's cut of it), `text` (the generated text as it reads in context) and, with
    `letter_constrained`, `letter` (argmax of the first step over the item's valid letters).

    After every step the ranks gather that step's answers; `stream` (rank 0) gets them as they arrive.
    An error in any rank's batch stops every rank with it once the step's good answers are streamed."""
    model.eval()
    masked = masked_ids(tok, warn=print if dist.is_main() else (lambda s: None)) if protocol.mask else []
    letters = letter_ids(tok, max(len(it.record.candidates) for it in items)) if letter_constrained and items else None
    batches = plan_batches(items, batch_size)
    world, rank = dist.world_size(), dist.rank()
    out: List[dict] = []
    for s in tqdm(range(math.ceil(len(batches) / world)), desc=desc, disable=not (progress and dist.is_main()),
                  dynamic_ncols=True):
        rows, error = [], None
        if s * world + rank < len(batches):
            its = [items[i] for i in batches[s * world + rank]]
            rows, error = generate_batch(model, tok, its, protocol, device=device, memory=memory, masked=masked,
                                         letters=letters, kv_cache=kv_cache)
        step = dist.gather_objects((rows, None if error is None else (type(error), one_line(error))))
        for step_rows, _ in step:
            out.extend(step_rows)
            if stream is not None and dist.is_main():
                stream(step_rows)
        errors = [e for _, e in step if e is not None]
        if errors:
            cls, msg = errors[0]
            raise cls(msg + (f" ({len(out)} items generated before it are in the predictions file)" if out else ""))
    out.sort(key=lambda o: o["index"])
    if [o["index"] for o in out] != list(range(len(items))):
        raise RuntimeError(f"generation gathered {len(out)} answers for {len(items)} items")
    return out


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


def jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in rows)


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

def output_names(name: str, split: str, metric: str) -> dict:
    return {"predictions": f"predictions_{name}_{split}.jsonl",
            "result": f"{'accuracy' if metric == 'choice' else 'metrics'}_{name}_{split}.json"}


def write_outputs(out_dir, bench, split: str, items, outs, settings: dict, skipped: List[str],
                  letter_constrained: bool = False, spice: bool = False) -> dict:
    """The predictions (item order) and the metric file (rank 0); prints the table. Returns the
    accuracy / metrics dict."""
    out, metric = Path(out_dir), bench.protocol.metric
    names = output_names(bench.name, split, metric)
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
        write_text_atomic(json.dumps(result, indent=2, allow_nan=False) + "\n", out / names["result"])
        title += f"; published check: {bare} answers are no valid letter ({bare_ok} of them counted correct)"
        print(mvbench_table(acc, title) if acc else title)
        return acc
    metrics = coco_caption_metrics({it.record.key: it.record.refs for it in items},
                                   {p["video"]: p["caption"] for p in preds}, spice=spice) if items else {}
    write_text_atomic(json.dumps({"metrics": metrics, **record}, indent=2, allow_nan=False) + "\n",
                      out / names["result"])
    print(caption_table(metrics, title))
    return metrics


def run(cfg: EvalConfig) -> Optional[dict]:
    """eval.py for a generation benchmark: check the caption tools, the output folder, the tokenizer,
    the items and their features and the memory before the model loads; generate every item once over
    the ranks (streaming the predictions); on rank 0 write the outputs and print the table."""
    bench = benchmarks.get(cfg.data.dataset)
    protocol, gen = bench.protocol, cfg.generation
    if protocol.metric == "caption":
        check_tools(gen.spice)  # before hours of generation, not after
    rank, world, device = dist.init_distributed(cfg.run.device)
    out = prepare_output_dir(cfg.run.output_dir) if dist.is_main() else Path(cfg.run.output_dir)
    tok = load_tokenizer_for(cfg.model)
    records = bench.read(cfg.data.data_root, cfg.split, False)
    items, skipped = make_items(records, bench.features(cfg.data.data_root), tok, protocol, cfg.model.max_feats,
                                skip_missing=cfg.data.skip_missing, what=f"{bench.title} {cfg.split}")
    use_memory = cfg.use_memory
    memory = load_memory(cfg.data.memory_file) if use_memory else None
    dtype = resolve_dtype(cfg.model.precision, device)
    model, _, _ = load_topa(cfg.model, device, dtype, tokenizer=tok, resume=cfg.resume)
    if cfg.resume is None and dist.is_main():
        print("warning: no --resume checkpoint: generating with freshly initialised TOPA parameters", file=sys.stderr)
    memory = memory.to(device) if memory is not None else None
    names = output_names(bench.name, cfg.split, protocol.metric)
    stream_file = None
    if dist.is_main():  # a previous run's result must not sit beside this run's streamed predictions
        (out / names["result"]).unlink(missing_ok=True)
        stream_file = open(out / names["predictions"], "w", encoding="utf-8")

    def stream(rows):
        stream_file.write(jsonl(prediction_row(items[o["index"]], o, protocol.metric, gen.letter_constrained)
                                for o in rows))
        stream_file.flush()

    try:
        outs = generate(model, tok, items, protocol, batch_size=cfg.data.batch_size, device=device, memory=memory,
                        kv_cache=gen.kv_cache, letter_constrained=gen.letter_constrained,
                        desc=f"{bench.name}/{cfg.split}", stream=stream if stream_file else None)
    finally:
        if stream_file is not None:
            stream_file.close()
    result = None
    if dist.is_main():
        settings = {"config": config_dict(cfg), "checkpoint": str(Path(cfg.resume).resolve()) if cfg.resume else None,
                    "memory": use_memory, "max_new_tokens": protocol.max_new_tokens,
                    "masked_ids": masked_ids(tok, warn=lambda s: None) if protocol.mask else [],
                    "world_size": world}
        result = write_outputs(out, bench, cfg.split, items, outs, settings, skipped,
                               letter_constrained=gen.letter_constrained, spice=gen.spice)
    dist.barrier()
    dist.cleanup()
    return result
