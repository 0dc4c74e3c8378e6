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

A TOPA checkpoint given with `resume` is read, and the settings it records are compared with the run's
(`check_recorded_settings`), before any backbone weight is read.
"""
import re
import sys
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from text.tokenizer import Tokenizer, load_tokenizer
from util import dist
from util.dist import DTYPES, resolve_dtype
from util.errors import CheckpointError, MissingFileError

from .adapter import TOPA, TOPAArgs, build_model, load_trainable
from .backbones import BACKBONES, scaling_releases
from .config import FAMILIES, ModelConfig
from .hf import HFSafetensors, hf_context, hf_params
from .model import RopeScaling
from .weights import MetaShards, load_topa_checkpoint, recorded_flags


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
    the tokenizer. The RoPE scaling is the backbone's (`rope_scaling_factor` replaces its factor; 1: none)."""
    overrides = dict(adapter_len=cfg.adapter_len, adapter_layer=cfg.adapter_layer, max_feats=cfg.max_feats,
                     bias=cfg.bias, rope_theta=cfg.rope_theta)
    if backbone.kind == "meta":
        params = backbone.folder / "params.json"
        if not params.is_file():
            raise MissingFileError(f"no params.json in {backbone.folder} (--llama_model_path {cfg.llama_model_path} "
                                   f"--model {cfg.model})")
        args = TOPAArgs.from_params_json(params, **overrides)
        if args.rope_scaling is not None and meta_output_tied(MetaShards(backbone.folder)):  # Llama-3.2 1B/3B
            args = TOPAArgs.from_params_json(params, scaling_factor=TIED_SCALING_FACTOR, tie_embeddings=True,
                                             **overrides)
    else:
        params = backbone.folder / "config.json"
        fields = hf_params(backbone.folder)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        try:
            args = TOPAArgs(**fields)
        except ValueError as e:
            raise CheckpointError(f"{params}: {e}") from None
    if cfg.rope_scaling_factor is not None:
        scaling = dataclasses.replace(args.rope_scaling or RopeScaling(1.0), factor=float(cfg.rope_scaling_factor))
        args.rope_scaling = scaling if scaling.factor != 1 else None
    if args.vocab_size <= 0:
        args.vocab_size = tok.n_words
    elif args.vocab_size != tok.n_words:
        raise CheckpointError(f"{params} has vocab_size {args.vocab_size} but {tok.path} has {tok.n_words} tokens")
    return args


# The positions each family was trained for (Meta's model cards); Llama-3.1/3.2 (RoPE-scaled) 131072.
# Hugging Face folders say it in config.json (max_position_embeddings).
CONTEXT = {"llama2": 4096, "llama3": 8192}
SCALED_CONTEXT = 131072


def context_length(cfg: ModelConfig, backbone: Optional[Backbone] = None) -> int:
    """The longest sequence (prompt and generated tokens) the backbone was trained for: config.json's
    max_position_embeddings, else the family's (`CONTEXT`; `SCALED_CONTEXT` for a Meta folder with
    use_scaled_rope). Read from the config files only, before any weight."""
    backbone = backbone or locate_backbone(cfg)
    if backbone.kind == "hf":
        told = hf_context(backbone.folder)
        if told is not None:
            return told
        return SCALED_CONTEXT if hf_params(backbone.folder)["rope_scaling"] else CONTEXT[cfg.family]
    params = backbone.folder / "params.json"
    scaled = params.is_file() and TOPAArgs.from_params_json(params).rope_scaling is not None
    return SCALED_CONTEXT if scaled else CONTEXT[cfg.family]


# Meta's params.json of Llama-3.2 1B/3B says `use_scaled_rope` without a factor, and Meta's reference code
# applies 8 to every release; the right factor for 1B/3B is 32 (their config.json; meta-llama/llama-models
# issues #166, #241). They are the only tied Llama-3 models (the backbone table, llama/backbones.py), so a
# tied scaled Meta folder gets their factor (docs/model.md). Only scaled folders are looked at: Llama-2 and
# Llama-3 never tie.
(TIED_SCALING_FACTOR,) = {b.rope_scaling for b in BACKBONES.values() if b.tied}


