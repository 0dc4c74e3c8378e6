"""From a `ModelConfig` to a ready model: find the backbone folder (Meta's or Hugging Face's) and its
tokenizer, read its hyper-parameters, stream its weights into TOPA with fresh or checkpointed
trainable tensors.

Where the backbone is (`--llama_model_path P`, `--model M`):
- `P` itself holds weights (Meta's `consolidated.NN.pth`, or Hugging Face's `config.json` +
  `*.safetensors`): `P` is the model folder and `--model` is not used, e.g.
  `--llama_model_path pretrained/Llama-2-7b-hf` or `--llama_model_path pretrained/Meta-Llama-3-8B`;
- otherwise `P/M/` is, in either format: `pretrained/llama2/7B/` (Meta's layout) or
  `pretrained/llama2/7B/` holding `config.json` + `*.safetensors`.
A folder with both formats, or with neither, is an error naming it and what it holds.

The tokenizer: Meta folders use `P/tokenizer.model` (Meta's layout keeps it beside the model folders;
when `P` is the model folder that is the file inside it). Hugging Face folders use the first of
`<folder>/tokenizer.model` (Llama-2 repositories ship the SentencePiece model),
`<folder>/original/tokenizer.model` (Llama-3 repositories ship Meta's tiktoken file there) and
`P/tokenizer.model`. `tokenizer.json` is not read.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from util.errors import CheckpointError, ConfigError, MissingFileError

from .adapter import TOPA, TOPAArgs, build_model
from .checkpoint import MetaShards, load_topa_checkpoint
from .hf import HFSafetensors, hf_params
from .tokenizer import Tokenizer, load_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FAMILIES = {"llama2": "sentencepiece", "llama3": "tiktoken"}  # backbone family -> its tokenizer kind


@dataclass
class ModelConfig:
    """What builds the model (the original flags of the same names). `llama_model_path` holds
    `<model>/` (Meta shards + params.json, or a Hugging Face folder) and `tokenizer.model`, or is itself
    a model folder (see the module docstring)."""
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


@dataclass
class Backbone:
    """A located backbone: `kind` "meta" or "hf", its folder, and its tokenizer file."""
    kind: str
    folder: Path
    tokenizer: Path


def _folder_kind(folder: Path) -> Optional[str]:
    """"meta", "hf", or None (no weights here); both formats at once is an error."""
    meta = sorted(p.name for p in folder.glob("consolidated.*.pth"))
    hf = sorted(p.name for p in folder.glob("*.safetensors"))
    config = (folder / "config.json").is_file()
    if meta and (hf or config):
        found = ", ".join(meta[:2] + hf[:2] + (["config.json"] if config else []))
        raise CheckpointError(f"{folder} holds both Meta shards and Hugging Face files ({found}): keep one format "
                              f"per folder")
    if meta:
        return "meta"
    if hf and not config:
        raise CheckpointError(f"{folder} holds {hf[0]} but no config.json (a Hugging Face folder needs both)")
    if config and not hf:
        others = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" ({others[0]}: only safetensors are read)" if others else ""
        raise CheckpointError(f"{folder} holds config.json but no *.safetensors{hint}")
    return "hf" if hf else None


def _listing(folder: Path, n: int = 8) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "") if names else "nothing"


def locate_backbone(cfg: ModelConfig) -> Backbone:
    """The backbone folder, its format and its tokenizer for `--llama_model_path`/`--model` (module docstring)."""
    root = Path(cfg.llama_model_path)
    if not root.is_dir():
        raise MissingFileError(f"--llama_model_path {root}: no such folder")
    kind, folder = _folder_kind(root), root
    if kind is None:
        folder = root / cfg.model
        if not folder.is_dir():
            raise MissingFileError(f"no model folder {folder} (--llama_model_path {root} --model {cfg.model}); "
                                   f"{root} holds: {_listing(root)}")
        kind = _folder_kind(folder)
        if kind is None:
            raise CheckpointError(f"{folder} holds no Llama weights (Meta's consolidated.NN.pth + params.json, or "
                                  f"Hugging Face's config.json + *.safetensors); it holds: {_listing(folder)}")
    if kind == "meta":
        tokenizer = root / "tokenizer.model"
        if not tokenizer.is_file():
            raise MissingFileError(f"tokenizer file not found: {tokenizer} (Meta's layout keeps it beside {folder.name}/)")
        return Backbone(kind, folder, tokenizer)
    tried = list(dict.fromkeys([folder / "tokenizer.model", folder / "original" / "tokenizer.model",
                                root / "tokenizer.model"]))
    for path in tried:
        if path.is_file():
            return Backbone(kind, folder, path)
    raise MissingFileError(f"no tokenizer for the Hugging Face folder {folder}: tried "
                           f"{', '.join(str(p) for p in tried)} (tokenizer.json is not read; Llama-3 repositories "
                           f"ship Meta's file as original/tokenizer.model)")


def resolve_dtype(precision: Optional[str], device: torch.device) -> torch.dtype:
    """Backbone compute dtype: bf16 by default on GPU, fp32 on CPU. bf16 on a GPU without native bf16
    (compute capability < 8, e.g. V100, T4) is an error that suggests `--precision fp16`: emulated bf16
    runs, but slowly, and falling back silently would change the run's numerics."""
    asked = precision is not None
    if precision is None:
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cuda" and not cuda_bf16_supported(device):
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"{name} ({device}) has no native bf16 support"
                          f"{'' if asked else ' (bf16 is the default on GPU)'}: use --precision fp16 "
                          f"(or --precision fp32)")
    return DTYPES[precision]


