"""Llama-2 / Llama-3 / Llama-3.1 / Llama-3.2 decoder in Meta's layout (keys, shapes and numerics of Meta's
`model.py`). Llama-3.1 and 3.2 are Llama-3 with "llama3" scaled rotary frequencies (`RopeScaling`,
`llama3_inv_freq`); Llama-3.2 1B/3B also tie the output layer to the token embeddings (`tie_embeddings`:
one tensor serves both).

Knows nothing about video: TOPA's additions live in `llama/adapter.py`. Differences from Meta's
inference code: positions are explicit per token (so packed sequences and per-row offsets work), the
attention mask is explicit (bool, True = may attend; None = causal in token order), and nothing global
is touched (no default tensor type, no `.cuda()`); build on the `meta` device under `skip_init()` (no
random initialisation that the weights overwrite) and load weights with `assign=True`.

Attention runs `torch.nn.functional.scaled_dot_product_attention` ("sdpa", the default) or the
explicit fp32-softmax math ("eager", the reference the fused path is tested against); the choice is
an attribute of each model (`Transformer.set_attn_impl`), never global. GQA never repeats K/V in the
fused path. A `LayerCache` per layer holds keys/values for incremental decoding.
"""
import json
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from .config import ATTN_IMPLS
from .fields import Field, read_fields


@dataclass(frozen=True)
class RopeScaling:
    """Meta's "llama3" RoPE scaling (Llama-3.1, 3.2, 3.3): rotary wavelengths shorter than
    `original_max_position_embeddings / high_freq_factor` keep their frequency, those longer than
    `original_max_position_embeddings / low_freq_factor` are divided by `factor`, and the band between is
    interpolated smoothly (`llama3_inv_freq`). Every Meta release uses low 1, high 4, original 8192;
    the factor is 8 (Llama-3.1, 3.3, 3.2 11B/90B) or 32 (Llama-3.2 1B/3B). factor 1 changes nothing."""
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if not (self.factor >= 1 and self.low_freq_factor > 0 and self.high_freq_factor > self.low_freq_factor
                and self.original_max_position_embeddings >= 1):
            raise ValueError(f"RoPE scaling {self} is not valid: needs factor >= 1, 0 < low_freq_factor < "
                             f"high_freq_factor, original_max_position_embeddings >= 1")


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
    rope_scaling: Optional[RopeScaling] = None  # Llama-3.1/3.2 (params.json `use_scaled_rope`)
    tie_embeddings: bool = False                # output layer = token embeddings (Llama-3.2 1B/3B)

    def __post_init__(self):
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
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
    def from_params_json(cls, path, scaling_factor: float = 8.0, **overrides) -> "ModelArgs":
        """Read Meta's params.json (the fields of `PARAMS_JSON`, typed; keys we do not know are an error:
        they could change the math).

        `use_scaled_rope: true` (Llama-3.1, 3.2) is Meta's "llama3" RoPE scaling with the factor of
        `rope_scaling_factor` (and `rope_high_freq_factor`) when the file states them (Meta's names, used
        from Llama-4 on); the Llama-3.1 and 3.2 files do not, and Meta's reference `apply_scaling` then
        uses 8: `scaling_factor` is that default (`llama.build` passes 32 for the tied 3.2 1B/3B folders).
        `overrides` with value None are ignored."""
        from util.errors import CheckpointError
        try:
            with open(path, encoding="utf-8") as f:
                params = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a valid params.json ({e})") from None
        if not isinstance(params, dict):
            raise CheckpointError(f"{path}: expected a JSON object of model hyper-parameters")
        unknown = set(params) - {f.key for f in PARAMS_JSON}
        if unknown:
            raise CheckpointError(f"{path}: unknown params.json keys {sorted(unknown)}")
        values = read_fields(params, PARAMS_JSON, path)
        args = {f.to: values[f.key] for f in PARAMS_JSON if f.to}
        args.update({k: v for k, v in overrides.items() if v is not None})
        scaling = {k: values[k] for k in ("rope_scaling_factor", "rope_high_freq_factor") if values[k] is not None}
        try:
            if values["use_scaled_rope"]:
                args["rope_scaling"] = RopeScaling(factor=scaling.get("rope_scaling_factor", float(scaling_factor)),
                                                   high_freq_factor=scaling.get("rope_high_freq_factor", 4.0))
            elif scaling:
                raise ValueError(f"{', '.join(sorted(scaling))} without use_scaled_rope=true")
            return cls(**args)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from None


