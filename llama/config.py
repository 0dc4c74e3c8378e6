"""What builds the model, importable without torch (flags, `--help`, `--model_args`): `ModelConfig`, the
one source of the model settings' defaults, types and help texts (util/settings.py derives the flags
and the rest from it), the backbone families and the attention kernels. `llama/build.py` turns a
`ModelConfig` into a model; `llama/adapter.py`'s TOPAArgs takes its TOPA defaults from here.
"""
import math
from dataclasses import dataclass
from typing import Optional

from util.errors import ConfigError
from util.settings import PRECISIONS, setting

FAMILIES = {"llama2": "sentencepiece", "llama3": "tiktoken"}  # backbone family -> its tokenizer kind
ATTN_IMPLS = ("sdpa", "eager")                               # fused kernels; the reference math


@dataclass
class ModelConfig:
    """The backbone and the TOPA tensors (the original flags of the same names). `llama_model_path` holds
    `<model>/` (Meta shards + params.json, or a Hugging Face folder) and `tokenizer.model`, or is itself
    a model folder (llama/build.py)."""
    GROUP = "model"

    llama_model_path: str = setting(
        "./pretrained/llama2/",
        "folder holding <model>/ (Meta's shards + params.json, or a Hugging Face config.json + *.safetensors) and "
        "tokenizer.model; or a Hugging Face (or Meta) model folder itself")
    model: str = setting("7B", "model folder under --llama_model_path (7B, 13B, 8B, 3B, 1B); not used when "
                               "--llama_model_path holds the weights itself")
    family: str = setting("llama2", "backbone family", switches={
        "llama2": "Llama-2 backbone (SentencePiece tokenizer; the default)",
        "llama3": "Llama-3, 3.1, 3.2 backbone (tiktoken tokenizer)"})
    rope_theta: Optional[float] = setting(
        None, "RoPE theta (default: params.json's or config.json's; released Llama-3 TOPA checkpoints expect 10000)")
    rope_scaling_factor: Optional[float] = setting(
        None, "factor of the backbone's Llama-3.1/3.2 \"llama3\" RoPE scaling, 1: no scaling (default: the backbone's: "
              "config.json's rope_scaling; Meta folders: 8, or 32 for tied Llama-3.2 1B/3B)")
    adapter_len: int = setting(50, "adapter prompt rows per adapted layer (50 in every published script and "
                                   "checkpoint)")
    adapter_layer: Optional[int] = setting(None, "adapted layers, the last ones (default: all of them)")
    max_feats: int = setting(10, "T: video frames fed to the LLM")
    bias: float = setting(3.0, "gate2 init is -bias (the original code's default; the published training scripts "
                               "pass 3.5, llama/backbones.py)")
    precision: Optional[str] = setting(None, "backbone compute dtype (default: bf16 on GPU, fp32 on CPU)",
                                       choices=sorted(PRECISIONS))
    attn_impl: str = setting(ATTN_IMPLS[0], "attention kernels: sdpa (fused) or eager (the reference math with an "
                                            "explicit fp32 softmax; slower, for checking)", choices=ATTN_IMPLS)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown backbone family {self.family!r} (llama2, llama3)")
        if self.attn_impl not in ATTN_IMPLS:
            raise ConfigError(f"--attn_impl must be one of {', '.join(ATTN_IMPLS)}, not {self.attn_impl!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.rope_scaling_factor is not None and not self.rope_scaling_factor >= 1:
            raise ConfigError(f"--rope_scaling_factor must be >= 1 (1: no RoPE scaling), "
                              f"not {self.rope_scaling_factor}")
        if self.adapter_len < 1 or self.max_feats < 1:
            raise ConfigError(f"--adapter_len ({self.adapter_len}) and --max_feats ({self.max_feats}) must be >= 1")
        if self.adapter_layer is not None and self.adapter_layer < 1:
            raise ConfigError(f"--adapter_layer must be >= 1, got {self.adapter_layer}")
        if self.rope_theta is not None and not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise ConfigError(f"--rope_theta must be a positive number, got {self.rope_theta}")
        if not math.isfinite(self.bias):
            raise ConfigError(f"--bias must be a finite number, got {self.bias}")
