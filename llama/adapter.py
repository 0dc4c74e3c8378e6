"""What TOPA adds to Llama (docs/model.md): adapter prompts with zero-init gates, the CLIP projector,
the temporal embedding, and the memory projection. Everything else is `llama/model.py`.

`is_trainable(name)` is the one predicate that decides which parameters train *and* which are saved.
"""
import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from util.errors import CheckpointError

from .model import Attention, ModelArgs, Transformer, TransformerBlock


@dataclass
class TOPAArgs(ModelArgs):
    """Meta's ModelArgs (from params.json) + what TOPA adds. `max_feats` (T, the number of video
    positions) is owned here: prompts and datasets read it from the model's args."""
    adapter_len: int = 50
    adapter_layer: Optional[int] = None  # None -> n_layers (every published script)
    max_feats: int = 10
    clip_dim: int = 768
    bias: float = 3.0  # gate2 init is -bias

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


class AdapterAttention(Attention):
    """Attention with a gated adapter prompt (gate1) and a learned bias from text to video (gate2)."""

    def __init__(self, args: TOPAArgs):
        super().__init__(args)
        self.gate1 = nn.Parameter(torch.zeros(1, args.n_heads, 1, 1))
        self.gate2 = nn.Parameter(torch.full((1, args.n_heads, 1, 1), -float(args.bias)))

    def forward(self, x, cos, sin, mask, prompt=None, text_to_video=None):
        """prompt [A, D] (fp32 adapter rows, no RoPE); text_to_video bool [B, 1, L, Lk]: where gate2 is added."""
        q, k, v = self.qkv(x, cos, sin)
        s = self.scores(q, k, mask)  # [B, H, L, Lk] fp32
        if text_to_video is not None:
            s = s + self.gate2 * text_to_video
        out = F.softmax(s, dim=-1).type_as(v) @ v  # [B, H, L, hd]
        if prompt is not None:
            A, rep = prompt.shape[0], self.n_heads // self.n_kv_heads
            p = prompt.to(x.dtype)
            ka = self.wk(p).view(1, A, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [1, Hkv, A, hd]
            va = self.wv(p).view(1, A, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [1, Hkv, A, hd]
            ka, va = ka.repeat_interleave(rep, 1), va.repeat_interleave(rep, 1)        # [1, H, A, hd]
            sa = (q @ ka.transpose(-1, -2)).float() / (self.head_dim ** 0.5)           # [B, H, L, A]
            pa = torch.tanh(self.gate1) * F.softmax(sa, dim=-1)
            out = out + pa.type_as(va) @ va
        return self.merge_heads(out)


class TOPA(Transformer):
    """Frozen Llama + adapters on the last `adapter_layer` layers + video input at a `V×T` slot."""

    def __init__(self, args: TOPAArgs):
        super().__init__(args)
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

    def hidden(self, tokens, positions, mask, video=None, video_start=None, gate2=True):
        """Final normed hidden states [B, L, D].

        tokens, positions [B, L]; mask bool [B, 1, L, L] (True = may attend); video [B, T, clip_dim]
        placed at positions video_start[b] .. +T-1 of row b; gate2=False for sequences with no text
        after the video (qav)."""
        T = self.args.max_feats
        t2v = None
        if video is not None and gate2:
            s = video_start[:, None]                                    # [B, 1]
            key_video = (positions >= s) & (positions < s + T)         # [B, Lk]
            query_text = positions >= s + T                            # [B, L]
            t2v = (query_text[:, None, :, None] & key_video[:, None, None, :]) & mask  # [B, 1, L, Lk]
        prompts = self.adapter_query.weight.view(self.args.adapter_layer, self.args.adapter_len, -1)

        def layer_kwargs(i):
            if i < self.first_adapted:
                return {}
            return {"prompt": prompts[i - self.first_adapted], "text_to_video": t2v}

        return self.run_layers(self.embed(tokens, video, video_start), positions, mask, layer_kwargs)

    def logits(self, h):
        return self.output(h).float()


def project_to_memory(v: torch.Tensor, memory: torch.Tensor, temperature: float = 100.0,
                      chunk: int = 262144) -> torch.Tensor:
    """The memory projection: v <- normalize(softmax(100 v M^T) M), row-wise, in fp32, over memory chunks
    (an online softmax, so a 1M-row memory never needs a [rows, 1M] matrix at once)."""
    shape = v.shape
    v = v.reshape(-1, shape[-1]).float()
    m = torch.full((v.shape[0], 1), float("-inf"), device=v.device)
    denom = torch.zeros(v.shape[0], 1, device=v.device)
    acc = torch.zeros_like(v)
    for start in range(0, memory.shape[0], chunk):
        M = memory[start:start + chunk].to(v.device, torch.float32)
        logit = temperature * (v @ M.T)                     # [rows, chunk]
        m_new = torch.maximum(m, logit.max(-1, keepdim=True).values)
        scale = torch.exp(m - m_new)
        p = torch.exp(logit - m_new)
        denom = denom * scale + p.sum(-1, keepdim=True)
        acc = acc * scale + p @ M
        m = m_new
    return F.normalize(acc / denom, dim=-1).reshape(shape)


def build_model(args: TOPAArgs, backbone: dict, dtype: torch.dtype = torch.float32,
                device="cpu", trainable: Optional[dict] = None, source: str = "backbone",
                trainable_source: str = "TOPA checkpoint") -> TOPA:
    """Build a TOPA model without ever allocating random backbone weights.

    backbone: Meta's state dict (merged); trainable: a TOPA checkpoint's `model` dict, or None for a fresh
    init. Missing or extra keys and wrong shapes are errors naming the key."""
    with torch.device("meta"):
        model = TOPA(args)
    expected = {n: p.shape for n, p in model.named_parameters() if not is_trainable(n)}
    check_state(backbone, expected, source)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in backbone.items()},
                          strict=False, assign=True)
    for name, p in model.trainable_parameters():  # materialise the TOPA params in fp32 on `device`
        mod_name, _, pname = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        setattr(mod, pname, nn.Parameter(torch.empty(p.shape, device=device, dtype=torch.float32)))
    model.reset_trainable()
    if trainable is not None:
        load_trainable(model, trainable, trainable_source)
    for n, p in model.named_parameters():
        p.requires_grad_(is_trainable(n))
    return model


def check_state(state: dict, expected: dict, source: str):
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{source}: keys do not match the model: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {extra[:8]}{'...' if len(extra) > 8 else ''}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != tuple(shape):
            raise CheckpointError(f"{source}: tensor '{k}' has shape {tuple(state[k].shape)}, "
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
    makes the hint of a wrong adapter_query shape name the checkpoint's adapter_len and adapter_layer."""
    expected = {n: p.shape for n, p in model.trainable_parameters()}
    aq = state.get("adapter_query.weight")
    if aq is not None and tuple(aq.shape) != tuple(expected["adapter_query.weight"]):
        a = model.args
        raise CheckpointError(f"{source}: tensor 'adapter_query.weight' has shape {tuple(aq.shape)}, the model needs "
                         f"{tuple(expected['adapter_query.weight'])} (adapter_len {a.adapter_len} x "
                         f"adapter_layer {a.adapter_layer}){adapter_hint(aq.shape[0], a, trained_with)}")
    check_state(state, expected, source)
    with torch.no_grad():
        for n, p in model.trainable_parameters():
            p.copy_(state[n].to(p.dtype))
