"""Greedy decoding with TOPA, as the generation-based benchmarks (MVBench, MSR-VTT, VATEX) do it.

A prompt is a list of token ids with `VIDEO` at the T video positions (`[BOS] + enc(P1) + VIDEO×T +
enc(P2)`: no separator after the video here). Every new token is the argmax of the next-token logits
after the logits of `masked_ids` are set to -100, under the same attention as scoring (adapters, gate2
bias from text to the video). Rows of a batch run together and finish independently: at EOS (which
is not returned) or when `stop(ids)` says so (that token is returned).

`use_cache=True` prefills the left-padded prompts once (the text that starts every prompt once for the
batch) and then decodes one token at a time from a KV cache (`TOPA.prefill` / `TOPA.decode`), the loop
on the device; `use_cache=False` recomputes every unfinished row's whole sequence for each token
through `TOPA.hidden` (right-padded, the scoring path): the reference.
"""
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from text.prompts import VIDEO

from .adapter import TOPA

StopFn = Callable[[List[int]], bool]


def video_slot(prompt: Sequence[int], T: Optional[int]) -> Optional[int]:
    """Index of the prompt's VIDEO run (it must be exactly T contiguous ids), or None without a video."""
    idx = [i for i, t in enumerate(prompt) if t == VIDEO]
    if T is None:
        if idx:
            raise ValueError(f"prompt has {len(idx)} VIDEO ids but no video was given")
        return None
    if len(idx) != T or idx != list(range(idx[0], idx[0] + T)):
        raise ValueError(f"prompt must hold exactly {T} contiguous VIDEO ids (the video has {T} frames); "
                         f"it has {len(idx)} at {idx[:3]}{'...' if len(idx) > 3 else ''}")
    return idx[0]


@torch.no_grad()
def greedy_generate(model: TOPA, prompts: Sequence[Sequence[int]], videos=None, *, max_new_tokens: int,
                    eos_id: Union[int, Sequence[int], None] = None, masked_ids: Sequence[int] = (),
                    stop: Union[StopFn, Sequence[Optional[StopFn]], None] = None, use_cache: bool = True,
                    gate2: bool = True, return_logits: bool = False,
                    observe: Optional[Callable[[int, torch.Tensor], None]] = None):
    """Greedy continuation of every prompt; returns the generated ids per prompt (EOS left out).

    videos: None, or one [T, clip_dim] feature tensor per prompt (a list or a [B, T, clip_dim] tensor),
    already normalised / memory-projected. eos_id: one id or several. stop: a callable given a row's
    generated ids after each new token (or a list of them, one per row); True ends that row.
    return_logits: also return, per prompt, the [n, vocab] fp32 logits each generated id was picked
    from (after masking). observe: called as observe(t, logits) with step t's next-token logits
    [B, vocab] (after masking, before the argmax; rows already done included), e.g. to read the
    first step's scores of some ids."""
    B = len(prompts)
    device = model.tok_embeddings.weight.device
    video = None
    if videos is not None:
        video = (videos if torch.is_tensor(videos) else torch.stack(list(videos))).to(device)
        if video.shape[0] != B:
            raise ValueError(f"{B} prompts but {video.shape[0]} videos")
    starts = [video_slot(p, None if video is None else video.shape[1]) for p in prompts]
    eos = sorted({eos_id} if isinstance(eos_id, int) else set(eos_id or ()))
    stops = list(stop) if isinstance(stop, (list, tuple)) else [stop] * B
    if len(stops) != B:
        raise ValueError(f"{B} prompts but {len(stops)} stop callbacks")
    if max_new_tokens <= 0 or not B:
        out = [[] for _ in range(B)]
        return (out, [torch.empty(0, model.args.vocab_size, device=device)] * B) if return_logits else out
    run = (CachedRun if use_cache else FullRun)(model, prompts, video, starts, max_new_tokens, gate2)
    ids = [torch.tensor(list(x), dtype=torch.long, device=device) for x in (eos, masked_ids)]
    picks, lives, logits_per_step = decode_loop(run, max_new_tokens, *ids, stops, observe, return_logits)
    picked, live = torch.stack(picks, 1).tolist(), torch.stack(lives, 1).tolist()  # [B, steps]: one transfer
    out = [[i for i, keep in zip(picked[b], live[b]) if keep] for b in range(B)]
    if not return_logits:
        return out
    steps = torch.stack(lives, 1)
    return out, [torch.stack(logits_per_step, 1)[b][steps[b]] for b in range(B)]


