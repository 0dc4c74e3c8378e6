"""Hugging Face-format Llama folders (`config.json` + `*.safetensors`, e.g. `meta-llama/Llama-2-7b-hf`,
`meta-llama/Meta-Llama-3-8B`) as a weight source, read into the same model as Meta's folders.

    config.json  -> ModelArgs: hidden_size -> dim, num_hidden_layers -> n_layers, num_attention_heads ->
                    n_heads, num_key_value_heads -> n_kv_heads, vocab_size, rms_norm_eps -> norm_eps,
                    rope_theta (v5 files: rope_parameters.rope_theta), rope_scaling (v5: rope_parameters)
                    of rope_type "llama3" -> rope_scaling (Llama-3.1, 3.2; any other rope_type is refused),
                    tie_word_embeddings -> tie_embeddings; intermediate_size is checked against the SwiGLU
                    width rule of Meta's params.json (see `ffn_args`)
    tensors      -> Meta keys: model.embed_tokens -> tok_embeddings, model.norm -> norm, lm_head -> output
                    (not read when tied: the model's output layer is its embedding), and per layer i, model.layers.i.
                    self_attn.{q,k,v,o}_proj -> layers.i.attention.{wq,wk,wv,wo},
                    mlp.{gate,up,down}_proj -> layers.i.feed_forward.{w1,w3,w2},
                    input_layernorm -> attention_norm, post_attention_layernorm -> ffn_norm

Rotary layout. Meta's RoPE rotates adjacent channels (2k, 2k+1) of each head; Hugging Face's rotates
channel k with channel k + hd/2 ("rotate half"). Meta-to-HF conversion therefore reorders the rows of
wq and wk within each head: HF row `j*hd/2 + k` (j = 0, 1) is Meta row `2k + j`. Loading undoes it:
viewed as [heads, 2, hd/2, dim], the rows are transposed back to [heads, hd/2, 2, dim] (wq with
`num_attention_heads`, wk with `num_key_value_heads`). Nothing else differs.

Tensors are read one at a time (`safetensors.safe_open`), converted to the model's dtype on copy.
Llama-2 HF checkpoints are stored in fp16, Llama-3 in bf16; Meta's in bf16.
"""
import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from util.errors import CheckpointError, MissingFileError

from .fields import Field, read_fields
from .model import RopeScaling

HF_LAYER_KEYS = {
    "self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight", "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
HF_TOP_KEYS = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
               "lm_head.weight": "output.weight"}
HF_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)  # a buffer some older files carry; recomputed here


def meta_key(hf_key: str) -> Optional[str]:
    """The Meta name of an HF Llama tensor (None: not a Llama tensor)."""
    if hf_key in HF_TOP_KEYS:
        return HF_TOP_KEYS[hf_key]
    parts = hf_key.split(".", 3)  # model, layers, i, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit() and parts[3] in HF_LAYER_KEYS:
        return f"layers.{parts[2]}.{HF_LAYER_KEYS[parts[3]]}"
    return None


def read_config(folder) -> dict:
    path = Path(folder) / "config.json"
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"no config.json in {folder}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a valid config.json ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return cfg


def ffn_args(dim: int, intermediate_size: int) -> Tuple[int, Optional[float]]:
    """(multiple_of, ffn_dim_multiplier) with which Meta's width rule gives `intermediate_size` for `dim`.

    The rule: h = int(2*4*dim/3); h = int(multiplier*h) if a multiplier is set; round h up to a multiple
    of `multiple_of`. config.json keeps only the result, so the published pairs are tried first
    (Llama-2: 256 / none; Llama-3: 1024 or 4096 / 1.3), then `multiple_of = intermediate_size`, which
    reproduces any width that is at least int(8*dim/3), then a multiplier for a smaller one."""
    from .model import ModelArgs

    h = int(2 * 4 * dim / 3)
    candidates = [(256, None), (1024, 1.3), (4096, 1.3), (intermediate_size, None)]
    if 0 < intermediate_size < h:
        candidates.append((intermediate_size, intermediate_size / h))
    for multiple_of, mult in candidates:
        if ModelArgs(dim=dim, n_heads=1, multiple_of=multiple_of, ffn_dim_multiplier=mult).ffn_hidden == intermediate_size:
            return multiple_of, mult
    raise CheckpointError(f"intermediate_size {intermediate_size} cannot come from Meta's SwiGLU width rule "
                          f"for hidden_size {dim}")