# Meta's params.json: sizes are integers >= 1 (vocab_size -1: the tokenizer's), the rest positive numbers;
# n_kv_heads and ffn_dim_multiplier may be null. max_seq_len and max_batch_size are Meta's runtime limits:
# checked, not used.
PARAMS_JSON = (
    Field("dim", int, low=1, to="dim"), Field("n_layers", int, low=1, to="n_layers"),
    Field("n_heads", int, low=1, to="n_heads"), Field("n_kv_heads", int, None, low=1, nullable=True, to="n_kv_heads"),
    Field("vocab_size", int, -1, low=1, also=(-1,), to="vocab_size"),
    Field("multiple_of", int, 256, low=1, to="multiple_of"),
    Field("ffn_dim_multiplier", float, None, low=0, above=True, nullable=True, to="ffn_dim_multiplier"),
    Field("norm_eps", float, 1e-5, low=0, above=True, to="norm_eps"),
    Field("rope_theta", float, 10000.0, low=0, above=True, to="rope_theta"),
    Field("use_scaled_rope", bool, False),
    Field("rope_scaling_factor", float, None, low=0, above=True),
    Field("rope_high_freq_factor", float, None, low=0, above=True),
    Field("max_seq_len", int, None, low=1), Field("max_batch_size", int, None, low=1),
)


