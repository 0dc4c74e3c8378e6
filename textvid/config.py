"""The settings of a generation run: `GenConfig` is the one source of defaults, `parser()` its flags, and
`settings(cfg, prompt, writer)` what decides the answers (kept in the output folder, compared on resume)."""
import argparse
from dataclasses import dataclass, fields
from typing import Optional, Tuple

from util.dist import check_device
from util.errors import ConfigError

from .prompt import Shape, parse_range

RESPONSE_FORMATS = ("auto", "json_schema", "json_object", "none")


@dataclass
class GenConfig:
    seeds: str = ""
    out: str = ""
    # the writer: a local Hugging Face folder, or an OpenAI-compatible server
    hf_model: Optional[str] = None
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    # what to ask (docs/textvid.md)
    template: Optional[str] = None
    schema: Optional[str] = None
    frames: Tuple[int, int] = (5, 15)
    objects: Tuple[int, int] = (1, 3)
    qas: Tuple[int, int] = (4, 6)
    domain: str = "open domain"
    per_seed: int = 1
    seed: int = 0
    # sampling
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 4096
    max_tries: int = 3
    # running
    concurrency: int = 8
    timeout: float = 600.0
    retries: int = 8
    response_format: str = "auto"
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"
    shard: Tuple[int, int] = (0, 1)
    overwrite: bool = False
    quiet: bool = False

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
        if self.response_format not in RESPONSE_FORMATS:
            raise ConfigError(f"--response_format must be one of {', '.join(RESPONSE_FORMATS)}")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"--dtype must be auto, fp32, bf16 or fp16, not {self.dtype!r}")
        i, n = self.shard
        if not 0 <= i < n:
            raise ConfigError(f"--shard {i}/{n}: expected I/N with 0 <= I < N")
        check_device(self.device)
        Shape(self.frames, self.objects, self.qas)  # a bad range is a ConfigError now

    @property
    def shape(self) -> Shape:
        return Shape(self.frames, self.objects, self.qas)

    @property
    def writer_id(self) -> str:
        """The writer in the settings record: the server's model name, or the local folder's name."""
        return self.model if self.base_url else self.hf_model.rstrip("/").split("/")[-1]

    @classmethod
    def from_args(cls, a: argparse.Namespace) -> "GenConfig":
        kw = {f.name: getattr(a, f.name) for f in fields(cls)}
        for name in ("frames", "objects", "qas"):
            kw[name] = parse_range(kw[name], f"--{name}")
        kw["shard"] = parse_shard(kw["shard"])
        return cls(**kw)


def parse_shard(text) -> Tuple[int, int]:
    if isinstance(text, tuple):
        return text
    i, sep, n = str(text).partition("/")
    try:
        return int(i), int(n)
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None


def settings(cfg: GenConfig, prompt) -> dict:
    """What decides the answers of a folder: a resumed run (or another shard) must have the same."""
    return {"writer": cfg.writer_id, "temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
            "seed": cfg.seed, "per_seed": cfg.per_seed, "domain": cfg.domain, "frames": list(cfg.frames),
            "objects": list(cfg.objects), "qas": list(cfg.qas), "shards": cfg.shard[1], **prompt.digests()}


def parser(description: str = None) -> argparse.ArgumentParser:
    D = GenConfig
    p = argparse.ArgumentParser(prog="python -m textvid.generate", description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what")
    g.add_argument("--seeds", required=True, help="seed captions: .txt (one a line) or .jsonl ({caption, domain?})")
    g.add_argument("--out", required=True,
                   help="the TextVid folder to write (textvid.json, ...), e.g. data/mydomain/textvid")
    g.add_argument("--template", default=D.template, help="the prompt template (default textvid/prompts/tideo.txt)")
    g.add_argument("--schema", default=D.schema,
                   help="the answer's JSON schema (default textvid/prompts/tideo.schema.json)")
    g.add_argument("--frames", default="%d-%d" % D.frames, help="frames per tideo, MIN-MAX")
    g.add_argument("--objects", default="%d-%d" % D.objects, help="object descriptions per frame, MIN-MAX")
    g.add_argument("--qas", default="%d-%d" % D.qas, help="multiple-choice QAs per tideo (5 options each), MIN-MAX")
    g.add_argument("--domain", default=D.domain, help="the domain of seeds that name none")
    g.add_argument("--per_seed", type=int, default=D.per_seed, help="tideos per seed caption")
    g.add_argument("--seed", type=int, default=D.seed, help="decides the tideo ids and the sampling seeds")
    w = p.add_argument_group("the writer LLM")
    w.add_argument("--hf_model", default=D.hf_model, help="a local Hugging Face model folder (with a chat template)")
    w.add_argument("--base_url", default=D.base_url,
                   help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    w.add_argument("--model", default=D.model, help="with --base_url: the model's name on the server")
    w.add_argument("--api_key_env", default=D.api_key_env, help="the environment variable holding the API key")
    w.add_argument("--temperature", type=float, default=D.temperature, help="0: the most likely token")
    w.add_argument("--top_p", type=float, default=D.top_p)
    w.add_argument("--max_tokens", type=int, default=D.max_tokens, help="the longest answer, in tokens")
    w.add_argument("--max_tries", type=int, default=D.max_tries,
                   help="answers asked per tideo before it is given up (listed in rejected.json)")
    r = p.add_argument_group("running")
    r.add_argument("--concurrency", type=int, default=D.concurrency, help="--base_url: requests in flight")
    r.add_argument("--timeout", type=float, default=D.timeout, help="--base_url: seconds to wait for one answer")
    r.add_argument("--retries", type=int, default=D.retries,
                   help="--base_url: resends of a request after a connection error, timeout, 429 or 5xx")
    r.add_argument("--response_format", default=D.response_format, choices=RESPONSE_FORMATS,
                   help="--base_url: structured output asked of the server (auto: json_schema, then what it takes)")
    r.add_argument("--batch_size", type=int, default=D.batch_size, help="--hf_model: answers written at once")
    r.add_argument("--device", default=D.device, help="--hf_model: auto, cpu, cuda")
    r.add_argument("--dtype", default=D.dtype, help="--hf_model: auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16")
    r.add_argument("--shard", default="%d/%d" % D.shard,
                   help="I/N: write the seeds of shard I of N (0-based), e.g. one shard per machine into one "
                        "shared --out; the last shard to finish writes textvid.json")
    r.add_argument("--overwrite", action="store_true", help="drop this shard's earlier answers and start over")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    return p
