"""What TOPA adds to Llama (docs/model.md): adapter prompts with zero-init gates, the CLIP projector,
the temporal embedding, and the memory projection. Everything else is `llama/model.py`.

`is_trainable(name)` is the one predicate that decides which parameters train *and* which are saved.

Attention in an adapted layer: main logits `q k^T / sqrt(hd)` plus the per-head `gate2` where a text
query after the video slot looks at a video key; softmax over the sequence; plus
`tanh(gate1) * softmax(q ka^T / sqrt(hd)) va` over the adapter rows alone (ka, va = wk, wv of the
layer's adapter prompt rows, no RoPE).

How the fused ("sdpa") path takes the gate2 bias. The fused kernels accept a mask shared by all heads
but no per-head learned bias that they can differentiate (a float [B, H, L, Lk] mask would have to be
built, kept for backward in every layer, and it rules out the flash kernels). The bias is rank one per
head, `g2[h] * text[query] * video[key]`, so it rides on two extra channels of q and k:

    k_extra = (1, 1) at video keys, (0, 0) elsewhere
    q_extra = (hi, lo) with hi + lo = g2[h] / scale at text queries after the video, (0, 0) elsewhere

and `scale = 1/sqrt(hd)` is passed explicitly, so q_extra . k_extra * scale = g2[h] where the bias
applies and 0 elsewhere; the mask stays head-independent (packed-scoring masks, or `is_causal` with no
mask at all, which lets flash kernels run). The gradient reaches g2 through q. q, k, v are zero-padded
to a multiple of 8 channels (hd + 2 -> hd + 8 for hd = 128); v is padded too because flash kernels
want one head dim, and the padded output channels are dropped.

Precision: k_extra = 1 is exact in every dtype; q.k is accumulated in fp32 by the kernels. q_extra
must be stored in the compute dtype, and x = g2 * sqrt(hd) (about 40 for g2 = -3.5, hd = 128) in one
bf16 channel is off by up to 2^-8 relative (0.022 on g2 in [-8, 8], measured). So x is split in two,
hi = bf16(x) and lo = bf16(x - hi), which carries ~16 significant bits: 4.4e-5 on g2 in [-8, 8] in
bf16, 1e-6 in fp16, and in fp32 (lo = 0) only the fp32 rounding of g2 * sqrt(hd) / sqrt(hd), 5e-7.
The split costs nothing, the channels are padded to a multiple of 8 anyway. Memory: q, k, v carry
e instead of hd channels (+6% at hd = 128), against a float bias of [B, H, L, Lk] kept for backward
in every layer.

The eager path keeps the reference math: fp32 logits, `+ g2 * [text query, video key]`, fp32 softmax.

With mask=None (plain causal, e.g. training rows, which are single right-padded sequences) the fused
path calls the kernels with `is_causal`: padding queries then see real keys, which changes nothing
that is scored (real tokens never see the padding after them).

Incremental decoding (`TOPA.prefill`, `TOPA.decode`): rows are left-padded so that every row appends
at the same cache index; positions start at 0 at each row's first real token; padding keys are
masked out (a padding query sees itself only, so every value stays finite). Every layer caches its
K/V as attended (with the sdpa path, including the bias channels), and its adapter prompt's K/V once.
Decoded tokens are text after the video: they get the gate2 bias towards the cached video keys.
"""
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dataloader.base import FEATURE_DIM
from util.errors import CheckpointError

from .config import ModelConfig
from .model import Attention, LayerCache, ModelArgs, Transformer, TransformerBlock, repeat_kv, skip_init
from .weights import StateDict


