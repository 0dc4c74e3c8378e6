"""Flags -> typed configs, built once. The flags keep the original scripts' names and meanings; every
check of their values lives in the configs' `__post_init__`, so a config that exists is a valid one.

    parser = eval_parser() / train_parser()      # argparse, original flag names
    cfg = EvalConfig.from_args(parser.parse_args())
    cfg = TrainConfig.from_args(...)

Checkpoints store `flat_args(cfg)` (an argparse.Namespace with the flag names, as the original code
wrote) and `asdict(cfg)` (plain nested dicts); both load with the safe loader.
"""
import argparse
import math
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import List, Optional

from dataloader import benchmarks
from llama.build import DTYPES, ModelConfig
from util.dist import check_device
from util.errors import ConfigError
from util.schedule import absolute_lr


# ---------------------------------------------------------------- configs

@dataclass
class DataConfig:
    dataset: Optional[str] = None     # None: nextqa (train.py --textvid: textvid)
    data_root: str = "./data"
    sub: bool = False                 # TVQA: subtitles as a "Dialogue:" segment
    truncate_dialogue: bool = False   # TVQA: cut dialogue tokens to fit max_seq_len (the published code's cut)
    skip_missing: bool = False        # drop questions without features instead of failing
    max_seq_len: int = 128            # training: reported when exceeded (never cut); eval: reported only
    batch_size: int = 8
    num_workers: int = 2
    memory: bool = False              # project eval video features onto the text memory
    memory_path: Optional[str] = None

    def __post_init__(self):
        for name, low in (("batch_size", 1), ("max_seq_len", 1), ("num_workers", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name} must be >= {low}, got {getattr(self, name)}")

    @property
    def memory_file(self) -> str:
        return self.memory_path or os.path.join(self.data_root, "textvid", "memory.pkl")

    def dialogue_max_len(self, dataset: str) -> Optional[int]:
        """The length TVQA dialogue is cut to (--truncate_dialogue), None otherwise."""
        return self.max_seq_len if self.truncate_dialogue and benchmarks.get(dataset).subtitles else None


@dataclass
class RunConfig:
    output_dir: str = "./output"
    device: str = "auto"              # auto, cpu, cuda
    seed: int = 0

    def __post_init__(self):
        check_device(self.device)


@dataclass
class GenerationConfig:
    """Generation benchmarks (MVBench, MSR-VTT, VATEX): switches beside their fixed protocols."""
    no_memory: bool = False           # turn the protocol's memory projection off (--memory turns it on)
    letter_constrained: bool = False  # MVBench: also answer by the argmax over the valid letters
    spice: bool = False               # captioning: add SPICE to the COCO metrics
    kv_cache: bool = True             # False: recompute the whole sequence per new token (the reference)


@dataclass
class EvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    split: Optional[str] = None       # None: the benchmark's default (val; generation benchmarks: test)
    resume: Optional[str] = None      # the TOPA checkpoint to evaluate
    scoring: str = "packed"           # packed: shared prefix once per question; full: every option whole
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self):
        bench = benchmarks.get(self.data.dataset or "nextqa")
        self.data.dataset = bench.name
        self.split = self.split or bench.default_split
        gen = self.generation
        if gen.no_memory and self.data.memory:
            raise ConfigError("--memory and --no_memory contradict each other")
        if gen.letter_constrained and bench.name != "mvbench":
            raise ConfigError(f"--letter_constrained is for MVBench, not {bench.name}")
        if gen.spice and (bench.protocol is None or bench.protocol.metric != "caption"):
            raise ConfigError(f"--spice is for the captioning benchmarks (msrvtt, vatex), not {bench.name}")
        if self.scoring not in ("packed", "full"):
            raise ConfigError(f"--scoring must be packed or full, not {self.scoring!r}")
        if self.data.sub and not benchmarks.get(self.data.dataset).subtitles:
            raise ConfigError(f"--sub is for TVQA, not {self.data.dataset}")

    @property
    def use_memory(self) -> bool:
        """--memory, --no_memory, else the benchmark's protocol (multiple-choice benchmarks: off)."""
        protocol = benchmarks.get(self.data.dataset).protocol
        if self.data.memory or self.generation.no_memory:
            return self.data.memory
        return bool(protocol and protocol.memory)

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "EvalConfig":
        return cls(model=_model_config(a), data=_build(DataConfig, a), run=_build(RunConfig, a),
                   split=a.split or ("test" if a.test else None), resume=a.resume, scoring=a.scoring,
                   generation=GenerationConfig(no_memory=a.no_memory, letter_constrained=a.letter_constrained,
                                               spice=a.spice, kv_cache=not a.no_kv_cache))