def cuda_bf16_supported(device: torch.device) -> bool:
    """Native bf16 on this CUDA device (compute capability >= 8, or any ROCm GPU)."""
    if not torch.cuda.is_available():
        return False  # there is no such device: the run fails where it first uses it
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


def load_tokenizer_for(cfg: ModelConfig, backbone: Optional[Backbone] = None) -> Tokenizer:
    backbone = backbone or locate_backbone(cfg)
    tok = load_tokenizer(backbone.tokenizer)
    want = FAMILIES[cfg.family]
    if tok.kind != want:
        raise CheckpointError(f"{tok.path} is a {tok.kind} tokenizer but the run says --{cfg.family} "
                              f"(which needs {want})")
    return tok


def model_args(cfg: ModelConfig, backbone: Backbone, tok: Tokenizer) -> TOPAArgs:
    """params.json (or config.json) + the run's TOPA settings; Llama-2's `vocab_size: -1` is taken from
    the tokenizer."""
    overrides = dict(adapter_len=cfg.adapter_len, adapter_layer=cfg.adapter_layer, max_feats=cfg.max_feats,
                     bias=cfg.bias, rope_theta=cfg.rope_theta)
    if backbone.kind == "meta":
        params = backbone.folder / "params.json"
        if not params.is_file():
            raise MissingFileError(f"no params.json in {backbone.folder} (--llama_model_path {cfg.llama_model_path} "
                                   f"--model {cfg.model})")
        args = TOPAArgs.from_params_json(params, **overrides)
    else:
        params = backbone.folder / "config.json"
        fields = hf_params(backbone.folder)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        try:
            args = TOPAArgs(**fields)
        except ValueError as e:
            raise CheckpointError(f"{params}: {e}") from None
    if args.vocab_size <= 0:
        args.vocab_size = tok.n_words
    elif args.vocab_size != tok.n_words:
        raise CheckpointError(f"{params} has vocab_size {args.vocab_size} but {tok.path} has {tok.n_words} tokens")
    return args


def open_weights(backbone: Backbone):
    """The backbone's weight source (read lazily, tensor by tensor, by `build_model`)."""
    return MetaShards(backbone.folder) if backbone.kind == "meta" else HFSafetensors(backbone.folder)


def load_topa(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, tokenizer: Optional[Tokenizer] = None,
              resume: Optional[str] = None):
    """The model of `cfg` with fresh TOPA tensors, or those of the TOPA checkpoint `resume`.
    Returns (model, tokenizer, checkpoint dict or None)."""
    backbone = locate_backbone(cfg)
    tok = tokenizer or load_tokenizer_for(cfg, backbone)
    args = model_args(cfg, backbone, tok)
    ckpt = load_topa_checkpoint(resume) if resume else None
    model = build_model(args, open_weights(backbone), dtype=dtype, device=device,
                        trainable=ckpt["model"] if ckpt else None, source=str(backbone.folder),
                        trainable_source=str(resume))
    return model, tok, ckpt


__all__ = ["TOPA", "ModelConfig", "Backbone", "locate_backbone", "load_topa", "load_tokenizer_for", "model_args",
           "open_weights", "resolve_dtype", "DTYPES"]