@dataclass
class TOPAArgs(ModelArgs):
    """Meta's ModelArgs (from params.json) + what TOPA adds (defaults: llama/config.py's ModelConfig).
    `max_feats` (T, the number of video positions) is read from here by prompts and datasets."""
    adapter_len: int = ModelConfig.adapter_len
    adapter_layer: Optional[int] = None  # None -> n_layers (every published script)
    max_feats: int = ModelConfig.max_feats
    clip_dim: int = FEATURE_DIM
    bias: float = ModelConfig.bias  # gate2 init is -bias

    def __post_init__(self):
        super().__post_init__()
        if self.adapter_layer is None:
            self.adapter_layer = self.n_layers
        if not 0 <= self.adapter_layer <= self.n_layers:
            raise ValueError(f"adapter_layer={self.adapter_layer} must be in [0, n_layers={self.n_layers}]")
        if self.adapter_len < 1 or self.max_feats < 1:
            raise ValueError(f"adapter_len={self.adapter_len} and max_feats={self.max_feats} must be >= 1")

TRAINABLE = re.compile(r"^(adapter_query\.weight|visual_proj\.weight|temporal_emb\.weight|"
                       r"layers\.\d+\.attention\.gate[12])$")


def is_trainable(name: str) -> bool:
    """True for the TOPA parameters: they train, stay fp32, and are what a checkpoint holds."""
    return TRAINABLE.match(name) is not None