@dataclass
class OptimConfig:
    epochs: int = 5
    warmup_epochs: float = 1.0
    blr: float = 1e-2                 # lr = blr * batch_size * accum_iter * world_size / 256 unless lr
    lr: Optional[float] = None
    min_lr: float = 0.0
    weight_decay: float = 0.1
    accum_iter: int = 1
    clip_grad: Optional[float] = None
    weight_captioning: float = 1.0    # weight of the vaq loss and of caption batches' loss

    def __post_init__(self):
        if self.accum_iter < 1:
            raise ConfigError("--accum_iter must be >= 1")
        if self.epochs < 1 or self.warmup_epochs < 0:
            raise ConfigError(f"--epochs ({self.epochs}) must be >= 1 and --warmup_epochs ({self.warmup_epochs}) >= 0")
        positive(blr=self.blr, lr=self.lr, clip_grad=self.clip_grad)
        at_least_zero(min_lr=self.min_lr, weight_decay=self.weight_decay, weight_captioning=self.weight_captioning)
        if self.lr is not None and self.min_lr > self.lr:
            raise ConfigError(f"--min_lr ({self.min_lr}) is above --lr ({self.lr}): the schedule decays to --min_lr")

    def absolute_lr(self, batch_size: int, world_size: int) -> float:
        return self.lr if self.lr is not None else absolute_lr(self.blr, batch_size, self.accum_iter, world_size)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    textvid: bool = False             # pre-align on TextVid (data.dataset is then "textvid")
    video_caption: bool = False
    openvqa: bool = False
    answer_balance: bool = False
    variance: float = 0.0
    vaq: bool = False
    qav: bool = False
    tau: float = 100.0
    finetune: bool = False
    resume: Optional[str] = None
    start_epoch: int = 0
    stop_after: Optional[int] = None
    train_split: str = "train"
    eval_datasets: List[str] = field(default_factory=list)
    eval_split: str = "val"
    eval_batch_size: Optional[int] = None
    log_every: int = 50
    tensorboard: bool = True
    overwrite: bool = False           # a new run may delete the previous run's files in output_dir
    save_every: int = 0               # mid-epoch checkpoint every N iterations (0: epoch checkpoints only)
    grad_checkpointing: bool = False  # recompute the backbone blocks in backward (activation memory)
    group_by_length: bool = False     # batches of similar lengths (benchmark finetuning; another data order)

    def __post_init__(self):
        if self.textvid and str(self.data.dataset or "textvid").lower() != "textvid":
            raise ConfigError(f"--textvid pre-aligns on TextVid, but --dataset says {self.data.dataset}: drop one "
                              f"of them (--dataset {self.data.dataset} without --textvid trains on {self.data.dataset})")
        if str(self.data.dataset).lower() == "textvid":
            self.textvid = True
        if self.textvid:
            self.data.dataset = "textvid"
        else:
            self.data.dataset = benchmarks.get(self.data.dataset or "nextqa").name
            if self.data.sub and not benchmarks.get(self.data.dataset).subtitles:
                raise ConfigError(f"--sub is for TVQA, not {self.data.dataset}")
        if self.group_by_length and self.textvid:
            raise ConfigError("--group_by_length is for benchmark finetuning: a TextVid item's length is drawn "
                              "anew every epoch (its QA, caption or open answer)")
        if self.finetune and not self.resume:
            raise ConfigError("--finetune needs --resume <TOPA checkpoint> (without a checkpoint it is the baseline)")
        self.eval_datasets = [benchmarks.get(n).name for n in self.eval_datasets]
        if self.stop_after is not None and self.stop_after < 1:
            raise ConfigError(f"--stop_after must be >= 1, got {self.stop_after}")
        if self.log_every < 0:
            raise ConfigError(f"--log_every must be >= 0, got {self.log_every}")
        positive(tau=self.tau)
        at_least_zero(variance=self.variance, start_epoch=self.start_epoch)
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError(f"--eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.save_every < 0 or self.save_every % self.optim.accum_iter:
            raise ConfigError(f"--save_every ({self.save_every}) must be a multiple of --accum_iter "
                              f"({self.optim.accum_iter}): checkpoints are written between optimizer steps")

    @property
    def caption_prob(self) -> float:
        """Probability that a TextVid iteration is a caption batch."""
        return 0.5 if self.textvid and self.video_caption else 0.0

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "TrainConfig":
        evals = a.eval_datasets
        if evals is None:
            evals = "" if (a.textvid or a.dataset == "textvid") else (a.dataset or "nextqa")
        evals = [] if evals.lower() == "none" else [s.strip() for s in evals.split(",") if s.strip()]
        own = {f.name for f in fields(cls)} - {"model", "data", "run", "optim", "eval_datasets", "tensorboard"}
        return cls(model=_model_config(a), data=_build(DataConfig, a), run=_build(RunConfig, a),
                   optim=_build(OptimConfig, a), eval_datasets=evals, tensorboard=not a.no_tensorboard,
                   **{k: getattr(a, k) for k in own})


def positive(**flags):
    """Each flag given (not None) is a finite number > 0; else a ConfigError naming it."""
    for name, v in flags.items():
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"--{name} must be a positive number, got {v}")


