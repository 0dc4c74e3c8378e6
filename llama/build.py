"""From the original flags to a ready model: locate Meta's folder and tokenizer, read params.json,
merge shards, build TOPA with fresh or checkpointed trainable tensors."""
from pathlib import Path
from typing import Optional

import torch

from .adapter import TOPA, build_model
from .checkpoint import load_meta_checkpoint, load_topa_checkpoint
from .model import ModelArgs
from .tokenizer import Tokenizer, load_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(precision: Optional[str], device: torch.device) -> torch.dtype:
    """Backbone compute dtype: bf16 by default on GPU, fp32 on CPU."""
    if precision is None:
        precision = "bf16" if device.type == "cuda" else "fp32"
    return DTYPES[precision]


def model_paths(llama_model_path, model: str):
    """Original layout: `<llama_model_path>/<model>/` holds shards + params.json and
    `<llama_model_path>/tokenizer.model` the tokenizer."""
    root = Path(llama_model_path)
    return root / model, root / "tokenizer.model"


def load_tokenizer_for(llama_model_path, llama3: bool = False) -> Tokenizer:
    tok = load_tokenizer(Path(llama_model_path) / "tokenizer.model")
    want = "tiktoken" if llama3 else "sentencepiece"
    if tok.kind != want:
        raise ValueError(f"{tok.path} is a {tok.kind} tokenizer but the run says "
                         f"{'--llama3' if llama3 else '--llama2'} (which needs {want})")
    return tok


def load_topa(args, device: torch.device, dtype: torch.dtype, tokenizer: Optional[Tokenizer] = None,
              resume: Optional[str] = None):
    """Model for `args` (original flags: llama_model_path, model, max_feats, adapter_len,
    adapter_layer, bias, rope_theta). Returns (model, tokenizer, checkpoint dict or None)."""
    model_dir, _ = model_paths(args.llama_model_path, args.model)
    if not (model_dir / "params.json").is_file():
        raise FileNotFoundError(f"no params.json in {model_dir} (--llama_model_path {args.llama_model_path} "
                                f"--model {args.model})")
    tok = tokenizer or load_tokenizer_for(args.llama_model_path, getattr(args, "llama3", False))
    margs = ModelArgs.from_params_json(
        model_dir / "params.json", adapter_len=args.adapter_len, adapter_layer=getattr(args, "adapter_layer", None),
        max_feats=args.max_feats, bias=args.bias, rope_theta=getattr(args, "rope_theta", None))
    if margs.vocab_size <= 0:
        margs.vocab_size = tok.n_words
    elif margs.vocab_size != tok.n_words:
        raise ValueError(f"{model_dir}/params.json has vocab_size {margs.vocab_size} but {tok.path} has "
                         f"{tok.n_words} tokens")
    backbone = load_meta_checkpoint(model_dir)
    ckpt = load_topa_checkpoint(resume) if resume else None
    model = build_model(margs, backbone, dtype=dtype, device=device,
                        trainable=ckpt["model"] if ckpt else None, source=str(model_dir),
                        trainable_source=str(resume))
    del backbone
    return model, tok, ckpt


__all__ = ["TOPA", "load_topa", "load_tokenizer_for", "model_paths", "resolve_dtype", "DTYPES"]