def bias_channels(q, k, v, gate2, text, video, head_dim: int):
    """The gate2 bias as extra channels (module docstring). q [B, H, L, hd], k, v [B, Hkv, L, hd];
    gate2 [1, H, 1, 1] fp32; text [B, L] (queries that get the bias), video [B, L] (keys that give it)
    -> q, k, v with e = hd + 2 rounded up to a multiple of 8 channels."""
    pad = -(-(head_dim + 2) // 8) * 8 - head_dim - 2
    x = gate2 * math.sqrt(head_dim) * text[:, None, :, None]                       # [B, H, L, 1] fp32
    hi = x.to(q.dtype)
    lo = (x - hi.float()).to(q.dtype)
    q = F.pad(torch.cat([q, hi, lo], -1), (0, pad))                                # [B, H, L, e]
    kx = video[:, None, :, None].to(k.dtype).expand(-1, k.shape[1], -1, 2)         # [B, Hkv, L, 2]
    k = F.pad(torch.cat([k, kx], -1), (0, pad))                                    # [B, Hkv, L, e]
    return q, k, F.pad(v, (0, pad + 2))                                            # v [B, Hkv, L, e]


class AdapterAttention(Attention):
    """Attention with a gated adapter prompt (gate1) and a learned bias from text to video (gate2)."""

    def __init__(self, args: TOPAArgs):
        super().__init__(args)
        self.gate1 = nn.Parameter(torch.zeros(1, args.n_heads, 1, 1))
        self.gate2 = nn.Parameter(torch.full((1, args.n_heads, 1, 1), -float(args.bias)))

    def forward(self, x, cos, sin, mask, prompt=None, video=None, cache: Optional[LayerCache] = None):
        """prompt [A, D] (fp32 adapter rows, no RoPE); video = (text [B, L], video [B, Lk]) bool: gate2 is
        added where a `text` query meets a `video` key (Lk covers every key attended, cached ones too;
        this call's own keys are the last L)."""
        q, k, v = self.project(x, cos, sin)
        q0, hd, bias = q, self.head_dim, None
        if video is not None:
            text, vid = video
            if self.impl == "eager":
                bias = self.gate2 * (text[:, None, :, None] & vid[:, None, None, :])  # [B, H, L, Lk] fp32
            else:
                q, k, v = bias_channels(q, k, v, self.gate2, text, vid[:, -k.shape[2]:], hd)
        if cache is not None:
            k, v = cache.update(k, v, mask)
        out = self.attend(q, k, v, mask, bias)[..., :hd]  # [B, H, L, hd]
        if prompt is not None:
            out = out + self.prompt_attention(q0, prompt, cache)
        return self.merge_heads(out)

    def prompt_kv(self, prompt, dtype):
        """Adapter rows [A, D] -> ka, va [1, Hkv, A, hd] (no RoPE)."""
        A, p = prompt.shape[0], prompt.to(dtype)
        ka = self.wk(p).view(1, A, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [1, Hkv, A, hd]
        va = self.wv(p).view(1, A, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [1, Hkv, A, hd]
        return ka, va

    def prompt_attention(self, q, prompt, cache=None):
        """tanh(gate1) * softmax(q ka^T / sqrt(hd)) va over the adapter rows only: q [B, H, L, hd] -> same."""
        kv = cache.prompt_kv if cache is not None else None
        if kv is None:
            kv = self.prompt_kv(prompt, q.dtype)
            if cache is not None:
                cache.prompt_kv = kv
        ka, va = kv
        rep = self.n_heads // self.n_kv_heads
        if self.impl == "eager":
            ka, va = repeat_kv(ka, rep), repeat_kv(va, rep)                             # [1, H, A, hd]
            sa = (q @ ka.transpose(-1, -2)).float() / (self.head_dim ** 0.5)           # [B, H, L, A]
            pa = torch.tanh(self.gate1) * F.softmax(sa, dim=-1)
            return pa.type_as(va) @ va
        B = q.shape[0]
        oa = F.scaled_dot_product_attention(q, ka.expand(B, -1, -1, -1), va.expand(B, -1, -1, -1),
                                            scale=1.0 / math.sqrt(self.head_dim), enable_gqa=rep > 1)
        return (torch.tanh(self.gate1) * oa).type_as(oa)


@dataclass
class KVCache:
    """Decoding state of a batch of left-padded rows (see the module docstring)."""
    layers: List[LayerCache]
    key_mask: torch.Tensor             # [B, capacity] bool: a real token (not padding)
    key_video: Optional[torch.Tensor]  # [B, capacity] bool: a video key (None: no gate2 bias)
    text_from: Optional[torch.Tensor]  # [B, 1]: positions from here on are text after the video
    impl: str                          # the attention kernel that wrote it

    @property
    def n(self) -> int:
        return self.layers[0].n


class TOPA(Transformer):
    """Frozen Llama + adapters on the last `adapter_layer` layers + video input at a `V×T` slot."""

    def __init__(self, args: TOPAArgs, attn_impl: str = "sdpa"):
        super().__init__(args, attn_impl)
        self.first_adapted = args.n_layers - args.adapter_layer
        self.adapter_query = nn.Embedding(args.adapter_len * args.adapter_layer, args.dim)
        self.visual_proj = nn.Linear(args.clip_dim, args.dim, bias=False)
        self.temporal_emb = nn.Embedding(args.max_feats, args.dim)

    def make_block(self, layer_id: int) -> TransformerBlock:
        adapted = layer_id >= self.args.n_layers - self.args.adapter_layer
        return TransformerBlock(self.args, AdapterAttention(self.args) if adapted else None)

    def trainable_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if is_trainable(n)]

    def trainable_state_dict(self):
        return {n: p.detach() for n, p in self.trainable_parameters()}

    def reset_trainable(self):
        """Fresh TOPA parameters: module defaults, gate1 = 0, gate2 = -bias."""
        for m in (self.adapter_query, self.visual_proj, self.temporal_emb):
            m.reset_parameters()
        for layer in self.layers:
            att = layer.attention
            if isinstance(att, AdapterAttention):
                nn.init.zeros_(att.gate1)
                nn.init.constant_(att.gate2, -float(self.args.bias))

    def embed(self, tokens, video=None, video_start=None):
        """tokens [B, L] (any id at video slots), video [B, T, clip_dim] -> [B, L, D] in the backbone dtype."""
        h = self.tok_embeddings(tokens)
        if video is not None:
            B, T, _ = video.shape
            x = self.visual_proj(video.to(self.visual_proj.weight.dtype)) + self.temporal_emb.weight[:T]  # [B, T, D]
            idx = (video_start[:, None] + torch.arange(T, device=tokens.device))[..., None]  # [B, T, 1]
            h = h.scatter(1, idx.expand(-1, -1, h.shape[-1]), x.to(h.dtype))
        return h

    @staticmethod
    def video_flags(positions, video_start, T: int):
        """Where gate2 acts, by position: (text [B, L] = queries after the slot, video [B, L] = slot keys).
        video_start [B] is the slot's index in the row; its position is read from `positions`."""
        s = positions.gather(1, video_start[:, None])  # [B, 1]
        return positions >= s + T, (positions >= s) & (positions < s + T)

    def run_adapted(self, h, positions, mask, flags=None, cache: Optional[KVCache] = None):
        """run_layers with each adapted layer's prompt rows, the gate2 flags and the cache."""
        prompts = self.adapter_query.weight.view(self.args.adapter_layer, self.args.adapter_len, -1)

        def layer_kwargs(i):
            kw = {} if cache is None else {"cache": cache.layers[i]}
            if i >= self.first_adapted:
                kw.update(prompt=prompts[i - self.first_adapted], video=flags)
            return kw

        return self.run_layers(h, positions, mask, layer_kwargs)

    def hidden(self, tokens, positions, mask, video=None, video_start=None, gate2=True):
        """Final normed hidden states [B, L, D].

        tokens, positions [B, L]; mask bool [B, 1, L, L] (True = may attend) or None = causal in token
        order; video [B, T, clip_dim] placed at indices video_start[b] .. +T-1 of row b; gate2=False for
        sequences with no text after the video (qav)."""
        flags = None
        if video is not None and gate2:
            flags = self.video_flags(positions, video_start, video.shape[1])
        return self.run_adapted(self.embed(tokens, video, video_start), positions, mask, flags)

    def logits(self, h):
        return self.output(h).float()

    # ---- incremental decoding ----

    @torch.no_grad()
    def prefill(self, tokens, positions, key_mask, video=None, video_start=None, gate2=True,
                capacity: Optional[int] = None, prefix: Optional[KVCache] = None):
        """Run left-padded prompts once, keeping every layer's keys/values for `decode`.

        tokens, positions [B, L] (each row's prompt right-aligned, positions counting from 0 at its first
        real token); key_mask [B, L] bool, True at real tokens; video [B, T, clip_dim] at indices
        video_start[b] .. +T-1; capacity: positions the cache holds (prefix + prompt + tokens to decode;
        default: prefix + L). prefix: a `prefill_shared` cache of the text that starts every row: the
        rows then hold only what follows it (positions counting on from the prefix's length).
        Returns (logits at index L-1 [B, vocab] fp32, cache)."""
        B, L = tokens.shape
        P = prefix.n if prefix is not None else 0
        cap = capacity or P + L
        ar = torch.arange(L, device=tokens.device)
        mask = (ar[:, None] >= ar) & (key_mask[:, None, :] | (ar[:, None] == ar))  # [B, L, L]: padding sees itself
        mask = torch.cat([mask.new_ones(B, L, P), mask], -1)                         # the prefix: real keys
        real = key_mask.new_zeros(B, cap)
        real[:, :P] = True
        real[:, P:P + L] = key_mask
        flags = key_video = text_from = None
        if video is not None and gate2:
            text, vid = self.video_flags(positions, video_start, video.shape[1])
            key_video = key_mask.new_zeros(B, cap)
            key_video[:, P:P + L] = vid & key_mask
            flags = (text, key_video[:, :P + L])
            text_from = positions.gather(1, video_start[:, None]) + video.shape[1]
        layers = [LayerCache(cap) for _ in self.layers] if prefix is None else \
            [lc.seeded(B, cap) for lc in prefix.layers]
        cache = KVCache(layers, real, key_video, text_from, self.attn_impl)
        h = self.run_adapted(self.embed(tokens, video, video_start), positions, mask[:, None], flags, cache)
        return self.logits(h[:, -1]), cache

    @torch.no_grad()
    def prefill_shared(self, tokens, video: bool = True) -> KVCache:
        """The cache of one row of text (tokens [P], positions 0..P-1) that starts every prompt of a batch,
        before any video: computed once, it seeds `prefill(prefix=...)` of all rows. Its keys and values
        do not depend on what follows (causal attention; gate2 only acts on queries after the video).
        video: the batch has a video with gate2, so the keys carry the (zero) gate2 channels too."""
        P = tokens.shape[0]
        positions = torch.arange(P, device=tokens.device)[None]
        no = torch.zeros(1, P, dtype=torch.bool, device=tokens.device)
        flags = (no, no) if video else None
        cache = KVCache([LayerCache(P) for _ in self.layers], ~no, no if video else None, None, self.attn_impl)
        self.run_adapted(self.tok_embeddings(tokens[None]), positions, None, flags, cache)
        return cache

    @torch.no_grad()
    def decode(self, tokens, positions, cache: KVCache):
        """One more token per row: tokens, positions [B] -> logits [B, vocab] fp32 (appends to `cache`)."""
        if cache.impl != self.attn_impl:
            raise ValueError(f"cache was written by attn_impl={cache.impl!r}, the model now runs {self.attn_impl!r}")
        n = cache.n
        if n >= cache.key_mask.shape[1]:
            raise ValueError(f"KV cache is full ({n} positions); pass a larger capacity to prefill")
        cache.key_mask[:, n] = True
        mask = cache.key_mask[:, None, None, :n + 1]  # [B, 1, 1, n+1]
        flags = None
        if cache.key_video is not None:  # a decoded token is text after the video, never a video key
            flags = (positions[:, None] >= cache.text_from, cache.key_video[:, :n + 1])
        h = self.run_adapted(self.tok_embeddings(tokens[:, None]), positions[:, None], mask, flags, cache)
        return self.logits(h[:, 0])


def build_model(args: TOPAArgs, backbone, dtype: torch.dtype = torch.float32,
                device="cpu", trainable: Optional[dict] = None, source: str = "backbone",
                trainable_source: str = "TOPA checkpoint", attn_impl: str = "sdpa") -> TOPA:
    """Build a TOPA model without ever allocating random backbone weights or holding the model twice.

    backbone: a weight source (`llama.weights.MetaShards`, `llama.hf.HFSafetensors`) or a Meta state
    dict. The model is built on the `meta` device without random initialisation (`skip_init`); then
    each backbone tensor in turn is allocated on `device` in `dtype` and filled from the source, so the
    device's peak is the weights themselves (plus one slice when a copy needs a contiguous staging
    buffer) and the host holds at most one tensor in transit. The TOPA tensors are fp32 on `device`, fresh
    (gate1 = 0, gate2 = -bias) or from `trainable` (a TOPA checkpoint's `model` dict). Missing or extra
    keys and wrong shapes are errors naming `source` and the key."""
    weights = StateDict(backbone) if isinstance(backbone, Mapping) else backbone
    with torch.device("meta"), skip_init():
        model = TOPA(args, attn_impl)
    expected = {n: p.shape for n, p in model.named_parameters() if not is_trainable(n)}  # tied: no output.weight
    shapes = dict(weights.shapes)
    if args.tie_embeddings:  # the embedding is the output layer; a copy in the files (Meta's 3.2) is not read
        shapes.pop("output.weight", None)
    check_shapes(shapes, expected, source)
    with torch.no_grad():
        for name, shape in expected.items():
            t = torch.empty(shape, device=device, dtype=dtype)
            weights.read_into(name, t)
            _set_parameter(model, name, t)
        for name, p in model.trainable_parameters():  # the TOPA params: fp32 on `device`
            _set_parameter(model, name, torch.empty(p.shape, device=device, dtype=torch.float32))
    model.tie_weights()
    model.reset_trainable()
    if trainable is not None:
        load_trainable(model, trainable, trainable_source)
    for n, p in model.named_parameters():
        p.requires_grad_(is_trainable(n))
    return model


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor):
    mod_name, _, pname = name.rpartition(".")
    setattr(model.get_submodule(mod_name), pname, nn.Parameter(value, requires_grad=False))


def check_shapes(shapes: dict, expected: dict, source: str):
    """`shapes` (key -> shape) must have exactly the keys of `expected`, each with its shape."""
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{source}: keys do not match the model: missing {missing[:8]}"
                              f"{'...' if len(missing) > 8 else ''}, unexpected {extra[:8]}{'...' if len(extra) > 8 else ''}")
    for k, shape in expected.items():
        if tuple(shapes[k]) != tuple(shape):
            raise CheckpointError(f"{source}: tensor '{k}' has shape {tuple(shapes[k])}, "
                                  f"the model needs {tuple(shape)}")