def at_least_zero(**flags):
    """Each flag is a finite number >= 0; else a ConfigError naming it."""
    for name, v in flags.items():
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"--{name} must be a number >= 0, got {v}")


def _build(cls, a: argparse.Namespace):
    return cls(**{f.name: getattr(a, f.name) for f in fields(cls)})


def _model_config(a: argparse.Namespace) -> ModelConfig:
    kw = {f.name: getattr(a, f.name) for f in fields(ModelConfig) if f.name != "family"}
    return ModelConfig(family="llama3" if a.llama3 else "llama2", **kw)


def flat_args(cfg) -> argparse.Namespace:
    """The config as one Namespace with the flag names (`--llama2`/`--llama3` as booleans), the `args`
    that checkpoints carry (as the original code's did)."""
    out = {}

    def walk(obj):
        for f in fields(obj):
            v = getattr(obj, f.name)
            if is_dataclass(v):
                walk(v)
            elif f.name == "family":
                out["llama2"], out["llama3"] = v == "llama2", v == "llama3"
            else:
                out[f.name] = list(v) if isinstance(v, (list, tuple)) else v
    walk(cfg)
    return argparse.Namespace(**out)


def config_dict(cfg) -> dict:
    """The config as plain nested dicts (for checkpoints and result files)."""
    return asdict(cfg)


# ---------------------------------------------------------------- flags (defaults: the configs above)

def add_model_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("model")
    g.add_argument("--model", default=ModelConfig.model,
                   help="model folder under --llama_model_path (7B, 13B, 8B, 3B, 1B); not used when --llama_model_path "
                        "holds the weights itself")
    g.add_argument("--llama_model_path", default=ModelConfig.llama_model_path,
                   help="folder holding <model>/ (Meta's shards + params.json, or a Hugging Face config.json + "
                        "*.safetensors) and tokenizer.model; or a Hugging Face (or Meta) model folder itself")
    v = g.add_mutually_exclusive_group()
    v.add_argument("--llama2", action="store_true", help="Llama-2 (SentencePiece tokenizer; default)")
    v.add_argument("--llama3", action="store_true", help="Llama-3, 3.1, 3.2 (tiktoken tokenizer)")
    g.add_argument("--rope_theta", type=float, default=None,
                   help="override params.json's rope_theta (released Llama-3 TOPA checkpoints expect 10000)")
    g.add_argument("--rope_scaling_factor", type=float, default=None,
                   help="factor of the backbone's Llama-3.1/3.2 \"llama3\" RoPE scaling (default: the backbone's: "
                        "config.json's rope_scaling; Meta folders: 8, or 32 for tied Llama-3.2 1B/3B; 1: no scaling)")
    g.add_argument("--max_seq_len", type=int, default=DataConfig.max_seq_len,
                   help="training: longest expected sequence (longer ones are kept whole and counted); "
                        "eval: reported only (prompts are never cut)")
    g.add_argument("--max_feats", type=int, default=ModelConfig.max_feats, help="T: video frames fed to the LLM")
    g.add_argument("--adapter_len", type=int, default=ModelConfig.adapter_len,
                   help="adapter prompt rows per adapted layer (50 in every published script and checkpoint)")
    g.add_argument("--adapter_layer", type=int, default=None, help="adapted layers, the last ones (default: all)")
    g.add_argument("--bias", type=float, default=ModelConfig.bias, help="gate2 init is -bias")
    g.add_argument("--precision", choices=sorted(DTYPES), default=None,
                   help="backbone compute dtype (default: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--attn_impl", choices=["sdpa", "eager"], default=ModelConfig.attn_impl,
                   help="attention kernels: sdpa (fused, default) or eager (the reference math with an explicit "
                        "fp32 softmax; slower, for checking)")
    g.add_argument("--device", default=RunConfig.device, help="auto, cpu, cuda")
    return p


