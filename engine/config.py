"""The settings of eval.py, train.py and the Python API as typed configs, the single source of their
defaults, types and help texts; the flags (the original scripts' names and meanings) are derived from
them by util/settings.py. Every check of their values lives in the configs' `__post_init__`, so a
config that exists is a valid one.

    parser = eval_parser(__doc__) / train_parser(__doc__)     # argparse, original flag names
    cfg = EvalConfig.from_args(parser.parse_args())
    cfg = TrainConfig.from_args(...)
    cfg = QAConfig.from_args(...)                             # ask.py, app.py (engine/api.py's settings)

Checkpoints store `flat_args(cfg)` (an argparse.Namespace with the flag names, as the original code
wrote) and `asdict(cfg)` (plain nested dicts); both load with the safe loader. Nothing here imports
torch: `--help` answers at once.
"""
import argparse
import math
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from dataloader import benchmarks, tvqa
from llama.config import ModelConfig
from util.errors import ConfigError
from util.settings import FALSE, TRUE, add_flags, comma_list, flat, from_flags, group_of, make_parser, setting
from video.config import CLIP_MODEL

DEVICE_HELP = "auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N"


def memory_on(*choices: Optional[bool], protocol: bool) -> bool:
    """The one rule for the memory projection: the first choice that is not None (a request's, then the
    run's --memory / --no_memory), else the protocol's (multiple-choice benchmarks: off)."""
    for choice in choices:
        if choice is not None:
            return bool(choice)
    return bool(protocol)


# ---------------------------------------------------------------- configs