SYNC_EVERY = 4  # decoding steps between the host's checks whether every row is done


class Watch:
    """An `observe` for `greedy_generate` that keeps what it sees on the device (no host sync per token):
    whether each row's scores were finite at each step, and the first step's logits over `first_ids`
    (the letters of a lettered answer). Read after decoding."""

    def __init__(self, first_ids: Sequence[int] = ()):
        self.first_ids, self.bad, self.first = list(first_ids), [], None

    def __call__(self, t: int, logits: torch.Tensor):  # [B, vocab] after masking
        self.bad.append(~torch.isfinite(logits).all(-1))
        if t == 0 and self.first_ids:
            self.first = logits[:, self.first_ids].float()

    def read(self) -> Tuple[List[List[bool]], Optional[torch.Tensor]]:
        """([B][steps] non-finite flags, first-step logits [B, len(first_ids)] on the host or None)."""
        bad = torch.stack(self.bad, 1).tolist() if self.bad else []
        return bad, (self.first.cpu() if self.first is not None else None)


def nonfinite_pick(bad: List[List[bool]], row: int, generated: Sequence[int]) -> bool:
    """Whether `row` picked a token from scores that were not finite (`bad` from `Watch.read`): the steps
    whose pick it took, its generated tokens and the EOS step after them."""
    return bool(bad) and any(bad[row][:len(generated) + 1])


def decode_loop(run, max_new_tokens: int, eos: torch.Tensor, masked: torch.Tensor, stops, observe,
                keep_logits: bool = False):
    """The greedy steps, on the device: the host waits for the device only every `SYNC_EVERY` steps
    (to end the loop once every row is done), or every step when a row has a Python `stop` callback.
    Returns per step the picked ids [B], whether each row keeps its pick [B] (not done, not EOS) and,
    with `keep_logits`, the logits [B, vocab] (after masking)."""
    logits, B = run.logits, len(stops)
    done = torch.zeros(B, dtype=torch.bool, device=logits.device)
    picks, lives, per_step = [], [], []
    host = [[] for _ in range(B)] if any(stops) else None  # the rows' ids so far, for the callbacks
    for t in range(max_new_tokens):  # logits [B, vocab]; rows that are done are ignored
        if len(masked):
            logits.index_fill_(1, masked, -100.0)
        if observe is not None:
            observe(t, logits)
        ids = logits.argmax(-1)
        live = ~(done | torch.isin(ids, eos))  # EOS is not returned and ends the row
        picks.append(ids)
        lives.append(live)
        if keep_logits:
            per_step.append(logits)
        done = ~live
        if host is not None:
            ended = []
            for b, (i, keep) in enumerate(zip(ids.tolist(), live.tolist())):
                if keep:
                    host[b].append(i)
                ended.append(bool(keep and stops[b] and stops[b](list(host[b]))))
            done = done | torch.tensor(ended, device=done.device)
        if t == max_new_tokens - 1:
            break
        if (host is not None or t % SYNC_EVERY == SYNC_EVERY - 1) and bool(done.all()):
            break
        logits = run.step(ids, done)
    return picks, lives, per_step


def shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the text that starts every prompt, before any VIDEO id, leaving each prompt at least
    its last token (0 for a single prompt: nothing to share)."""
    if len(prompts) < 2:
        return 0
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1
    if VIDEO in first:
        n = min(n, first.index(VIDEO))
    for i in range(n):
        if any(p[i] != first[i] for p in prompts):
            return i
    return max(n, 0)


class CachedRun:
    """Prefill the prompts once (`logits`: next-token logits [B, vocab]), then `step(ids)` decodes one
    token per row from the KV cache. The text that starts every prompt (the protocol's instruction) runs
    once for the batch (`TOPA.prefill_shared`); the rest of each prompt is left-padded behind it."""

    def __init__(self, model: TOPA, prompts, video, starts, max_new_tokens: int, gate2: bool):
        device = model.tok_embeddings.weight.device
        P = shared_prefix(prompts)
        prefix = None
        if P:
            prefix = model.prefill_shared(torch.tensor(list(prompts[0][:P]), device=device),
                                          video is not None and gate2)
        B, lens = len(prompts), [len(p) - P for p in prompts]
        L = max(lens)
        tokens = torch.zeros(B, L, dtype=torch.long)
        positions = torch.zeros(B, L, dtype=torch.long)
        key_mask = torch.zeros(B, L, dtype=torch.bool)
        for b, p in enumerate(prompts):  # every row's last prompt token at index L-1
            tokens[b, L - lens[b]:] = torch.tensor([0 if t == VIDEO else t for t in p[P:]])
            positions[b, L - lens[b]:] = torch.arange(P, len(p))
            key_mask[b, L - lens[b]:] = True
        vstart = None if video is None else torch.tensor([L - n + s - P for n, s in zip(lens, starts)], device=device)
        self.model, self.device = model, device
        self.logits, self.cache = model.prefill(tokens.to(device), positions.to(device), key_mask.to(device),
                                                video, vstart, gate2, capacity=P + L + max(max_new_tokens - 1, 0),
                                                prefix=prefix)
        self.pos = torch.tensor([len(p) for p in prompts], device=device)  # position of each row's next token

    def step(self, ids: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        """Feed every row its last id [B] (finished rows too: they are ignored) -> logits [B, vocab]."""
        logits = self.model.decode(ids, self.pos, self.cache)
        self.pos = self.pos + 1
        return logits


class FullRun:
    """The reference: each step recomputes every unfinished row's whole sequence (prompt + ids so far),
    right-padded, through `TOPA.hidden`."""

    def __init__(self, model: TOPA, prompts, video, starts, max_new_tokens: int, gate2: bool):
        self.model, self.video, self.starts, self.gate2 = model, video, starts, gate2
        self.device = model.tok_embeddings.weight.device
        self.seqs = [[0 if t == VIDEO else t for t in p] for p in prompts]
        self.logits = self.run(list(range(len(prompts))))

    def run(self, rows: List[int]) -> torch.Tensor:
        lens = [len(self.seqs[b]) for b in rows]
        L, dev = max(lens), self.device
        tokens = torch.zeros(len(rows), L, dtype=torch.long)
        for i, b in enumerate(rows):  # right padding: positions are indices; padding is never read
            tokens[i, :lens[i]] = torch.tensor(self.seqs[b])
        tokens = tokens.to(dev)
        positions = torch.arange(L, device=dev).expand_as(tokens)
        v = vs = None
        if self.video is not None:
            v, vs = self.video[rows], torch.tensor([self.starts[b] for b in rows], device=dev)
        h = self.model.hidden(tokens, positions, None, v, vs, self.gate2)                 # [R, L, D]
        last = h[torch.arange(len(rows), device=dev), torch.tensor(lens, device=dev) - 1]  # [R, D]
        logits = torch.zeros(len(self.seqs), self.model.args.vocab_size, device=dev)
        logits[torch.tensor(rows, device=dev)] = self.model.logits(last)
        return logits

    def step(self, ids: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
        ids, done = ids.tolist(), done.tolist()
        rows = [b for b in range(len(self.seqs)) if not done[b]]
        for b in rows:
            self.seqs[b].append(ids[b])
        return self.run(rows)