def add_data_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None,
                   help=f"{', '.join(benchmarks.BENCHMARKS)} (eval/finetune; default nextqa); textvid (train; "
                        "what --textvid means)")
    g.add_argument("--data_root", default=DataConfig.data_root, help="root holding nextqa/, star/, tvqa/, egos/, textvid/")
    g.add_argument("--memory", action="store_true", help="project eval video features onto the text memory")
    g.add_argument("--memory_path", default=None, help="memory.pkl (default <data_root>/textvid/memory.pkl)")
    g.add_argument("--sub", action="store_true", help="TVQA: add the clip's subtitles (\"Dialogue:\" segment)")
    g.add_argument("--truncate_dialogue", action="store_true",
                   help="TVQA: cut subtitle tokens so that each prompt fits --max_seq_len, as the published code "
                        "did (question, options and answer stay whole; the number of cut prompts is reported). "
                        "Default: prompts are never cut")
    g.add_argument("--skip_missing", action="store_true",
                   help="drop questions whose video has no features (reported), instead of failing")
    g.add_argument("--batch_size", type=int, default=DataConfig.batch_size, help="questions per batch per process")
    g.add_argument("--num_workers", type=int, default=DataConfig.num_workers)
    g.add_argument("--output_dir", default=RunConfig.output_dir)
    g.add_argument("--seed", type=int, default=RunConfig.seed)
    g.add_argument("--dry_run", action="store_true", help="parse the arguments, print them and exit")
    return p


def eval_parser(description: str = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    add_model_args(p)
    add_data_args(p)
    g = p.add_argument_group("evaluation")
    g.add_argument("--split", default=None, help="val (default) or test; --test is short for --split test")
    g.add_argument("--test", action="store_true", help="evaluate the test split (EgoSchema: writes a submission)")
    g.add_argument("--resume", default=None, help="TOPA checkpoint to evaluate")
    g.add_argument("--scoring", choices=["packed", "full"], default=EvalConfig.scoring,
                   help="packed: run each question's shared prefix once (fast); full: each option whole")
    g = p.add_argument_group("generation benchmarks (mvbench, msrvtt, vatex)")
    g.add_argument("--no_memory", action="store_true",
                   help="no memory projection (default: the protocol's: on for mvbench and msrvtt, off for "
                        "vatex; --memory turns it on)")
    g.add_argument("--letter_constrained", action="store_true",
                   help="mvbench: also answer by the argmax over the item's valid letters, reported beside "
                        "the published check")
    g.add_argument("--spice", action="store_true",
                   help="msrvtt/vatex: add SPICE (Java; downloads Stanford CoreNLP once)")
    g.add_argument("--no_kv_cache", action="store_true",
                   help="recompute the whole sequence for every new token (the reference; slow)")
    return p


def add_optim_args(p: argparse.ArgumentParser):
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=OptimConfig.epochs)
    g.add_argument("--warmup_epochs", type=float, default=OptimConfig.warmup_epochs, help="linear warmup length in epochs")
    g.add_argument("--blr", type=float, default=OptimConfig.blr,
                   help="base lr: lr = blr * batch_size * accum_iter * world_size / 256")
    g.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    g.add_argument("--min_lr", type=float, default=OptimConfig.min_lr, help="end of the cosine schedule")
    g.add_argument("--weight_decay", type=float, default=OptimConfig.weight_decay, help="on trainable params with ndim >= 2")
    g.add_argument("--accum_iter", type=int, default=OptimConfig.accum_iter, help="gradient accumulation steps")
    g.add_argument("--clip_grad", type=float, default=None, help="max gradient norm (default: no clipping)")
    g.add_argument("--weight_captioning", type=float, default=OptimConfig.weight_captioning,
                   help="weight of the vaq loss and of caption batches' loss")
    return p