@dataclass
class DataConfig:
    GROUP = "data"

    dataset: Optional[str] = setting(
        None, f"{', '.join(benchmarks.BENCHMARKS)} (eval/finetune; default: nextqa); textvid (train: what --textvid "
              "means)")
    data_root: str = setting(benchmarks.DATA_ROOT, "root holding nextqa/, star/, tvqa/, egos/, textvid/, ...")
    sub: bool = setting(False, "TVQA: add the clip's subtitles (\"Dialogue:\" segment)")
    truncate_dialogue: bool = setting(
        False, "TVQA: cut subtitle tokens so that each prompt fits --max_seq_len, as the published code did (question, "
               "options and answer stay whole; the number of cut prompts is reported). Default: prompts are never cut")
    skip_missing: bool = setting(False, "drop questions whose video has no features (reported), instead of failing")
    max_seq_len: int = setting(128, "training: longest expected sequence (longer ones are kept whole and counted); "
                                    "eval: reported only (prompts are never cut)")
    batch_size: int = setting(8, "questions per batch per process")
    num_workers: int = setting(2, "DataLoader worker processes per process (0: load in the main process)")
    memory: bool = setting(False, "project the eval video features onto the text memory")
    memory_path: Optional[str] = setting(None, f"the text memory file (default: <data_root>/{benchmarks.MEMORY_FILE})")

    def __post_init__(self):
        for name, low in (("batch_size", 1), ("max_seq_len", 1), ("num_workers", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name} must be >= {low}, got {getattr(self, name)}")

    @property
    def memory_file(self) -> str:
        return benchmarks.memory_file(self.data_root, self.memory_path)

    def check_dataset(self, dataset: str):
        """The TVQA flags are for TVQA: --sub, and --truncate_dialogue, which cuts what --sub adds."""
        if (self.sub or self.truncate_dialogue) and not benchmarks.get(dataset).subtitles:
            raise ConfigError(f"--{'sub' if self.sub else 'truncate_dialogue'} is for TVQA, not {dataset}")
        if self.truncate_dialogue and not self.sub:
            raise ConfigError("--truncate_dialogue cuts the subtitles that --sub adds: without --sub it does nothing")

    def dialogue_max_len(self, dataset: str) -> Optional[int]:
        """The length TVQA dialogue is cut to (--truncate_dialogue), None otherwise."""
        return self.max_seq_len if self.truncate_dialogue and benchmarks.get(dataset).subtitles else None


@dataclass
class RunConfig:
    GROUP = "run"

    output_dir: str = setting("./output", "where the run writes: eval: accuracy, predictions, metrics; train: "
                                          "checkpoints, log.jsonl, tensorboard/, eval/")
    device: str = setting("auto", DEVICE_HELP)
    seed: int = setting(0, "random seed (fresh TOPA tensors, training's data order and TextVid draws); the same "
                           "seed gives the same run")

    def __post_init__(self):
        from util.dist import check_device
        check_device(self.device)


@dataclass
class GenerationConfig:
    """Generation benchmarks (MVBench, MSR-VTT, VATEX): switches beside their fixed protocols."""
    GROUP = "generation benchmarks (mvbench, msrvtt, vatex)"

    no_memory: bool = setting(False, "no memory projection (default: the protocol's: on for mvbench and msrvtt, off "
                                     "for vatex; --memory turns it on)")
    letter_constrained: bool = setting(False, "mvbench: also answer by the argmax over the item's valid letters, "
                                              "reported beside the published check")
    spice: bool = setting(False, "msrvtt/vatex: add SPICE to the COCO metrics (Java; downloads Stanford CoreNLP once)")
    kv_cache: bool = setting(True, "recompute the whole sequence for every new token (the reference; slow)")


@dataclass
class EvalConfig:
    GROUP = "evaluation"

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    split: Optional[str] = setting(None, "the split (default: the benchmark's: val; generation benchmarks: test)",
                                   shortcut=("test", "test", "evaluate the test split, short for --split test "
                                                             "(EgoSchema: writes a submission)"))
    resume: Optional[str] = setting(None, "the TOPA checkpoint to evaluate (default: none, fresh TOPA tensors with a "
                                          "warning)")
    scoring: str = setting("packed", "packed: run each question's shared prefix once (fast); full: each option whole",
                           choices=("packed", "full"))
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
        self.data.check_dataset(bench.name)
        if not gen.kv_cache and bench.kind != "generate":
            raise ConfigError(f"--no_kv_cache is for the generation benchmarks (mvbench, msrvtt, vatex), not "
                              f"{bench.name} (its options are scored, nothing is generated)")

    @property
    def use_memory(self) -> bool:
        """--memory, --no_memory, else the benchmark's protocol (`memory_on`)."""
        protocol = benchmarks.get(self.data.dataset).protocol
        flags = True if self.data.memory else False if self.generation.no_memory else None
        return memory_on(flags, protocol=bool(protocol and protocol.memory))

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "EvalConfig":
        return from_flags(cls, a)


@dataclass
class OptimConfig:
    GROUP = "optimisation"

    epochs: int = setting(5, "training epochs; the lr schedule spans them")
    warmup_epochs: float = setting(1.0, "linear warmup length in epochs")
    blr: float = setting(1e-2, "base lr: lr = blr * batch_size * accum_iter * world_size / 256")
    lr: Optional[float] = setting(None, "absolute lr (default: from --blr)")
    min_lr: float = setting(0.0, "end of the cosine schedule")
    weight_decay: float = setting(0.1, "on trainable params with ndim >= 2")
    accum_iter: int = setting(1, "gradient accumulation steps")
    clip_grad: Optional[float] = setting(None, "max gradient norm (default: no clipping)")
    weight_captioning: float = setting(1.0, "weight of the vaq loss and of caption batches' loss")

    def __post_init__(self):
        if self.accum_iter < 1:
            raise ConfigError("--accum_iter must be >= 1")
        if self.epochs < 1 or self.warmup_epochs < 0:
            raise ConfigError(f"--epochs ({self.epochs}) must be >= 1 and --warmup_epochs ({self.warmup_epochs}) >= 0")
        positive(blr=self.blr, clip_grad=self.clip_grad)
        at_least_zero(lr=self.lr, min_lr=self.min_lr, weight_decay=self.weight_decay,
                      weight_captioning=self.weight_captioning)  # --lr 0: losses measured, weights kept
        if self.lr is not None and self.min_lr > self.lr:
            raise ConfigError(f"--min_lr ({self.min_lr}) is above --lr ({self.lr}): the schedule decays to --min_lr")

    def absolute_lr(self, batch_size: int, world_size: int) -> float:
        from util.schedule import absolute_lr
        return self.lr if self.lr is not None else absolute_lr(self.blr, batch_size, self.accum_iter, world_size)


@dataclass
class TrainConfig:
    GROUP = "training"

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    textvid: bool = setting(False, "pre-align on TextVid (<data_root>/textvid; data.dataset is then textvid)")
    video_caption: bool = setting(False, "TextVid: each iteration is a caption batch with probability 0.5")
    openvqa: bool = setting(False, "TextVid caption batches: an item holds its open-ended QA with probability 0.5")
    answer_balance: bool = setting(False, "TextVid: shuffle the options")
    variance: float = setting(0.0, "TextVid: Gaussian noise variance on frames")
    vaq: bool = setting(False, "add the question-from-answer loss (flipped VQA)")
    qav: bool = setting(False, "add the video-from-question-and-answer loss")
    tau: float = setting(100.0, "temperature of the qav frame loss")
    finetune: bool = setting(False, "with --resume: load the checkpoint's weights only (fresh optimizer, epoch 0)")
    resume: Optional[str] = setting(
        None, "checkpoint to continue from (exactly: optimizer, schedule, epoch, RNG, data order, and the batch "
              "position of a mid-epoch checkpoint), or with --finetune to start from; a flag that differs from the "
              "checkpoint's is stated on one line (default: none, a new run)")
    start_epoch: int = setting(0, "first epoch (set by --resume)")
    stop_after: Optional[int] = setting(
        None, "leave after this many epochs of this run (e.g. a time-limited job); the lr schedule still spans "
              "--epochs: continue with --resume <output_dir>/checkpoint_last.pth (default: run to --epochs)")
    train_split: str = setting("train", "the benchmark split finetuning (and the baseline) trains on")
    eval_datasets: List[str] = setting(
        help="comma list evaluated zero-shot after every epoch (with --memory if given); default: --dataset for "
             "finetuning, none for --textvid; 'none' disables", factory=list, parse=str, flag_default=None)
    eval_split: str = setting("val", "the split of --eval_datasets evaluated after every epoch")
    eval_batch_size: Optional[int] = setting(None, "batch size of the per-epoch evaluation (default: --batch_size)")
    log_every: int = setting(50, "log.jsonl line every N iterations (0: off). Loss values reach the host (a device "
                                 "sync) only every N iterations (50 when 0), at checkpoints and at the end of an epoch")
    tensorboard: bool = setting(True, "write no TensorBoard scalars (<output_dir>/tensorboard/); log.jsonl is always "
                                      "written")
    overwrite: bool = setting(
        False, "start a new run in an --output_dir that holds a previous run: delete its checkpoint_*.pth, log.jsonl, "
               "tensorboard/, eval/ and temporary files first (nothing else). Without it such a folder is refused "
               "unless --resume continues that run")
    save_every: int = setting(
        0, "also write a mid-epoch checkpoint every N iterations (a multiple of --accum_iter), "
           "checkpoint_<epoch>_iter<N>.pth, pointed at by checkpoint_last.pth; only the newest is kept. --resume of it "
           "continues exactly where it was written (0: epoch checkpoints only)")
    grad_checkpointing: bool = setting(
        False, "recompute each backbone block in backward instead of storing its activations (less memory for long "
               "prompts, e.g. TVQA with --sub; about one more forward of time)")
    group_by_length: bool = setting(
        False, "benchmark finetuning: each step's items have similar lengths (less padding; every rank gets as many "
               "items of similar lengths). Another data order than the published recipe's, the same for the same "
               "--seed; recorded in the checkpoint")

    def __post_init__(self):
        if self.textvid and str(self.data.dataset or "textvid").lower() != "textvid":
            raise ConfigError(f"--textvid pre-aligns on TextVid, but --dataset says {self.data.dataset}: drop one of "
                              f"them (--dataset {self.data.dataset} without --textvid trains on {self.data.dataset})")
        if str(self.data.dataset).lower() == "textvid":
            self.textvid = True
        if self.textvid:
            self.data.dataset = "textvid"
        else:
            self.data.dataset = benchmarks.get(self.data.dataset or "nextqa").name
            self.data.check_dataset(self.data.dataset)
        if self.group_by_length and self.textvid:
            raise ConfigError("--group_by_length is for benchmark finetuning: a TextVid item's length is drawn "
                              "anew every epoch (its QA, caption or open answer)")
        if self.finetune and not self.resume:
            raise ConfigError("--finetune needs --resume <TOPA checkpoint> (without a checkpoint it is the baseline)")
        if self.resume and not self.finetune and self.start_epoch:
            raise ConfigError(f"--start_epoch {self.start_epoch} with --resume: the checkpoint says where the run "
                              "continues; drop --start_epoch")
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
        """The flags; --eval_datasets defaults to the finetuned benchmark (none for TextVid), 'none' is none."""
        evals = a.eval_datasets
        if evals is None:
            evals = "" if (a.textvid or a.dataset == "textvid") else (a.dataset or "nextqa")
        evals = [] if evals.lower() == "none" else comma_list(evals)
        return from_flags(cls, a, eval_datasets=evals)


@dataclass
class QAConfig:
    """What the Python API (engine/api.py) is built from: ask.py's and app.py's flags, lmms-eval's
    `--model_args`; `batch_size`, `cache_size` and `keep_images` are the API's own."""
    GROUP = "checkpoint, CLIP and memory"

    model: ModelConfig = field(default_factory=ModelConfig)
    resume: Optional[str] = setting(None, "the TOPA checkpoint (default: none, fresh TOPA tensors with a warning)")
    clip_model: str = setting(CLIP_MODEL, "CLIP ViT-L/14 in Hugging Face format: a local folder or a hub name")
    memory: Optional[bool] = setting(None, "project the frames onto the text memory (default: each request's protocol)",
                                     no_help="no memory projection", parse=lambda s: _tri_state(s, "memory"))
    memory_path: str = setting(benchmarks.memory_file(), "the TextVid text-feature memory")
    frames_fps: float = setting(float(tvqa.FPS), "the frame rate of a frame folder (TVQA's)")
    device: str = setting(RunConfig.device, DEVICE_HELP)
    batch_size: int = setting(8, "requests per device batch (the *_batch methods)", cli=False)
    cache_size: int = setting(64, "videos whose features are kept", cli=False)
    keep_images: bool = setting(True, "keep the 224x224 crops CLIP saw (Frames.images; ~150 KB a frame)", cli=False)

    def __post_init__(self):
        from util.dist import check_device
        check_device(self.device)
        if self.frames_fps <= 0:
            raise ConfigError(f"--frames_fps must be positive, got {self.frames_fps}")
        if self.batch_size < 1 or self.cache_size < 0:
            raise ConfigError(f"batch_size ({self.batch_size}) must be >= 1 and cache_size ({self.cache_size}) >= 0")

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "QAConfig":
        return from_flags(cls, a)


def _tri_state(text: str, name: str) -> Optional[bool]:
    """`memory=` in --model_args: true/false, or none / protocol (each request's protocol)."""
    s = str(text).strip().lower()
    if s in ("", "none", "protocol"):
        return None
    if s in TRUE or s in FALSE:
        return s in TRUE
    raise ConfigError(f"--model_args: {name}={text!r} is not a boolean (true/false, or protocol)")


def positive(**flags):
    """Each flag given (not None) is a finite number > 0; else a ConfigError naming it."""
    for name, v in flags.items():
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"--{name} must be a positive number, got {v}")


