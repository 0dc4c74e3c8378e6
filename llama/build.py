"""From a `ModelConfig` to a ready model: locate Meta's folder and tokenizer, read params.json, merge
shards, build TOPA with fresh or checkpointed trainable tensors."""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from util.errors import CheckpointError, ConfigError, MissingFileError

from .adapter import TOPA, TOPAArgs, build_model
from .checkpoint import load_meta_checkpoint, load_topa_checkpoint
from .tokenizer import Tokenizer, load_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FAMILIES = {"llama2": "sentencepiece", "llama3": "tiktoken"}  # backbone family -> its tokenizer kind


@dataclass
class ModelConfig:
    """What builds the model (the original flags of the same names). `llama_model_path` holds
    `<model>/` (shards + params.json) and `tokenizer.model`."""
    llama_model_path: str = "./pretrained/llama2/"
    model: str = "7B"
    family: str = "llama2"                # --llama2 / --llama3
    rope_theta: Optional[float] = None    # None: params.json's (released Llama-3 TOPA checkpoints: 10000)
    adapter_len: int = 50
    adapter_layer: Optional[int] = None   # None: every layer
    max_feats: int = 10
    bias: float = 3.0
    precision: Optional[str] = None       # None: bf16 on GPU, fp32 on CPU

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown backbone family {self.family!r} (llama2, llama3)")
        if self.precision is not None and self.precision not in DTYPES:
            raise ConfigError(f"--precision must be one of {', '.join(DTYPES)}, not {self.precision!r}")
        if self.adapter_len < 1 or self.max_feats < 1:
            raise ConfigError(f"--adapter_len ({self.adapter_len}) and --max_feats ({self.max_feats}) must be >= 1")

    @property
    def model_dir(self) -> Path:
        return Path(self.llama_model_path) / self.model

    @property
    def tokenizer_path(self) -> Path:
        return Path(self.llama_model_path) / "tokenizer.model"


def resolve_dtype(precision: Optional[str], device: torch.device) -> torch.dtype:
    """Backbone compute dtype: bf16 by default on GPU, fp32 on CPU."""
    if precision is None:
        precision = "bf16" if device.type == "cuda" else "fp32"
    return DTYPES[precision]


def load_tokenizer_for(cfg: ModelConfig) -> Tokenizer:
    tok = load_tokenizer(cfg.tokenizer_path)
    want = FAMILIES[cfg.family]
    if tok.kind != want:
        raise CheckpointError(f"{tok.path} is a {tok.kind} tokenizer but the run says --{cfg.family} "
                              f"(which needs {want})")
    return tok


def model_args(cfg: ModelConfig, tok: Tokenizer) -> TOPAArgs:
    """params.json + the run's TOPA settings; Llama-2's `vocab_size: -1` is taken from the tokenizer."""
    params = cfg.model_dir / "params.json"
    if not params.is_file():
        raise MissingFileError(f"no params.json in {cfg.model_dir} (--llama_model_path {cfg.llama_model_path} "
                               f"--model {cfg.model})")
    args = TOPAArgs.from_params_json(params, adapter_len=cfg.adapter_len, adapter_layer=cfg.adapter_layer,
                                     max_feats=cfg.max_feats, bias=cfg.bias, rope_theta=cfg.rope_theta)
    if args.vocab_size <= 0:
        args.vocab_size = tok.n_words
    elif args.vocab_size != tok.n_words:
        raise CheckpointError(f"{params} has vocab_size {args.vocab_size} but {tok.path} has {tok.n_words} tokens")
    return args


def load_topa(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, tokenizer: Optional[Tokenizer] = None,
              resume: Optional[str] = None):
    """The model of `cfg` with fresh TOPA tensors, or those of the TOPA checkpoint `resume`.
    Returns (model, tokenizer, checkpoint dict or None)."""
    tok = tokenizer or load_tokenizer_for(cfg)
    args = model_args(cfg, tok)
    backbone = load_meta_checkpoint(cfg.model_dir)
    ckpt = load_topa_checkpoint(resume) if resume else None
    model = build_model(args, backbone, dtype=dtype, device=device,
                        trainable=ckpt["model"] if ckpt else None, source=str(cfg.model_dir),
                        trainable_source=str(resume))
    del backbone
    return model, tok, ckpt


__all__ = ["TOPA", "ModelConfig", "load_topa", "load_tokenizer_for", "model_args", "resolve_dtype", "DTYPES"]
