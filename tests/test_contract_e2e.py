"""eval.py end to end against an independent reading of the contract.

A tiny 3-layer Llama (Meta format, the real Llama-2 tokenizer) with a TOPA checkpoint written straight from
docs/formats.md §2 (adapters on the last 2 layers: `--adapter_layer 2`), STAR and TVQA data in the published
layouts (real TVQA question text, hand-made subtitles), and eval.py run as a user runs it. Every score in
its predictions file is compared with a reference computed here from the docs alone: the token
sequence of docs/prompts.md (segments encoded one by one), the frame fitting of docs/formats.md §6, and
the attention of docs/model.md written out in plain torch on the checkpoint's tensors. That pins,
through the command line only:

- the adapter block -> layer mapping (block i on the i-th of the last `adapter_layer` layers), against
  the hand-built mapping, with the wrong mappings shown to give other scores;
- STAR end to end ("The answer is" wording, 4 options, per-type accuracy);
- TVQA without and with `--sub` (dialogue lines by end second; last-4-token span), packed and full;
- `--truncate_dialogue`: the cut sequences' scores and the reported count;
- uneven sharding: 25 questions on 2 and 3 processes equal 1 process, each question once.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from text.tokenizer import load_tokenizer
from toyworld.tiny import make_tiny_llama

REPO = Path(__file__).resolve().parents[1]
T = 10
ADAPTER_LEN, ADAPTER_LAYER, N_LAYERS = 10, 2, 3
N_STAR, N_TVQA = 8, 25
TOL = 1e-4       # eval.py (fp32, packed rows, padded batches) vs the plain reference
SHARD_TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------- outputs of eval.py (adapt here)

def read_predictions(out_dir: Path, dataset: str, split: str = "val") -> list:
    with open(out_dir / f"predictions_{dataset}_{split}.jsonl") as f:
        return [json.loads(line) for line in f]


def read_accuracy(out_dir: Path, dataset: str, split: str = "val") -> dict:
    return json.loads((out_dir / f"accuracy_{dataset}_{split}.json").read_text())


def run_eval(root: Path, out: str, *extra, nproc: int = 0, max_seq_len: int = 128):
    args = ["--model", "tiny", "--llama_model_path", "./pretrained/llama2/", "--llama2", "--data_root", "./data",
            "--max_feats", str(T), "--adapter_len", str(ADAPTER_LEN), "--adapter_layer", str(ADAPTER_LAYER),
            "--resume", "topa.pth", "--precision", "fp32", "--device", "cpu", "--num_workers", "0",
            "--batch_size", "4", "--max_seq_len", str(max_seq_len), "--output_dir", out, *extra]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    launcher = [sys.executable]
    if nproc:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    p = subprocess.run(launcher + [str(REPO / "eval.py")] + args, cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-4000:])
    return p


# ---------------------------------------------------------------- the contract, written out

def norm_q(q: str) -> str:
    q = q.capitalize().strip()
    return q if q.endswith("?") else q + "?"


def opts_text(options) -> str:
    return "Choices: \n" + "".join(f"({'ABCDE'[i]}) {o}\n" for i, o in enumerate(options))


def star_sequence(tok, q, options, k):
    """docs/prompts.md mcqa with STAR's wording -> (tokens, video_start, span_start). VIDEO positions hold 0."""
    head = [tok.bos_id] + tok.encode("Instruction: Choose the correct answer based on the video and question.\nVideo:")
    body = tok.encode(f"Question: {norm_q(q)}\n" + opts_text(options) + f"Answer: The answer is ({'ABCD'[k]})")
    tokens = head + [0] * T + [13] + body + [tok.eos_id]
    return tokens, len(head), tokens.index(22550, len(head) + T) + 4