# config.json's fields, typed (llama/fields.py); `to` names the ModelArgs field a value gives. The others
# are checked and read below (rope_theta may sit in rope_parameters; the width and the head size are checked
# against the ModelArgs rules; hidden_act, biases and pretraining_tp must say what Llama's math does).
CONFIG_JSON = (
    Field("model_type", str),
    Field("hidden_size", int, low=1, to="dim"), Field("num_hidden_layers", int, low=1, to="n_layers"),
    Field("num_attention_heads", int, low=1, to="n_heads"),
    Field("num_key_value_heads", int, None, low=1, nullable=True, to="n_kv_heads"),
    Field("vocab_size", int, low=1, to="vocab_size"), Field("intermediate_size", int, low=1),
    Field("rms_norm_eps", float, low=0, above=True, to="norm_eps"),
    Field("rope_theta", float, None, low=0, above=True, nullable=True),
    Field("tie_word_embeddings", bool, False, nullable=True, to="tie_embeddings"),
    Field("head_dim", int, None, low=1, nullable=True), Field("hidden_act", str, "silu"),
    Field("attention_bias", bool, False, nullable=True), Field("mlp_bias", bool, False, nullable=True),
    Field("pretraining_tp", int, 1, low=1, nullable=True),
    Field("max_position_embeddings", int, None, low=1, nullable=True),
)
# a rope_scaling / rope_parameters object; "type" is the name before transformers 4.45
ROPE_JSON = (Field("rope_type", str, None, nullable=True), Field("type", str, None, nullable=True),
             Field("rope_theta", float, None, low=0, above=True, nullable=True))
LLAMA3_JSON = (Field("factor", float, low=1, to="factor"),
               Field("low_freq_factor", float, low=0, above=True, to="low_freq_factor"),
               Field("high_freq_factor", float, low=0, above=True, to="high_freq_factor"),
               Field("original_max_position_embeddings", int, low=1, to="original_max_position_embeddings"))
LLAMA3_SCALING = tuple(f.key for f in LLAMA3_JSON)
SCALING_NUMBERS = LLAMA3_SCALING + ("beta_fast", "beta_slow", "short_factor", "long_factor", "attention_factor")