def at_least_zero(**flags):
    """Each flag given (not None) is a finite number >= 0; else a ConfigError naming it."""
    for name, v in flags.items():
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"--{name} must be a number >= 0, got {v}")


def flat_args(cfg) -> argparse.Namespace:
    """The config as one Namespace with the flag names (`--llama2`/`--llama3` as booleans), the `args`
    that checkpoints carry (as the original code's did)."""
    return argparse.Namespace(**flat(cfg))


def config_dict(cfg) -> dict:
    """The config as plain nested dicts (for checkpoints and result files)."""
    return asdict(cfg)


# ---------------------------------------------------------------- flags (all derived from the configs above)

def add_model_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """ModelConfig's flags (eval.py, train.py, ask.py, app.py)."""
    return add_flags(p, ModelConfig)


def add_api_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """QAConfig's own flags, beside `add_model_args` (ask.py, app.py)."""
    return add_flags(p, QAConfig, nested=False)


def _dry_run(p: argparse.ArgumentParser):
    group_of(p, RunConfig.GROUP).add_argument(
        "--dry_run", action="store_true", help="parse the arguments, print them and exit")


def eval_parser(description: str = None) -> argparse.ArgumentParser:
    p = make_parser(description)
    add_flags(p, EvalConfig)
    _dry_run(p)
    return p


def train_parser(description: str = None) -> argparse.ArgumentParser:
    p = make_parser(description)
    add_flags(p, TrainConfig)
    _dry_run(p)
    return p