def adapter_hint(rows: int, args: TOPAArgs, trained_with: Optional[dict] = None) -> str:
    """What to pass for an `adapter_query.weight` of `rows` rows (= adapter_len x adapter_layer): the
    checkpoint's recorded flags when it has them, otherwise every split of `rows` that fits this model."""
    rec = trained_with or {}
    if rec.get("adapter_len") is not None and "adapter_layer" in rec:
        layers = rec["adapter_layer"]
        layers = f"--adapter_layer {layers}" if layers is not None else "every layer adapted (no --adapter_layer)"
        return f"; it was trained with --adapter_len {rec['adapter_len']} and {layers}"
    splits = []
    if rows % args.adapter_layer == 0:
        splits.append(f"--adapter_len {rows // args.adapter_layer} with --adapter_layer {args.adapter_layer}")
    if rows % args.adapter_len == 0 and rows // args.adapter_len <= args.n_layers \
            and rows // args.adapter_len != args.adapter_layer:
        splits.append(f"--adapter_layer {rows // args.adapter_len} with --adapter_len {args.adapter_len}")
    if not splits:
        return f"; it does not record its --adapter_len and --adapter_layer (their product is {rows})"
    return (f"; it does not record its --adapter_len and --adapter_layer (their product is {rows}): "
            + " or ".join(splits))