def tvqa_sequence(tok, q, options, k, dialogue=None, max_len=None):
    """docs/prompts.md TVQA (dialogue instruction, optional "Dialogue:" segment, last 4 tokens scored); with
    max_len, dialogue tokens are dropped from the end of their segment until the sequence fits."""
    head = [tok.bos_id] + tok.encode("Instruction: Predict the answer based on the dialogue, video and question.\n"
                                     "Video:")
    seg = [] if dialogue is None else tok.encode(f"Dialogue: {dialogue}\n")
    body = tok.encode(f"Question: {norm_q(q)}\n" + opts_text(options) + f"Answer: The correct choice is ({'ABCDE'[k]})")
    rest = len(head) + T + 1 + len(body) + 1
    if max_len is not None and rest <= max_len < rest + len(seg):
        seg = seg[:max_len - rest]
    tokens = head + [0] * T + [13] + seg + body + [tok.eos_id]
    return tokens, len(head), len(tokens) - 4


def fit(rows: torch.Tensor) -> torch.Tensor:
    """docs/formats.md §6: L2-normalise, rows floor(j*n/T) when n > T, zero rows appended when n < T."""
    rows = F.normalize(rows.float(), dim=-1)
    n = rows.shape[0]
    if n >= T:
        return rows[[math.floor(j * n / T) for j in range(T)]]
    return torch.cat([rows, torch.zeros(T - n, rows.shape[1])])