def hf_params(folder) -> dict:
    """config.json of a Llama folder -> the ModelArgs fields (Meta's names, as in params.json).
    Every field that changes the math is typed (`CONFIG_JSON`); anything the math implemented here does
    not do (another model type, rope scaling, biases, another activation or head size) and fields that
    disagree are an error naming the field and the file."""
    path = Path(folder) / "config.json"
    cfg = read_config(folder)
    values = read_fields(cfg, CONFIG_JSON, path)
    if values["model_type"] != "llama":
        raise CheckpointError(f"{path}: model_type is {values['model_type']!r}, not 'llama'")
    if values["hidden_act"] != "silu":
        raise CheckpointError(f"{path}: hidden_act {values['hidden_act']!r} is not Llama's silu")
    for key in ("attention_bias", "mlp_bias"):
        if values[key]:
            raise CheckpointError(f"{path}: {key}=true is not Llama (no biases)")
    args = {f.to: values[f.key] for f in CONFIG_JSON if f.to}
    dim, n_heads = args["dim"], args["n_heads"]
    if values["head_dim"] not in (None, dim // n_heads):
        raise CheckpointError(f"{path}: head_dim {values['head_dim']} is not hidden_size / num_attention_heads")
    try:
        args["multiple_of"], args["ffn_dim_multiplier"] = ffn_args(dim, values["intermediate_size"])
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    args["n_kv_heads"] = args["n_kv_heads"] or n_heads
    args["rope_theta"], args["rope_scaling"] = rope_settings(cfg, values["rope_theta"], path)
    return args


def hf_context(folder) -> Optional[int]:
    """config.json's max_position_embeddings (the positions the model was trained for), None if absent."""
    return read_fields(read_config(folder), CONFIG_JSON, Path(folder) / "config.json")["max_position_embeddings"]


def rope_settings(cfg: dict, theta: Optional[float], path) -> Tuple[float, Optional[RopeScaling]]:
    """(rope_theta, RoPE scaling) of config.json: rope_theta at the top or (transformers 5) in
    rope_parameters, the scaling in rope_scaling or rope_parameters (`rope_scaling`). Where both places
    say it, they must agree."""
    objects = {}
    for field in ("rope_parameters", "rope_scaling"):
        obj = cfg.get(field) or {}
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: '{field}' must be a JSON object")
        objects[field] = obj
    inner = read_fields(objects["rope_parameters"], ROPE_JSON, f"{path}: rope_parameters")["rope_theta"]
    if theta is not None and inner is not None and theta != inner:
        raise CheckpointError(f"{path}: rope_theta {theta:g} and rope_parameters.rope_theta {inner:g} disagree")
    said = {field: rope_scaling(obj, f"{path}: {field}") for field, obj in objects.items()}
    stated = [(f, v) for f, v in said.items() if v != "unstated"]
    if len(stated) == 2 and stated[0][1] != stated[1][1]:
        raise CheckpointError(f"{path}: rope_parameters and rope_scaling disagree ({_scaling_text(stated[0][1])} "
                              f"and {_scaling_text(stated[1][1])}): keep one of them")
    scaling = stated[0][1] if stated else None
    return (theta if theta is not None else inner if inner is not None else 10000.0), scaling


def _scaling_text(s: Optional[RopeScaling]) -> str:
    return "no scaling" if s is None else (f"factor {s.factor:g}, low_freq_factor {s.low_freq_factor:g}, "
                                           f"high_freq_factor {s.high_freq_factor:g}, original_max_position_"
                                           f"embeddings {s.original_max_position_embeddings}")


def rope_scaling(rope: dict, where: str):
    """One rope_scaling / rope_parameters object: None (rope_type "default", or absent with no scaling
    numbers), Meta's "llama3" scaling with its four numbers, or "unstated" (an empty object, or
    rope_parameters holding rope_theta only). Another rope_type (linear, dynamic, yarn, ...) changes the
    math differently, and scaling numbers without a rope_type say no scaling to transformers while the
    numbers say otherwise: errors naming the field."""
    kinds = read_fields(rope, ROPE_JSON, where)
    if kinds["rope_type"] and kinds["type"] and kinds["rope_type"] != kinds["type"]:
        raise CheckpointError(f"{where}: rope_type {kinds['rope_type']!r} and type {kinds['type']!r} disagree")
    key = "rope_type" if kinds["rope_type"] else "type"
    rope_type = kinds[key]
    if rope_type is None:
        numbers = [k for k in SCALING_NUMBERS if k in rope]
        if numbers:
            raise CheckpointError(f"{where} holds scaling numbers ({', '.join(numbers)}) but no rope_type: add "
                                  "\"rope_type\": \"llama3\" (Llama-3.1/3.2) or remove them")
        return "unstated"
    if rope_type == "default":
        return None
    if rope_type != "llama3":
        raise CheckpointError(f"{where}.{key} {rope_type!r} is not supported (only Llama-3.1/3.2's "
                              f"\"llama3\" RoPE scaling is)")
    missing = [k for k in LLAMA3_SCALING if k not in rope]
    if missing:
        raise CheckpointError(f"{where} of rope_type \"llama3\" needs numbers {', '.join(missing)}")
    numbers = read_fields(rope, LLAMA3_JSON, where)
    try:
        scaling = RopeScaling(**{f.to: numbers[f.key] for f in LLAMA3_JSON})
    except ValueError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return None if scaling.factor == 1 else scaling


class HFSafetensors:
    """The `*.safetensors` files of an HF Llama folder as a weight source (see `llama.weights`):
    `shapes` in Meta's names, `read_into` one tensor at a time with the rotary row order undone.
    Tied folders (`tie_word_embeddings`, Llama-3.2 1B/3B) have no `lm_head.weight`: the model reads only
    the embedding (`build_model`); without the flag the missing tensor is an error, like any other."""

    def __init__(self, folder):
        from safetensors import safe_open

        self.folder = Path(folder)
        params = hf_params(folder)
        self.heads = {"attention.wq.weight": params["n_heads"], "attention.wk.weight": params["n_kv_heads"]}
        self.files = sorted(self.folder.glob("*.safetensors"))
        if not self.files:
            raise MissingFileError(f"no *.safetensors in {self.folder}")
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():  # a sharded download: every file it names must be here
            try:
                listed = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{index}: not a safetensors index ({e!r})") from None
            missing = sorted(listed - {p.name for p in self.files})
            if missing:
                raise MissingFileError(f"{index} lists {', '.join(missing)}, not in {self.folder} "
                                       f"(an incomplete download?)")
        self.where: Dict[str, Tuple[int, str]] = {}  # Meta key -> (index in self.files, HF key)
        self.shapes: Dict[str, tuple] = {}
        self.handles = []
        for i, path in enumerate(self.files):
            try:
                f = safe_open(str(path), framework="pt", device="cpu")
            except Exception as e:  # safetensors raises its own error types, none naming the file
                raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
            self.handles.append(f)
            for hf_key in f.keys():
                if hf_key.endswith(HF_IGNORED_SUFFIXES):
                    continue
                key = meta_key(hf_key)
                if key is None:
                    raise CheckpointError(f"{path}: tensor '{hf_key}' is not part of a Llama model")
                if key in self.where:
                    raise CheckpointError(f"{self.folder}: tensor '{hf_key}' is in both "
                                          f"{self.files[self.where[key][0]].name} and {path.name}")
                self.where[key] = (i, hf_key)
                self.shapes[key] = tuple(f.get_slice(hf_key).get_shape())

    def read_into(self, key: str, out: torch.Tensor):
        i, hf_key = self.where[key]
        t = self.handles[i].get_tensor(hf_key)
        n_heads = self.heads.get(key.split(".", 2)[-1]) if key.startswith("layers.") else None
        if n_heads is None:
            out.copy_(t)
            return
        rows, dim = t.shape
        half = rows // n_heads // 2
        # HF rows [heads, 2, hd/2] -> Meta rows [heads, hd/2, 2] (module docstring)
        out.view(n_heads, half, 2, dim).copy_(t.view(n_heads, 2, half, dim).transpose(1, 2))
