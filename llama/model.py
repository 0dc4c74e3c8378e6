"""Llama-2 / Llama-3 decoder in Meta's layout (keys, shapes and numerics of Meta's `model.py`).

Knows nothing about video: TOPA's additions live in `llama/adapter.py`. Differences from Meta's
inference code: positions are explicit per token (so packed sequences and per-row offsets work), the
attention mask is explicit (bool, True = may attend), and nothing global is touched (no default
tensor type, no `.cuda()`); build on the `meta` device and load weights with `assign=True`.
"""
import json
import math
from dataclasses import dataclass, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None
    vocab_size: int = -1
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim={self.dim}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads} "
                             "do not divide evenly")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        h = int(2 * 4 * self.dim / 3)
        if self.ffn_dim_multiplier is not None:
            h = int(self.ffn_dim_multiplier * h)
        return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_params_json(cls, path, **overrides) -> "ModelArgs":
        """Read Meta's params.json; keys we do not know (e.g. `use_scaled_rope`) are an error only
        if they change the math we implement. `overrides` with value None are ignored."""
        from util.errors import CheckpointError
        try:
            with open(path, encoding="utf-8") as f:
                params = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a valid params.json ({e})") from None
        if not isinstance(params, dict):
            raise CheckpointError(f"{path}: expected a JSON object of model hyper-parameters")
        known = {f.name for f in fields(ModelArgs)}  # Meta's fields only: params.json never holds others
        unknown = set(params) - known
        if params.get("use_scaled_rope"):
            raise CheckpointError(f"{path}: use_scaled_rope=true (Llama-3.1 rope scaling) is not supported")
        unknown -= {"use_scaled_rope", "max_batch_size", "max_seq_len"}
        if unknown:
            raise CheckpointError(f"{path}: unknown params.json keys {sorted(unknown)}")
        params = {k: v for k, v in params.items() if k in known}
        for k, v in params.items():
            if not _valid_param(k, v):
                raise CheckpointError(f"{path}: '{k}' = {v!r} is not a valid value")
        params.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**params)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from None


INT_PARAMS = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "vocab_size")


def _valid_param(key: str, v) -> bool:
    """params.json values: sizes are ints >= 1 (vocab_size -1: the tokenizer's), the rest positive numbers;
    n_kv_heads and ffn_dim_multiplier may be null."""
    if v is None:
        return key in ("n_kv_heads", "ffn_dim_multiplier")
    if isinstance(v, bool):
        return False
    if key in INT_PARAMS:
        return isinstance(v, int) and (v >= 1 or (key == "vocab_size" and v == -1))
    return isinstance(v, (int, float)) and v > 0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


# ---- rotary embeddings (free functions, Meta's pairing: (x[2k], x[2k+1])) ----

def rope_angles(positions: torch.Tensor, head_dim: int, theta: float):
    """positions [B, L] (int) -> (cos, sin) each [B, 1, L, head_dim/2] in fp32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device)[: head_dim // 2].float()
                                / head_dim))
    ang = positions.float()[..., None] * inv_freq  # [B, L, hd/2]
    return ang.cos()[:, None], ang.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, L, hd]; rotates each adjacent pair by its angle, in fp32."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B, H, L, hd/2, 2]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)  # [B, H, L, hd/2, 2]
    return out.flatten(-2).type_as(x)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, Hkv, L, hd] -> [B, Hkv*n_rep, L, hd] (each kv head serves n_rep query heads)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def causal_mask(positions: torch.Tensor) -> torch.Tensor:
    """Plain causal mask from token order: [B, L] -> bool [B, 1, L, L], True = may attend."""
    L = positions.shape[1]
    m = torch.ones(L, L, dtype=torch.bool, device=positions.device).tril()
    return m.expand(positions.shape[0], 1, L, L)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def qkv(self, x, cos, sin):
        """x [B, L, D] -> q, k, v each [B, H, L, hd] (k, v repeated for GQA), RoPE on q and k."""
        B, L, _ = x.shape
        q = self.wq(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)     # [B, H, L, hd]
        k = self.wk(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, L, hd]
        v = self.wv(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, L, hd]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = self.n_heads // self.n_kv_heads
        return q, repeat_kv(k, rep), repeat_kv(v, rep)

    def scores(self, q, k, mask):
        """Masked attention logits in fp32: [B, H, L, Lk]."""
        s = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.head_dim)
        return s.masked_fill(~mask, float("-inf"))

    def merge_heads(self, out):
        """[B, H, L, hd] -> wo([B, L, H*hd])."""
        B, H, L, hd = out.shape
        return self.wo(out.transpose(1, 2).reshape(B, L, H * hd))

    def forward(self, x, cos, sin, mask):
        q, k, v = self.qkv(x, cos, sin)
        probs = F.softmax(self.scores(q, k, mask), dim=-1).type_as(v)
        return self.merge_heads(probs @ v)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, attention: Optional[nn.Module] = None):
        super().__init__()
        self.attention = attention if attention is not None else Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(self, x, cos, sin, mask, **attn_kwargs):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, **attn_kwargs)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.vocab_size <= 0:
            raise ValueError("ModelArgs.vocab_size must be set (params.json's -1 is resolved from the tokenizer)")
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(self.make_block(i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)

    def make_block(self, layer_id: int) -> TransformerBlock:
        return TransformerBlock(self.args)

    def run_layers(self, h, positions, mask, layer_kwargs=None):
        """h [B, L, D] input embeddings -> final normed hidden [B, L, D].
        `layer_kwargs(i)` gives extra keyword arguments for layer i's attention."""
        cos, sin = rope_angles(positions, self.args.head_dim, self.args.rope_theta)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, **(layer_kwargs(i) if layer_kwargs else {}))
        return self.norm(h)

    def forward(self, tokens, positions=None, mask=None):
        """tokens [B, L] -> logits [B, L, vocab] (fp32)."""
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        if mask is None:
            mask = causal_mask(positions)
        h = self.run_layers(self.tok_embeddings(tokens), positions, mask)
        return self.output(h).float()
