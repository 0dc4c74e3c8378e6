"""From a `ModelConfig` to a ready model: locate Meta's folder and tokenizer, read params.json, read a
TOPA checkpoint and compare the settings it records with the run's, merge shards, build TOPA with fresh
or checkpointed trainable tensors."""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from util import dist
from util.errors import CheckpointError, ConfigError, MissingFileError

from .adapter import TOPA, TOPAArgs, build_model, load_trainable
from .checkpoint import load_meta_checkpoint, load_topa_checkpoint, recorded_flags
from .model import ModelArgs
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


ORIGINAL_ROPE_THETA = 10000.0  # the original code ran every backbone, Llama-3 included, with theta 10000


def _size(name) -> Optional[str]:
    """'7B' -> '7', 'llama-2-13b' -> '13'; None when the name holds no size."""
    m = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", str(name))
    return m.group(1) if m else None


def check_recorded_settings(ckpt: dict, cfg: ModelConfig, source: str, args: TOPAArgs) -> List[str]:
    """Compare the model settings that TOPA checkpoint `ckpt` records (its `args`: the original code's
    or ours) with this run's, before any backbone is loaded.

    Settings that change the math, and that tensor shapes cannot reveal (a 7B Llama-2 and an 8B Llama-3
    have the same TOPA shapes), are an error naming the flag to pass: backbone family, model size,
    RoPE theta, adapter_len, adapter_layer, max_feats. A checkpoint without a rope_theta record was
    written by the original code, which used theta 10000 for every backbone. Harmless differences
    (`--bias` only initialises fresh gates; the checkpoint's gates are loaded) and missing records are
    returned as notes and printed once (rank 0). `args` are the run's resolved model args."""
    rec = recorded_flags(ckpt)
    if not rec:
        notes = [f"{source} records no training settings: backbone family, model size, RoPE theta and "
                 "adapter settings were not compared with this run's"]
        _print_notes(notes)
        return notes
    wrong, notes, unrecorded = [], [], []

    def recorded(key):
        if key not in rec:
            unrecorded.append(key)
        return rec.get(key)

    # backbone family: only the records tell (same shapes)
    if "llama2" in rec or "llama3" in rec:
        family = "llama3" if rec.get("llama3") else "llama2" if rec.get("llama2") else None
        if family is None:
            notes.append(f"{source} records neither --llama2 nor --llama3 (the original code then used "
                         f"LLaMA-1): make sure {cfg.llama_model_path} holds the weights it was trained on")
        elif family != cfg.family:
            wrong.append(f"it was trained on a {'Llama-3' if family == 'llama3' else 'Llama-2'} backbone, this "
                         f"run loads --{cfg.family} (pass --{family} and that backbone's --llama_model_path)")
    else:
        unrecorded.append("llama2/llama3")
    # model size
    model = recorded("model")
    if model is not None and str(model) != str(cfg.model):
        a, b = _size(model), _size(cfg.model)
        if a is not None and b is not None and a != b:
            wrong.append(f"it was trained on --model {model}, this run loads --model {cfg.model}")
        else:
            notes.append(f"{source} was trained with --model {model}, this run uses --model {cfg.model}")
    # RoPE theta: ours record it (None = params.json's); the original code's checkpoints used 10000
    if "rope_theta" in rec:
        theta = rec["rope_theta"] if rec["rope_theta"] is not None else _params_theta(cfg)
    elif "llama2" in rec or "llama3" in rec:
        theta = ORIGINAL_ROPE_THETA
    else:
        theta = None
        unrecorded.append("rope_theta")
    if theta is not None and float(theta) != float(args.rope_theta):
        wrong.append(f"it was trained with RoPE theta {float(theta):g}, this run uses {float(args.rope_theta):g} "
                     f"(pass --rope_theta {float(theta):g})")
    # adapter prompt, frames
    for key, now in (("adapter_len", args.adapter_len), ("adapter_layer", args.adapter_layer),
                     ("max_feats", args.max_feats)):
        value = recorded(key)
        if key == "adapter_layer" and value is None and key in rec:
            value = args.n_layers  # ours: None = every layer
        if value is not None and int(value) != int(now):
            wrong.append(f"it was trained with --{key} {int(value)}, this run uses {int(now)} (pass --{key} {int(value)})")
    bias = rec.get("bias")
    if bias is not None and float(bias) != float(cfg.bias):
        notes.append(f"{source} was trained with --bias {float(bias):g}, this run says {float(cfg.bias):g} "
                     "(harmless: --bias only initialises fresh gates, the checkpoint's are loaded)")
    if wrong:
        raise CheckpointError(f"{source} does not match this run: " + "; ".join(wrong))
    if unrecorded:
        notes.append(f"{source} does not record {', '.join(unrecorded)}: not compared with this run's")
    _print_notes(notes)
    return notes


def _params_theta(cfg: ModelConfig) -> float:
    return ModelArgs.from_params_json(cfg.model_dir / "params.json").rope_theta


def _print_notes(notes: List[str]):
    if dist.is_main():
        for n in notes:
            print(f"note: {n}", flush=True)


def load_topa(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, tokenizer: Optional[Tokenizer] = None,
              resume: Optional[str] = None):
    """The model of `cfg` with fresh TOPA tensors, or those of the TOPA checkpoint `resume`, whose
    recorded settings are checked (`check_recorded_settings`) before the backbone is read.
    Returns (model, tokenizer, checkpoint dict or None)."""
    tok = tokenizer or load_tokenizer_for(cfg)
    args = model_args(cfg, tok)
    ckpt = None
    if resume:
        ckpt = load_topa_checkpoint(resume)
        check_recorded_settings(ckpt, cfg, str(resume), args)
    backbone = load_meta_checkpoint(cfg.model_dir)
    model = build_model(args, backbone, dtype=dtype, device=device, source=str(cfg.model_dir))
    del backbone
    if ckpt is not None:
        load_trainable(model, ckpt["model"], str(resume), trained_with=recorded_flags(ckpt))
    return model, tok, ckpt


__all__ = ["TOPA", "ModelConfig", "load_topa", "load_tokenizer_for", "model_args", "resolve_dtype", "DTYPES",
           "check_recorded_settings"]