def load_trainable(model: TOPA, state: dict, source: str = "TOPA checkpoint", trained_with: Optional[dict] = None):
    """Copy a TOPA checkpoint's tensors into the model; `trained_with` (the flags the checkpoint records)
    makes the hint of a wrong adapter_query shape name the checkpoint's adapter_len and adapter_layer.

    The released format lists gate1/gate2 for every backbone layer; with `adapter_layer < n_layers` the
    gates of the layers without adapters take no part in the math (the original code built and saved
    them, never used them), so they are accepted here and ignored."""
    expected = {n: p.shape for n, p in model.trainable_parameters()}
    unused = {f"layers.{i}.attention.gate{g}" for i in range(model.first_adapted) for g in (1, 2)}
    state = {k: v for k, v in state.items() if k not in unused}
    aq = state.get("adapter_query.weight")
    if aq is not None and tuple(aq.shape) != tuple(expected["adapter_query.weight"]):
        a = model.args
        raise CheckpointError(f"{source}: tensor 'adapter_query.weight' has shape {tuple(aq.shape)}, the model "
                              f"needs {tuple(expected['adapter_query.weight'])} (adapter_len {a.adapter_len} x "
                              f"adapter_layer {a.adapter_layer}){adapter_hint(aq.shape[0], a, trained_with)}")
    check_shapes({k: v.shape for k, v in state.items()}, expected, source)
    with torch.no_grad():
        for n, p in model.trainable_parameters():
            p.copy_(state[n].to(p.dtype))