def meta_output_tied(shards: MetaShards) -> bool:
    """Whether a Meta folder's output layer is its token embedding: no `output.weight`, or one equal to
    `tok_embeddings.weight` (Meta's Llama-3.2 1B/3B files carry such a copy). Row 0 decides most folders
    without reading more; the shards are mmapped, so the full comparison reads them through the page cache."""
    shapes, emb, out = shards.shapes, "tok_embeddings.weight", "output.weight"
    if out not in shapes:
        return emb in shapes
    if shapes[out] != shapes.get(emb):
        return False
    states = shards.states
    row = torch.cat([s[emb][0] for s in states])  # the embedding is split on dim 1
    if not torch.equal(states[0][out][0], row):
        return False
    if len(states) == 1:
        return torch.equal(states[0][out], states[0][emb])
    full = [torch.empty(shapes[emb], dtype=states[0][emb].dtype) for _ in range(2)]
    shards.read_into(emb, full[0])
    shards.read_into(out, full[1])
    return torch.equal(*full)


def open_weights(backbone: Backbone):
    """The backbone's weight source (read lazily, tensor by tensor, by `build_model`)."""
    return MetaShards(backbone.folder) if backbone.kind == "meta" else HFSafetensors(backbone.folder)


ORIGINAL_ROPE_THETA = 10000.0  # the original code ran every backbone, Llama-3 included, with theta 10000


def _size(name) -> Optional[str]:
    """'7B' -> '7', 'llama-2-13b' -> '13'; None when the name holds no size."""
    m = re.search(r"(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", str(name))
    return m.group(1) if m else None


def check_recorded_settings(ckpt: dict, cfg: ModelConfig, source: str, args: TOPAArgs,
                            native_theta: Optional[float] = None) -> List[str]:
    """Compare the model settings that TOPA checkpoint `ckpt` records (its `args`: the original code's
    or ours) with this run's, before any backbone is loaded.

    Settings that change the math, and that tensor shapes cannot reveal (a 7B Llama-2 and an 8B Llama-3
    have the same TOPA shapes), are an error naming the flag to pass: backbone family, model size,
    RoPE theta, RoPE scaling, adapter_len, adapter_layer, max_feats. A checkpoint without a rope_theta record was
    written by the original code, which used theta 10000 for every backbone. Harmless differences
    (`--bias` only initialises fresh gates; the checkpoint's gates are loaded) and missing records are
    returned as notes and printed once (rank 0). `args` are the run's resolved model args; `native_theta` is
    the backbone's own RoPE theta (what a recorded "no override" meant; default: args.rope_theta)."""
    rec = recorded_flags(ckpt)
    if not rec:
        notes = [f"{source} records no training settings: backbone family, model size, RoPE theta and "
                 "adapter settings were not compared with this run's"]
        _print_notes(notes)
        return notes
    c = _Comparison(rec, source)
    _compare_family(c, cfg)
    _compare_size(c, cfg)
    _compare_theta(c, args, native_theta)
    _compare_adapter(c, args)
    _compare_scaling(c, args)
    _compare_bias(c, cfg)
    if c.wrong:
        raise CheckpointError(f"{source} does not match this run: " + "; ".join(c.wrong))
    if c.unrecorded:
        c.notes.append(f"{source} does not record {', '.join(c.unrecorded)}: not compared with this run's")
    _print_notes(c.notes)
    return c.notes


@dataclass
class _Comparison:
    """A checkpoint's records against this run: the errors (`wrong`), the notes, the settings not recorded."""
    rec: dict
    source: str
    wrong: List[str] = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)
    unrecorded: List[str] = dataclasses.field(default_factory=list)

    @property
    def has_family(self) -> bool:
        return "llama2" in self.rec or "llama3" in self.rec

    def recorded(self, key):
        if key not in self.rec:
            self.unrecorded.append(key)
        return self.rec.get(key)


