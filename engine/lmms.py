"""TOPA as an lmms-eval model (`pip install -e ".[lmms]"`, docs/lmms_eval.md): the entry point
`lmms_eval.models: topa = engine.lmms:manifest` registers model `topa`, a thin client of the Python API
(engine/api.py):

    python -m lmms_eval --model topa --model_args llama_model_path=pretrained/llama2/,model=7B,\\
        resume=vqa_checkpoint/topa_llama2_7b.pth,memory_path=data/textvid/memory.pkl --tasks mvbench ...

- generate_until: a prompt whose lines hold lettered options (`(A) ..`, `A. ..`, from A on, 2 or more)
  is answered by TOPA's letter protocol (`TOPAVideoQA.mvbench`: MVBench's prompt, the highest-ranked
  valid letter) and the answer is that letter; any other prompt is continued greedily
  (`TOPAVideoQA.complete`) up to `max_new_tokens` and cut at the first `until` string.
- loglikelihood: (mean NLL of the continuation's tokens given video + context, greedy?) — the loss
  lmms-eval takes the argmin of (`TOPAVideoQA.loglikelihood`).
- generate_until_multi_round: not supported (NotImplementedError).

Each video is decoded and encoded once per run (the API's feature cache, without the frame crops), and
requests are batched on the device (`batch_size`). Ranks come from RANK / WORLD_SIZE; lmms-eval gives
each rank its share of the documents.
"""
import re
import sys
from typing import Dict, List, Optional, Tuple

from lmms_eval.api.model import lmms
from tqdm import tqdm

from util.errors import ConfigError
from util.settings import from_strings

from .api import TOPAVideoQA
from .config import QAConfig

OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[\.\):]\s*(.+?)\s*$")
LABELS = ("question:", "options:", "option:", "choices:")
DEFAULT_NEW_TOKENS = 32


def manifest():
    """The entry point's payload: model `topa` (alias `topa_video`)."""
    from lmms_eval.models.registry_v2 import ModelManifest
    return ModelManifest(model_id="topa", simple_class_path="engine.lmms.TOPALmms", aliases=("topa_video",))


def _batch_size(v) -> int:
    """lmms-eval's --batch_size (default 1; "auto" / "auto:N" mean QAConfig's)."""
    s = str(v or "").strip().lower()
    return int(s) if s.isdigit() and int(s) > 0 else QAConfig.batch_size


def model_config(args: Dict[str, object]) -> QAConfig:
    """--model_args (strings; every QAConfig and ModelConfig setting by its name, read with its type) ->
    QAConfig; an unknown key is a ConfigError naming it. lmms-eval's own `batch_size` and `device` come
    here too; the plugin keeps every video's features (`cache_size`) but not the frame crops
    (`keep_images`) unless told otherwise."""
    a = dict(args)
    a.pop("max_batch_size", None)   # lmms-eval passes these to every model
    a["batch_size"] = _batch_size(a.get("batch_size"))
    if a.get("device") is None:
        a.pop("device", None)
    a.setdefault("cache_size", 10 ** 9)
    a.setdefault("keep_images", False)
    return from_strings(QAConfig, a, "--model_args (model topa; docs/lmms_eval.md lists them)")


def split_options(context: str) -> Optional[Tuple[str, List[str]]]:
    """(question, options) of a multiple-choice prompt: consecutive lines `(A) ..` / `A. ..` lettered
    from A (2 or more); the question is the last line before them that is more than a label. None for
    any other prompt."""
    lines = context.splitlines()
    for start, line in enumerate(lines):
        m = OPTION_LINE.match(line)
        if not m or m.group(1) != "A":
            continue
        options = []
        for follow in lines[start:]:
            m = OPTION_LINE.match(follow)
            if not m or m.group(1) != chr(ord("A") + len(options)):
                break
            options.append(m.group(2))
        if len(options) < 2:
            continue
        before = [t.strip() for t in lines[:start] if t.strip() and t.strip().lower() not in LABELS]
        if not before:
            return None
        question = before[-1]
        if question.lower().startswith("question:"):
            question = question[len("question:"):].strip()
        return question, options
    return None


class TOPALmms(lmms):
    """lmms-eval's "simple" model interface over one TOPAVideoQA (module docstring)."""
    is_simple = True

    def __init__(self, **kwargs):
        super().__init__()
        import os
        self.qa = TOPAVideoQA(model_config(kwargs), warn=lambda m: print(m, file=sys.stderr, flush=True))
        self.qa.load()
        self._rank = int(os.environ.get("RANK", "0"))
        self._world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self._warned = set()

    @property
    def device(self):
        return self.qa.device

    @property
    def batch_size(self) -> int:
        return self.qa.cfg.batch_size

    def _doc_video(self, doc_to_visual, doc_id, task, split):
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        visuals = visuals if isinstance(visuals, (list, tuple)) else [visuals]
        if not visuals:
            raise ConfigError(f"task {task}: document {doc_id} has no video")
        if all(isinstance(v, str) for v in visuals):
            if len(visuals) > 1:
                self._warn_once(f"task {task}: documents hold {len(visuals)} videos; TOPA reads the first")
            return visuals[0]
        import numpy as np
        return [np.asarray(v.convert("RGB")) for v in visuals]   # images: frames of one video

    def _warn_once(self, msg: str):
        if msg not in self._warned:
            self._warned.add(msg)
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    def generate_until(self, requests) -> List[str]:
        out: List[Optional[str]] = [None] * len(requests)
        mc, groups = [], {}
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            video = self._doc_video(doc_to_visual, doc_id, task, split)
            parsed = split_options(context)
            if parsed is not None:
                mc.append((i, (video, parsed[0], parsed[1])))
                continue
            gen_kwargs = dict(gen_kwargs or {})
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0:
                self._warn_once("TOPA decodes greedily: do_sample / temperature are not used")
            until = gen_kwargs.get("until") or []
            until = (until,) if isinstance(until, str) else tuple(until)
            new = int(gen_kwargs.get("max_new_tokens") or DEFAULT_NEW_TOKENS)
            groups.setdefault((until, new), []).append((i, (video, context)))
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="TOPA generate")
        for k in range(0, len(mc), self.batch_size):
            chunk = mc[k:k + self.batch_size]
            for (i, _), a in zip(chunk, self.qa.mvbench_batch([r for _, r in chunk])):
                out[i] = a.letter
            bar.update(len(chunk))
        for (until, new), members in groups.items():
            for k in range(0, len(members), self.batch_size):
                chunk = members[k:k + self.batch_size]
                for (i, _), a in zip(chunk, self.qa.complete_batch([r for _, r in chunk], until=until,
                                                                   max_new_tokens=new)):
                    out[i] = a.text
                bar.update(len(chunk))
        bar.close()
        return out

    def loglikelihood(self, requests) -> List[Tuple[float, bool]]:
        reqs = []
        for req in requests:
            context, target, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            continuation = target if isinstance(target, str) else target(doc)
            reqs.append((self._doc_video(doc_to_visual, doc_id, task, split), context, str(continuation)))
        out = []
        for k in tqdm(range(0, len(reqs), self.batch_size), disable=self.rank != 0, desc="TOPA loglikelihood"):
            got = self.qa.loglikelihood_batch(reqs[k:k + self.batch_size], with_greedy=True)
            out += [(r.mean, r.greedy) for r in got]
        return out

    def generate_until_multi_round(self, requests) -> List[str]:
        raise NotImplementedError("model topa answers one turn per request (generate_until, loglikelihood); "
                                  "multi-round tasks are not supported")