class skip_init(TorchFunctionMode):
    """`with torch.device("meta"), skip_init(): model = ...`: modules are built without their random
    initialisation (`reset_parameters`' `nn.init` calls and in-place random fills return their tensor
    as it is). For weights that are loaded next: a random fill on the `meta` device computes nothing
    but costs a process 1.5-3 s the first time (`normal_` on `meta` imports torch's decompositions).
    Scoped to the `with` block and the current thread; factories (`torch.ones`, `torch.full`) still run."""

    INITS = frozenset([getattr(nn.init, n) for n in (
        "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
        "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")]
        + [torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.INITS:
            return args[0] if args else kwargs.get("tensor", kwargs.get("self"))
        return func(*args, **kwargs)


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

def rope_inv_freq(head_dim: int, theta: float, scaling: Optional[RopeScaling] = None,
                  device=None) -> torch.Tensor:
    """The rotary frequencies theta^(-2k/head_dim), k < head_dim/2 (fp32), scaled when `scaling` is set."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim))
    return inv_freq if scaling is None else llama3_inv_freq(inv_freq, scaling)


def llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Meta's "llama3" scaling of rotary frequencies (`apply_scaling` of Meta's Llama-3.1 code; Hugging
    Face's rope_type "llama3"): by wavelength w = 2*pi/f, with L = original_max_position_embeddings,
    w < L/high keeps f, w > L/low gives f/factor, and between them
    f' = (1 - a) f/factor + a f with a = (L/w - low) / (high - low) (a is 1 and 0 at the two edges)."""
    wavelen = 2 * math.pi / inv_freq
    L = s.original_max_position_embeddings
    smooth = (L / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    band = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    out = torch.where(wavelen > L / s.low_freq_factor, inv_freq / s.factor, band)
    return torch.where(wavelen < L / s.high_freq_factor, inv_freq, out)


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float, scaling: Optional[RopeScaling] = None):
    """positions [B, L] (int) -> (cos, sin) each [B, 1, L, head_dim/2] in fp32."""
    inv_freq = rope_inv_freq(head_dim, theta, scaling, positions.device)
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


# ---- attention kernels: `eager` (the reference math) and `sdpa` (fused) ----

def sdpa(q, k, v, mask, scale: float) -> torch.Tensor:
    """Fused attention. q [B, H, Lq, e]; k, v [B, Hkv, Lk, e] (GQA: not repeated); mask bool
    [B|1, 1, Lq, Lk] (True = may attend) or None = causal in token order (Lq == Lk) -> [B, H, Lq, e].

    Causal calls pass `is_causal` and `enable_gqa`, which the flash kernels take. Masked calls fold the
    query heads of each kv head into the query length instead, so kernels that take a mask but not
    GQA (CUDA memory-efficient attention) still run and K/V are never repeated."""
    rep = q.shape[1] // k.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=rep > 1)
    if rep == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    B, H, L, e = q.shape
    qg = q.reshape(B, H // rep, rep * L, e)                                   # [B, Hkv, rep*L, e]
    mg = mask[:, :, None].expand(-1, -1, rep, -1, -1).flatten(2, 3)            # [B|1, 1, rep*L, Lk]
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mg, scale=scale)  # [B, Hkv, rep*L, e]
    return out.view(B, H, L, e)


class LayerCache:
    """One layer's keys and values for a batch whose rows all append at the same index; the buffers
    ([B, Hkv, capacity, e], the compute dtype) are allocated at the first write. `prompt_kv` holds
    whatever per-call constant K/V the layer wants to keep (TOPA: its adapter prompt's)."""

    def __init__(self, capacity: int):
        self.capacity, self.n = capacity, 0
        self.k = self.v = self.prompt_kv = None

    def seeded(self, rows: int, capacity: int) -> "LayerCache":
        """A cache of `rows` rows and `capacity` positions that starts with this one-row cache's keys
        and values (a prompt prefix that every row shares) and its `prompt_kv`."""
        c = LayerCache(capacity)
        c.k = self.k.new_zeros(rows, self.k.shape[1], capacity, self.k.shape[3])
        c.v = self.v.new_zeros(rows, self.v.shape[1], capacity, self.v.shape[3])
        c.k[:, :, :self.n] = self.k[:, :, :self.n]
        c.v[:, :, :self.n] = self.v[:, :, :self.n]
        c.n, c.prompt_kv = self.n, self.prompt_kv
        return c

    def update(self, k, v, mask):
        """Append k, v [B, Hkv, L, e]; return every key and value so far [B, Hkv, n, e]. `mask` is the
        call's attention mask: None (causal in token order) only fits a call on an empty cache."""
        L = k.shape[2]
        if mask is None and self.n:
            raise ValueError("a call that continues a KV cache needs an explicit mask")
        if self.n + L > self.capacity:
            raise ValueError(f"KV cache holds {self.capacity} positions; {self.n} used, {L} more asked")
        if self.k is None:
            self.k = k.new_zeros(*k.shape[:2], self.capacity, k.shape[3])
            self.v = v.new_zeros(*v.shape[:2], self.capacity, v.shape[3])
        self.k[:, :, self.n:self.n + L] = k
        self.v[:, :, self.n:self.n + L] = v
        self.n += L
        return self.k[:, :, :self.n], self.v[:, :, :self.n]


class Attention(nn.Module):
    """Self-attention. `impl` picks the kernel: "sdpa" (fused, the default) or "eager" (explicit fp32
    softmax, the reference); set it with `Transformer.set_attn_impl`."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.impl = "sdpa"
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)

    def project(self, x, cos, sin):
        """x [B, L, D] -> q [B, H, L, hd], k, v [B, Hkv, L, hd], RoPE on q and k."""
        B, L, _ = x.shape
        q = self.wq(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)     # [B, H, L, hd]
        k = self.wk(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, L, hd]
        v = self.wv(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, L, hd]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def scores(self, q, k, mask):
        """Masked attention logits in fp32: [B, H, L, Lk] (k already repeated; mask None = causal)."""
        s = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.head_dim)
        if mask is None:
            mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril()
        return s.masked_fill(~mask, float("-inf"))

    def attend(self, q, k, v, mask, bias=None):
        """softmax(q k^T / sqrt(hd) [+ bias]) v: q [B, H, L, e], k, v [B, Hkv, Lk, e] -> [B, H, L, e].
        `bias` (fp32 [B, H, L, Lk], added to the logits) is for the eager kernel only."""
        if self.impl == "eager":
            rep = self.n_heads // self.n_kv_heads
            s = self.scores(q, repeat_kv(k, rep), mask)
            if bias is not None:
                s = s + bias
            return F.softmax(s, dim=-1).type_as(v) @ repeat_kv(v, rep)
        return sdpa(q, k, v, mask, 1.0 / math.sqrt(self.head_dim))

    def merge_heads(self, out):
        """[B, H, L, hd] -> wo([B, L, H*hd])."""
        B, H, L, hd = out.shape
        return self.wo(out.transpose(1, 2).reshape(B, L, H * hd))

    def forward(self, x, cos, sin, mask, cache: Optional[LayerCache] = None):
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, mask)
        return self.merge_heads(self.attend(q, k, v, mask))


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
    def __init__(self, args: ModelArgs, attn_impl: str = "sdpa"):
        super().__init__()
        if args.vocab_size <= 0:
            raise ValueError("ModelArgs.vocab_size must be set (params.json's -1 is resolved from the tokenizer)")
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(self.make_block(i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.tie_weights()
        self.set_attn_impl(attn_impl)
        self.grad_checkpointing = False  # recompute each block in backward instead of keeping its activations

    def make_block(self, layer_id: int) -> TransformerBlock:
        return TransformerBlock(self.args)

    def tie_weights(self):
        """With `tie_embeddings`, the output layer's weight is the token embedding's Parameter itself (one
        tensor; `named_parameters` lists it once, as `tok_embeddings.weight`). Call again after replacing
        `tok_embeddings.weight`."""
        if self.args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def set_attn_impl(self, impl: str) -> "Transformer":
        """Attention kernel of every layer of this model: "sdpa" (fused, the default) or "eager" (the reference)."""
        if impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, not {impl!r}")
        self.attn_impl = impl
        for layer in self.layers:
            layer.attention.impl = impl
        return self

    def run_layers(self, h, positions, mask, layer_kwargs=None):
        """h [B, L, D] input embeddings -> final normed hidden [B, L, D].
        mask: bool [B, 1, L, Lk] (True = may attend) or None = causal in token order (the fused kernel
        then runs its causal fast path; right padding may see real keys, which is harmless as long as
        padding is never scored). `layer_kwargs(i)` gives extra keyword arguments for layer i's attention.
        With `grad_checkpointing` (and autograd on) each block keeps only its input for backward and runs
        again there."""
        cos, sin = rope_angles(positions, self.args.head_dim, self.args.rope_theta, self.args.rope_scaling)
        for i, layer in enumerate(self.layers):
            kwargs = layer_kwargs(i) if layer_kwargs else {}
            if self.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(layer, h, cos, sin, mask, use_reentrant=False, **kwargs)
            else:
                h = layer(h, cos, sin, mask, **kwargs)
        return self.norm(h)

    def forward(self, tokens, positions=None, mask=None):
        """tokens [B, L] -> logits [B, L, vocab] (fp32). mask None = causal."""
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        h = self.run_layers(self.tok_embeddings(tokens), positions, mask)
        return self.output(h).float()