def _compare_family(c: _Comparison, cfg: ModelConfig):
    """Backbone family: only the records tell (same shapes)."""
    if not c.has_family:
        c.unrecorded.append("llama2/llama3")
        return
    family = "llama3" if c.rec.get("llama3") else "llama2" if c.rec.get("llama2") else None
    if family is None:
        c.notes.append(f"{c.source} records neither --llama2 nor --llama3 (the original code then used "
                       f"LLaMA-1): make sure {cfg.llama_model_path} holds the weights it was trained on")
    elif family != cfg.family:
        c.wrong.append(f"it was trained on a {'Llama-3' if family == 'llama3' else 'Llama-2'} backbone, this "
                       f"run loads --{cfg.family} (pass --{family} and that backbone's --llama_model_path)")


def _compare_size(c: _Comparison, cfg: ModelConfig):
    model = c.recorded("model")
    if model is not None and str(model) != str(cfg.model):
        a, b = _size(model), _size(cfg.model)
        if a is not None and b is not None and a != b:
            c.wrong.append(f"it was trained on --model {model}, this run loads --model {cfg.model}")
        else:
            c.notes.append(f"{c.source} was trained with --model {model}, this run uses --model {cfg.model}")


def _compare_theta(c: _Comparison, args: TOPAArgs, native_theta: Optional[float]):
    """RoPE theta: ours record it (None = params.json's); the original code's checkpoints used 10000."""
    if "rope_theta" in c.rec:
        theta = c.rec["rope_theta"] if c.rec["rope_theta"] is not None else (
            args.rope_theta if native_theta is None else native_theta)
    elif c.has_family:
        theta = ORIGINAL_ROPE_THETA
    else:
        theta = None
        c.unrecorded.append("rope_theta")
    if theta is not None and float(theta) != float(args.rope_theta):
        c.wrong.append(f"it was trained with RoPE theta {float(theta):g}, this run uses {float(args.rope_theta):g} "
                       f"(pass --rope_theta {float(theta):g})")


def _compare_adapter(c: _Comparison, args: TOPAArgs):
    """The adapter prompt and the frames."""
    for key, now in (("adapter_len", args.adapter_len), ("adapter_layer", args.adapter_layer),
                     ("max_feats", args.max_feats)):
        value = c.recorded(key)
        if key == "adapter_layer" and value is None and key in c.rec:
            value = args.n_layers  # ours: None = every layer
        if value is not None and int(value) != int(now):
            c.wrong.append(f"it was trained with --{key} {int(value)}, this run uses {int(now)} "
                           f"(pass --{key} {int(value)})")


def _compare_scaling(c: _Comparison, args: TOPAArgs):
    scaling = _scaling_mismatch(c.rec, args)
    if scaling:
        c.wrong.append(scaling)
    elif "rope_scaling_factor" not in c.rec and not c.has_family:
        c.unrecorded.append("rope_scaling_factor")


def _compare_bias(c: _Comparison, cfg: ModelConfig):
    bias = c.rec.get("bias")
    if bias is not None and float(bias) != float(cfg.bias):
        c.notes.append(f"{c.source} was trained with --bias {float(bias):g}, this run says {float(cfg.bias):g} "
                       "(harmless: --bias only initialises fresh gates, the checkpoint's are loaded)")


def scaling_name(factor: float) -> str:
    """"RoPE scaling factor 8 (Llama-3.1)": the factor and the releases of the table that have it."""
    which = scaling_releases(factor)
    name = "no RoPE scaling" if float(factor) == 1 else f"RoPE scaling factor {float(factor):g}"
    return f"{name} ({which})" if which else name


def _scaling_mismatch(rec: dict, args: TOPAArgs) -> Optional[str]:
    """The error for a checkpoint trained with another RoPE scaling than this run's, else None. Ours record
    the factor that ran (`load_topa` resolves it; 1: none); a checkpoint that records its backbone family
    but no factor (the original code's, or ours before Llama-3.1) ran without scaling."""
    if rec.get("rope_scaling_factor") is not None:
        then = float(rec["rope_scaling_factor"])
    elif "llama2" in rec or "llama3" in rec:
        then = 1.0
    else:
        return None
    now = args.rope_scaling.factor if args.rope_scaling else 1.0
    if then == now:
        return None
    return (f"it was trained with {scaling_name(then)}, this run's backbone has {scaling_name(now)} (pass the "
            f"--llama_model_path of the backbone it was trained on, or --rope_scaling_factor {then:g})")