def train_parser(description: str = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    add_model_args(p)
    add_data_args(p)
    add_optim_args(p)
    g = p.add_argument_group("training")
    g.add_argument("--textvid", action="store_true", help="pre-align on TextVid (<data_root>/textvid)")
    g.add_argument("--video_caption", action="store_true",
                   help="TextVid: each iteration is a caption batch with probability 0.5")
    g.add_argument("--openvqa", action="store_true",
                   help="TextVid caption batches: an item holds its open-ended QA with probability 0.5")
    g.add_argument("--answer_balance", action="store_true", help="TextVid: shuffle the options")
    g.add_argument("--variance", type=float, default=TrainConfig.variance, help="TextVid: Gaussian noise variance on frames")
    g.add_argument("--vaq", action="store_true", help="add the question-from-answer loss (flipped VQA)")
    g.add_argument("--qav", action="store_true", help="add the video-from-question-and-answer loss")
    g.add_argument("--tau", type=float, default=TrainConfig.tau, help="temperature of the qav frame loss")
    g.add_argument("--finetune", action="store_true",
                   help="with --resume: load the checkpoint's weights only (fresh optimizer, epoch 0)")
    g.add_argument("--resume", default=None,
                   help="checkpoint to continue from (exactly: optimizer, schedule, epoch, RNG, data order, and "
                        "the batch position of a mid-epoch checkpoint), or with --finetune to start from; a flag "
                        "that differs from the checkpoint's is stated on one line")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --output_dir that holds a previous run: delete its checkpoint_*.pth, "
                        "log.jsonl, tensorboard/, eval/ and temporary files first (nothing else). Without it such a "
                        "folder is refused unless --resume continues that run")
    g.add_argument("--save_every", type=int, default=TrainConfig.save_every,
                   help="also write a mid-epoch checkpoint every N iterations (a multiple of --accum_iter), "
                        "checkpoint_<epoch>_iter<N>.pth, pointed at by checkpoint_last.pth; only the newest is kept. "
                        "--resume of it continues exactly where it was written (0: off)")
    g.add_argument("--start_epoch", type=int, default=TrainConfig.start_epoch, help="first epoch (set by --resume)")
    g.add_argument("--stop_after", type=int, default=None,
                   help="leave after this many epochs of this run (e.g. a time-limited job); the lr schedule "
                        "still spans --epochs: continue with --resume <output_dir>/checkpoint_last.pth")
    g.add_argument("--train_split", default=TrainConfig.train_split)
    g.add_argument("--eval_datasets", default=None,
                   help="comma list evaluated zero-shot after every epoch (with --memory if given); "
                        "default: --dataset for finetuning, none for --textvid; 'none' disables")
    g.add_argument("--eval_split", default=TrainConfig.eval_split)
    g.add_argument("--eval_batch_size", type=int, default=None, help="default: --batch_size")
    g.add_argument("--log_every", type=int, default=TrainConfig.log_every,
                   help="log.jsonl line every N iterations (0: off). Loss values reach the host (a device sync) "
                        "only every N iterations (50 when 0), at checkpoints and at the end of an epoch")
    g.add_argument("--grad_checkpointing", action="store_true",
                   help="recompute each backbone block in backward instead of storing its activations "
                        "(less memory for long prompts, e.g. TVQA with --sub; about one more forward of time)")
    g.add_argument("--group_by_length", action="store_true",
                   help="benchmark finetuning: each step's items have similar lengths (less padding; every rank "
                        "gets as many items of similar lengths). Another data order than the published recipe's, "
                        "the same for the same --seed; recorded in the checkpoint")
    g.add_argument("--no_tensorboard", action="store_true")
    return p