class Reference:
    """docs/model.md on Meta's tensors and the checkpoint's, in plain fp32 torch. `layer_of_block[i]` is the
    backbone layer that adapter block i (rows i*adapter_len ...) is attached to (default: the documented one, the
    i-th of the last ADAPTER_LAYER layers); `run_layers` the layers that run (default: all)."""

    def __init__(self, meta: dict, params: dict, topa: dict, layer_of_block=None, run_layers=None):
        self.w = {k: v.float() for k, v in meta.items()}
        self.t = {k: v.float() for k, v in topa.items()}
        self.H, self.Hkv = params["n_heads"], params.get("n_kv_heads", params["n_heads"])
        self.hd = params["dim"] // self.H
        self.eps, self.theta = params["norm_eps"], params.get("rope_theta", 10000.0)
        first = N_LAYERS - ADAPTER_LAYER
        mapping = list(range(first, N_LAYERS)) if layer_of_block is None else list(layer_of_block)
        self.block_of_layer = {layer: i for i, layer in enumerate(mapping)}
        self.gate_layer = list(range(first, N_LAYERS))  # a block's gates travel with it in the wrong mappings
        self.layers = list(range(N_LAYERS)) if run_layers is None else list(run_layers)

    def rms(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def rope(self, x):  # [L, h, hd]: rotate pairs (x[2k], x[2k+1]) by pos * theta^(-2k/hd)
        L = x.shape[0]
        ang = torch.arange(L, dtype=torch.float64)[:, None] * self.theta ** (
            -torch.arange(0, self.hd, 2, dtype=torch.float64) / self.hd)
        cos, sin = ang.cos().float()[:, None], ang.sin().float()[:, None]
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

    def nll(self, tokens, vs, span, video):
        w, t, H, Hkv, hd = self.w, self.t, self.H, self.Hkv, self.hd
        L, rep = len(tokens), self.H // self.Hkv
        x = w["tok_embeddings.weight"][torch.tensor(tokens)].clone()
        x[vs:vs + T] = video @ t["visual_proj.weight"].T + t["temporal_emb.weight"]
        causal = torch.full((L, L), float("-inf")).triu(1)
        text_to_video = torch.zeros(L, L, dtype=torch.bool)
        text_to_video[vs + T:, vs:vs + T] = True
        for i in self.layers:
            p = f"layers.{i}."
            xn = self.rms(x, w[p + "attention_norm.weight"])
            q = self.rope((xn @ w[p + "attention.wq.weight"].T).view(L, H, hd))
            k = self.rope((xn @ w[p + "attention.wk.weight"].T).view(L, Hkv, hd)).repeat_interleave(rep, 1)
            v = (xn @ w[p + "attention.wv.weight"].T).view(L, Hkv, hd).repeat_interleave(rep, 1)
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [H, L, hd]
            s = q @ k.transpose(1, 2) / math.sqrt(hd) + causal
            adapted = i in self.block_of_layer
            if adapted:  # gate2 on the scores of text rows after the slot for the video columns
                g2 = t[f"layers.{self.gate_layer[self.block_of_layer[i]]}.attention.gate2"]
                s = s + g2.view(H, 1, 1) * text_to_video
            out = s.softmax(-1) @ v
            if adapted:
                b = self.block_of_layer[i]
                g1 = t[f"layers.{self.gate_layer[b]}.attention.gate1"].view(H, 1, 1)
                prompt = t["adapter_query.weight"][b * ADAPTER_LEN:(b + 1) * ADAPTER_LEN]
                ka = (prompt @ w[p + "attention.wk.weight"].T).view(-1, Hkv, hd).repeat_interleave(rep, 1).transpose(0, 1)
                va = (prompt @ w[p + "attention.wv.weight"].T).view(-1, Hkv, hd).repeat_interleave(rep, 1).transpose(0, 1)
                out = out + torch.tanh(g1) * (q @ ka.transpose(1, 2) / math.sqrt(hd)).softmax(-1) @ va
            x = x + out.transpose(0, 1).reshape(L, H * hd) @ w[p + "attention.wo.weight"].T
            xn = self.rms(x, w[p + "ffn_norm.weight"])
            x = x + (F.silu(xn @ w[p + "feed_forward.w1.weight"].T) * (xn @ w[p + "feed_forward.w3.weight"].T)) \
                @ w[p + "feed_forward.w2.weight"].T
        logits = self.rms(x[span - 1:L - 1], w["norm.weight"]) @ w["output.weight"].T
        return F.cross_entropy(logits, torch.tensor(tokens[span:])).item()


# ---------------------------------------------------------------- the world

def srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def subtitle_entries(vid: str, i: int, length: int):
    """(start, end, text) of a video's hand-made subtitles: every 3 s, ends at x.999 (whole second x),
    every third one on two lines. Video index 2 has lines only after its clip."""
    t0 = 300 if i == 2 else 0
    return [(t0 + 3 * k + 0.4, t0 + 3 * k + 2.999, f"(P{k % 4}:) line {k} of {vid[:5]}" + ("\nand more" if k % 3 == 0 else ""))
            for k in range(length // 3 + 2)]


def dialogue_of(entries, ts: str):
    """docs/prompts.md D: entries whose end second (ms dropped) is in [round(s), round(e)]; NaN-NaN: all."""
    if ts != "NaN-NaN":
        a, b = (round(float(x)) for x in ts.split("-"))
        entries = [e for e in entries if a <= int(e[1]) <= b]
    return "".join(" " + text.replace("\n", " ") for _, _, text in entries) or None


@pytest.fixture(scope="module")
def world(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("contract_world")
    g = torch.Generator().manual_seed(7)
    mdir = make_tiny_llama(root / "pretrained" / "llama2", fixtures_dir / "llama2" / "tokenizer.model", dim=64,
                           n_layers=N_LAYERS, n_heads=4, n_kv_heads=2, seed=3, std=0.05)
    tok = load_tokenizer(root / "pretrained" / "llama2" / "tokenizer.model")
    params = json.loads((mdir / "params.json").read_text())
    meta = torch.load(mdir / "consolidated.00.pth", weights_only=True)
    D, H = params["dim"], params["n_heads"]
    # docs/formats.md §2 key names: the trainable tensors only, gates for every backbone layer (layers without
    # adapters carry gates too, as the original code saved them; they must take no part in the math)
    topa = {"adapter_query.weight": torch.randn(ADAPTER_LEN * ADAPTER_LAYER, D, generator=g),
            "visual_proj.weight": torch.randn(D, 768, generator=g) * 0.2,
            "temporal_emb.weight": torch.randn(T, D, generator=g) * 0.05}
    for i in range(N_LAYERS):
        topa[f"layers.{i}.attention.gate1"] = torch.randn(1, H, 1, 1, generator=g) + 1.0
        topa[f"layers.{i}.attention.gate2"] = torch.randn(1, H, 1, 1, generator=g) * 2.0
    torch.save({"model": topa, "optimizer": {}, "epoch": 0, "scaler": None,
                "args": argparse.Namespace(adapter_len=ADAPTER_LEN, adapter_layer=ADAPTER_LAYER)}, root / "topa.pth")

    # STAR: real NExT-QA question text, 4 choices listed out of order, 1 feature row per second
    import csv
    with open(fixtures_dir / "nextqa" / "val.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if len({r[f"a{i}"] for i in range(4)}) == 4][:N_STAR]
    types = ["Interaction", "Sequence", "Prediction", "Feasibility"]
    star, star_feats = [], {f"S{v}": torch.randn(25 + 7 * v, 768, generator=g) for v in range(3)}
    for i, r in enumerate(rows):
        options = [r[f"a{j}"] for j in range(4)]
        start = 0.6 + 1.7 * i
        star.append({"question_id": f"{types[i % 4]}_T{i}_{i}", "question": r["question"], "video_id": f"S{i % 3}",
                     "start": start, "end": start + 3.1 * (i % 4) + 0.2, "answer": options[(i * 3) % 4],
                     "choices": [{"choice_id": j, "choice": options[j]} for j in (2, 0, 3, 1)]})
    (root / "data" / "star").mkdir(parents=True)
    (root / "data" / "star" / "STAR_val.json").write_text(json.dumps(star))
    torch.save(star_feats, root / "data" / "star" / "clipvitl14.pth")

    # TVQA: 25 real test questions with answers added, 3 fps features, subtitles per video
    with open(fixtures_dir / "tvqa" / "tvqa_test_public.jsonl", encoding="utf-8") as f:
        tvqa = [json.loads(next(f)) for _ in range(N_TVQA)]
    tvqa[5]["ts"] = "NaN-NaN"
    vids = list(dict.fromkeys(x["vid_name"] for x in tvqa))
    length = {v: max(60 if x["ts"] == "NaN-NaN" else round(float(x["ts"].split("-")[1])) + 2
                     for x in tvqa if x["vid_name"] == v) for v in vids}
    tv_feats = {v: torch.randn(3 * length[v] + 2, 768, generator=g) for v in vids}
    subs = {v: subtitle_entries(v, vids.index(v), length[v]) for v in vids}
    d = root / "data" / "tvqa"
    (d / "tvqa_subtitles").mkdir(parents=True)
    with open(d / "tvqa_val.jsonl", "w", encoding="utf-8") as f:
        for i, x in enumerate(tvqa):
            x["answer_idx"] = (i * 2) % 5
            f.write(json.dumps(x) + "\n")
    torch.save(tv_feats, d / "clipvitl14.pth")
    for v, entries in subs.items():
        (d / "tvqa_subtitles" / f"{v}.srt").write_text("".join(
            f"{n + 1}\n{srt_time(s)} --> {srt_time(e)}\n{text}\n\n" for n, (s, e, text) in enumerate(entries)),
            encoding="utf-8")

    ref = Reference(meta, params, topa)
    return dict(cache={}, root=root, tok=tok, meta=meta, params=params, topa=topa, ref=ref, star=star, star_feats=star_feats,
                tvqa=tvqa, tv_feats=tv_feats, subs=subs)


def star_expected(w, ref=None):
    ref, tok, out = ref or w["ref"], w["tok"], []
    for x in w["star"]:
        options = [c["choice"] for c in sorted(x["choices"], key=lambda c: c["choice_id"])]
        video = fit(w["star_feats"][x["video_id"]][round(x["start"]):round(x["end"]) + 1])
        out.append([ref.nll(*star_sequence(tok, x["question"], options, k), video) for k in range(4)])
    return out


def tvqa_video(w, x):
    feats = w["tv_feats"][x["vid_name"]]
    if x["ts"] == "NaN-NaN":
        return fit(feats)
    s, e = (float(v) for v in x["ts"].split("-"))
    return fit(feats[3 * round(s):3 * (round(e) + 1)])


def tvqa_expected(w, sub: bool, max_len=None, score=True):
    """(reference scores per question or None, and per question: (length uncut, length as scored, D));
    every option of a question has the same length (the letters are one token each)."""
    key = ("tvqa", sub, max_len, score)
    if key not in w["cache"]:
        tok, scores, info = w["tok"], [], []
        for x in w["tvqa"]:
            d = dialogue_of(w["subs"][x["vid_name"]], x["ts"]) if sub else None
            options = [x[f"a{i}"] for i in range(5)]
            seqs = [tvqa_sequence(tok, x["q"], options, k, d, max_len) for k in range(5)]
            if score:
                video = tvqa_video(w, x)
                scores.append([w["ref"].nll(*s, video) for s in seqs])
            whole = len(tvqa_sequence(tok, x["q"], options, 0, d)[0])
            info.append((whole, len(seqs[0][0]), d))
        w["cache"][key] = (scores if score else None), info
    return w["cache"][key]


def max_abs_diff(a, b) -> float:
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    assert ta.shape == tb.shape
    return (ta - tb).abs().max().item()


# ---------------------------------------------------------------- runs (once per module)

@pytest.fixture(scope="module")
def star_run(world):
    p = run_eval(world["root"], "out/star", "--dataset", "star")
    return p, read_predictions(world["root"] / "out/star", "star"), read_accuracy(world["root"] / "out/star", "star")


@pytest.fixture(scope="module")
def tvqa_sub_run(world):
    p = run_eval(world["root"], "out/tvqa_sub", "--dataset", "tvqa", "--sub", max_seq_len=150)
    return p, read_predictions(world["root"] / "out/tvqa_sub", "tvqa")


# ---------------------------------------------------------------- tests

def test_adapter_blocks_sit_on_the_last_layers_in_order(world, star_run):
    """3 layers, --adapter_layer 2: block 0 -> layer 1, block 1 -> layer 2, layer 0 runs without an
    adapter. eval.py's scores equal that hand-built mapping and none of the wrong ones."""
    _, preds, _ = star_run
    got = [r["scores"] for r in preds]
    right = star_expected(world)
    assert max_abs_diff(got, right) < TOL
    wrong = {"first layers (block i -> layer i)": Reference(world["meta"], world["params"], world["topa"], [0, 1]),
             "blocks reversed": Reference(world["meta"], world["params"], world["topa"], [2, 1]),
             "unadapted layer skipped": Reference(world["meta"], world["params"], world["topa"], run_layers=[1, 2])}
    for what, ref in wrong.items():
        assert max_abs_diff(got, star_expected(world, ref)) > 20 * TOL, what


def test_star_end_to_end(world, star_run):
    p, preds, acc = star_run
    assert [r["qid"] for r in preds] == [x["question_id"] for x in world["star"]]
    types = ["Interaction", "Sequence", "Prediction", "Feasibility"]
    for i, (r, x) in enumerate(zip(preds, world["star"])):
        assert len(r["scores"]) == 4 and r["prediction"] == min(range(4), key=r["scores"].__getitem__)
        assert r["answer"] == (i * 3) % 4 and r["type"] == types[i % 4]   # the answer text's choice_id
    assert max_abs_diff([r["scores"] for r in preds], star_expected(world)) < TOL
    a = acc["accuracy"]
    assert a["total"]["total"] == N_STAR and a["total"]["correct"] == sum(r["prediction"] == r["answer"] for r in preds)
    for t in types:
        mine = [r for r in preds if r["type"] == t]
        assert (a[t]["total"], a[t]["correct"]) == (len(mine), sum(r["prediction"] == r["answer"] for r in mine))
    assert "total" in p.stdout


def test_tvqa_without_subtitles_end_to_end(world):
    out = world["root"] / "out/tvqa"
    run_eval(world["root"], "out/tvqa", "--dataset", "tvqa", max_seq_len=150)
    preds = read_predictions(out, "tvqa")
    assert [r["qid"] for r in preds] == [str(x["qid"]) for x in world["tvqa"]]
    assert [r["answer"] for r in preds] == [(i * 2) % 5 for i in range(N_TVQA)]
    expected, _ = tvqa_expected(world, sub=False)
    assert max_abs_diff([r["scores"] for r in preds], expected) < TOL
    assert read_accuracy(out, "tvqa")["accuracy"]["total"]["total"] == N_TVQA


def test_tvqa_sub_scores_are_the_spec_sequence(world, tvqa_sub_run):
    """--sub, packed and full scoring: the mean NLL of the last 4 tokens of the docs/prompts.md TVQA sequence,
    with D from the clip's subtitle lines by end second (none for video 2: no "Dialogue:" segment)."""
    _, packed = tvqa_sub_run
    run_eval(world["root"], "out/tvqa_full", "--dataset", "tvqa", "--sub", "--scoring", "full", max_seq_len=150)
    full = read_predictions(world["root"] / "out/tvqa_full", "tvqa")
    expected, info = tvqa_expected(world, sub=True)
    with_dialogue = [d is not None for _, _, d in info]
    assert 0 < sum(with_dialogue) < N_TVQA  # both kinds of question are in the set
    for preds in (packed, full):
        assert [r["qid"] for r in preds] == [str(x["qid"]) for x in world["tvqa"]]
        assert max_abs_diff([r["scores"] for r in preds], expected) < TOL
    assert max_abs_diff([r["scores"] for r in packed], [r["scores"] for r in full]) < SHARD_TOL
    # the dialogue reached the model: with --sub, a question with dialogue scores otherwise than without
    nosub, _ = tvqa_expected(world, sub=False)
    moved = [max_abs_diff(a, b) > 20 * TOL for a, b, yes in zip(expected, nosub, with_dialogue) if yes]
    assert all(moved)


def test_tvqa_truncate_dialogue_cut_and_count(world):
    _, info = tvqa_expected(world, sub=True, score=False)
    lengths = sorted(whole for whole, _, d in info if d is not None)
    L = lengths[len(lengths) // 2]  # about half of the questions with dialogue must be cut
    expected, cut_info = tvqa_expected(world, sub=True, max_len=L)
    n_cut = sum(whole > L and length == L for whole, length, _ in cut_info)
    assert 0 < n_cut < N_TVQA
    assert all(length <= L for _, length, d in cut_info if d is not None)
    p = run_eval(world["root"], "out/tvqa_cut", "--dataset", "tvqa", "--sub", "--truncate_dialogue",
                 max_seq_len=L)
    preds = read_predictions(world["root"] / "out/tvqa_cut", "tvqa")
    assert max_abs_diff([r["scores"] for r in preds], expected) < TOL
    acc = read_accuracy(world["root"] / "out/tvqa_cut", "tvqa")
    assert acc["n_dialogue_cut"] == n_cut
    assert acc["n_longer_than_max_seq_len"] == sum(length > L for _, length, _ in cut_info)
    assert re.search(rf"\b{n_cut}\b[^\n\d]*\bcut\b", p.stdout), p.stdout[-2000:]


@pytest.mark.parametrize("nproc", [2, 3])
def test_uneven_sharding_equals_one_process(world, tvqa_sub_run, nproc):
    """25 questions on 2 (13 + 12) and 3 (9 + 8 + 8) gloo processes, batches of 4: every question once,
    in order, with the single process's predictions and scores."""
    _, one = tvqa_sub_run
    out = f"out/tvqa_sub_{nproc}"
    run_eval(world["root"], out, "--dataset", "tvqa", "--sub", nproc=nproc, max_seq_len=150)
    many = read_predictions(world["root"] / out, "tvqa")
    assert len(many) == N_TVQA and len({r["qid"] for r in many}) == N_TVQA
    assert [r["qid"] for r in many] == [r["qid"] for r in one]
    assert [r["prediction"] for r in many] == [r["prediction"] for r in one]
    assert max_abs_diff([r["scores"] for r in many], [r["scores"] for r in one]) < SHARD_TOL
    acc = read_accuracy(world["root"] / out, "tvqa")
    assert acc["n_questions"] == N_TVQA and acc["accuracy"]["total"]["total"] == N_TVQA