def _print_notes(notes: List[str]):
    if dist.is_main():
        for n in notes:
            print(f"note: {n}", file=sys.stderr, flush=True)


def check_width(ckpt: dict, source: str, cfg: ModelConfig, args, backbone: Backbone):
    """A TOPA checkpoint made for a backbone of another width (e.g. 13B's 5120 on 7B's 4096) is an error
    naming both, before the backbone is read; it names the checkpoint's --model only where it differs."""
    aq = ckpt["model"].get("adapter_query.weight") if isinstance(ckpt.get("model"), dict) else None
    if not isinstance(aq, torch.Tensor) or aq.ndim != 2 or aq.shape[1] == args.dim:
        return
    rec = (recorded_flags(ckpt) or {}).get("model")
    hint = (f": it records --model {rec}, this run has --model {cfg.model}" if rec and str(rec) != cfg.model else
            ": evaluate it with the backbone it was trained with")
    raise CheckpointError(f"{source} was trained on a backbone of width {aq.shape[1]} ('adapter_query.weight' is "
                          f"{tuple(aq.shape)}), but {backbone.folder} has width {args.dim}{hint}")


def check_vocab(shapes: dict, tok: Tokenizer, backbone: Backbone):
    """The tokenizer and the backbone's embedding agree on the vocabulary size; otherwise an error naming
    both files, before the weights are read."""
    emb = shapes.get("tok_embeddings.weight")
    if emb is not None and int(emb[0]) != tok.n_words:
        raise CheckpointError(f"the tokenizer {tok.path} has {tok.n_words} tokens but the backbone {backbone.folder} "
                              f"has an embedding for {int(emb[0])}: they do not belong together (a tokenizer.model "
                              "beside the model folder, or inside it, is used; see docs/getting_started.md)")


def load_topa(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, tokenizer: Optional[Tokenizer] = None,
              resume: Optional[str] = None):
    """The model of `cfg` with fresh TOPA tensors, or those of the TOPA checkpoint `resume`, whose
    recorded settings are checked (`check_recorded_settings`) before the backbone is read.
    `cfg.rope_scaling_factor` is resolved in place (None -> the backbone's factor, 1 without scaling), so
    that the checkpoints and result files of the run record the RoPE scaling that ran.
    Returns (model, tokenizer, checkpoint dict or None)."""
    backbone = locate_backbone(cfg)
    tok = tokenizer or load_tokenizer_for(cfg, backbone)
    args = model_args(cfg, backbone, tok)
    cfg.rope_scaling_factor = args.rope_scaling.factor if args.rope_scaling else 1.0  # what runs is recorded
    ckpt = None
    if resume:
        ckpt = load_topa_checkpoint(resume)
        native = args.rope_theta if cfg.rope_theta is None else \
            model_args(dataclasses.replace(cfg, rope_theta=None), backbone, tok).rope_theta
        check_recorded_settings(ckpt, cfg, str(resume), args, native_theta=native)
        check_width(ckpt, str(resume), cfg, args, backbone)
    weights = open_weights(backbone)
    check_vocab(weights.shapes, tok, backbone)
    model = build_model(args, weights, dtype=dtype, device=device, source=str(backbone.folder),
                        attn_impl=cfg.attn_impl)
    if ckpt is not None:
        load_trainable(model, ckpt["model"], str(resume), trained_with=recorded_flags(ckpt))
    return model, tok, ckpt


__all__ = ["TOPA", "ModelConfig", "Backbone", "locate_backbone", "load_topa", "load_tokenizer_for", "model_args",
           "context_length",
           "open_weights", "resolve_dtype", "DTYPES", "check_recorded_settings"]
