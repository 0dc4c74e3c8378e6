"""The settings of a generation run: `GenConfig` is the one source of their defaults, types and help texts
(util/settings.py derives the flags), checked in `__post_init__`; `Shape` is how many frames, objects and QAs
a tideo has; `settings(cfg, prompt)` is what decides the answers (kept in the output folder, compared on
resume). Nothing here imports torch (`--help` answers at once)."""
import argparse
from dataclasses import dataclass
from typing import Optional, Tuple

from util.errors import ConfigError
from util.settings import setting

N_OPTIONS = 5  # a TextVid QA has 5 options, A..E (docs/formats.md)
RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")


@dataclass(frozen=True)
class Shape:
    """How many frames, objects per frame and QAs a tideo has (inclusive ranges)."""
    frames: Tuple[int, int] = (5, 15)
    objects: Tuple[int, int] = (1, 3)
    qas: Tuple[int, int] = (4, 6)

    def __post_init__(self):
        for name in ("frames", "objects", "qas"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ConfigError(f"--{name} {lo}-{hi}: expected MIN-MAX with 1 <= MIN <= MAX")

    def counts(self, name) -> Tuple[int, int]:
        """The range of `name` (a field), or (5, 5) for None (the options of a QA)."""
        return (N_OPTIONS, N_OPTIONS) if name is None else getattr(self, name)


def _pair(sep: str, example: str):
    def parse(text) -> Tuple[int, int]:
        a, found, b = str(text).partition(sep)
        try:
            return int(a), int(b if found else a)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {example}, got {text!r}") from None
    return parse


parse_range = _pair("-", "MIN-MAX such as 5-15")
parse_shard = _pair("/", "I/N such as 0/4")


def _range(default: Tuple[int, int], help: str):
    return setting(default, help, parse=parse_range, metavar="MIN-MAX", flag_default="%d-%d" % default)


@dataclass
class GenConfig:
    GROUP = "what"

    seeds: str = setting(help="seed captions: .txt (one a line) or .jsonl ({\"caption\": ..., \"domain\": ...})")
    out: str = setting(help="the TextVid folder to write (textvid.json, rejected.json, ...), e.g. "
                            "data/mine/textvid")
    template: Optional[str] = setting(None, "the prompt template (default: textvid/prompts/tideo.txt)")
    schema: Optional[str] = setting(None, "the JSON schema of an answer (default: textvid/prompts/tideo.schema.json)")
    frames: Tuple[int, int] = _range((5, 15), "frames per tideo")
    objects: Tuple[int, int] = _range((1, 3), "object descriptions per frame")
    qas: Tuple[int, int] = _range((4, 6), "multiple-choice QAs per tideo (5 options each)")
    domain: str = setting("open domain", "the domain of seeds that name none")
    per_seed: int = setting(1, "tideos per seed caption")
    seed: int = setting(0, "decides the tideo ids and the sampling seeds of every try")
    hf_model: Optional[str] = setting(None, "the writer: a local Hugging Face model folder with a chat template "
                                            "(default: none; or --base_url)", group="the writer LLM")
    base_url: Optional[str] = setting(None, "the writer: an OpenAI-compatible endpoint, e.g. "
                                            "http://127.0.0.1:8000/v1 (default: none; or --hf_model)",
                                      group="the writer LLM")
    model: Optional[str] = setting(None, "with --base_url: the model's name on the server (default: none)",
                                   group="the writer LLM")
    api_key_env: str = setting("OPENAI_API_KEY", "with --base_url: the environment variable that holds the API key",
                               group="the writer LLM")
    temperature: float = setting(0.8, "sampling temperature (0: the most likely token)", group="the writer LLM")
    top_p: float = setting(0.95, "nucleus sampling: the smallest set of tokens this likely", group="the writer LLM")
    max_tokens: int = setting(4096, "the longest answer, in tokens (a longer one is rejected as truncated)",
                              group="the writer LLM")
    max_tries: int = setting(3, "answers asked per tideo before it is given up (listed in rejected.json)",
                             group="the writer LLM")
    concurrency: int = setting(8, "--base_url: requests in flight", group="running")
    timeout: float = setting(600.0, "--base_url: seconds to wait for one answer", group="running")
    retries: int = setting(8, "--base_url: resends of a request after a connection error, a timeout, 429 or 5xx",
                           group="running")
    response_format: str = setting("auto", "--base_url: the structured output asked of the server (auto: "
                                           "json_schema, then what the server takes)", choices=RESPONSE_FORMATS,
                                   group="running")
    batch_size: int = setting(8, "--hf_model: answers written at once on the device", group="running")
    device: str = setting("auto", "--hf_model: auto, cpu, cuda", group="running")
    dtype: str = setting("auto", "--hf_model: auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16",
                         choices=("auto", "fp32", "bf16", "fp16"), group="running")
    shard: Tuple[int, int] = setting((0, 1), "write the seeds of shard I of N (0-based), e.g. one shard per machine "
                                             "into one shared --out; the last shard to finish writes textvid.json",
                                     parse=parse_shard, metavar="I/N", flag_default="0/1", group="running")
    overwrite: bool = setting(False, "drop this shard's earlier answers and start over (default: resume)",
                              group="running")
    quiet: bool = setting(False, "no progress bar", group="running")

    def __post_init__(self):
        if bool(self.hf_model) == bool(self.base_url):
            raise ConfigError("give the writer: --hf_model DIR, or --base_url URL --model NAME (not both)")
        if self.base_url and not self.model:
            raise ConfigError("--base_url needs --model (the name the server knows the model by)")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base_url {self.base_url!r}: expected http://HOST:PORT/v1 or https://...")
        for name in ("per_seed", "max_tokens", "max_tries", "concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0 or self.timeout <= 0:
            raise ConfigError("--retries must be >= 0 and --timeout > 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"--temperature must be >= 0 and --top_p in (0, 1], got {self.temperature}, {self.top_p}")
        i, n = self.shard
        if not 0 <= i < n:
            raise ConfigError(f"--shard {i}/{n}: expected I/N with 0 <= I < N")
        Shape(self.frames, self.objects, self.qas)  # a bad range is a ConfigError now

    @property
    def shape(self) -> Shape:
        return Shape(self.frames, self.objects, self.qas)

    @property
    def writer_id(self) -> str:
        """The writer in the settings record: the server's model name, or the local folder's name."""
        return self.model if self.base_url else self.hf_model.rstrip("/").split("/")[-1]


def settings(cfg: GenConfig, prompt) -> dict:
    """What decides the answers of a folder: a resumed run (or another shard) must have the same."""
    return {"writer": cfg.writer_id, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
            "seed": cfg.seed, "per_seed": cfg.per_seed, "domain": cfg.domain, "frames": list(cfg.frames),
            "objects": list(cfg.objects), "qas": list(cfg.qas), "shards": cfg.shard[1], **prompt.digests()}
