"""One generation run: seeds -> jobs -> the writer -> the checks -> the shard log -> the final files.

    run(cfg) -> Report

1. Everything a user can get wrong is checked before the writer loads: flags, seeds, template, schema, the
   output folder (locked for this shard; its settings must be this run's).
2. The shard's jobs not done yet are asked, each try of a job after the previous one was rejected, one job
   of a caption group at a time (`Scheduler`). Every answer is checked (`checks.accept`, then the
   near-duplicate check against the group's kept tideos) and appended to the shard's log at once.
3. The table (`Report`) is printed; if every job of every shard is done, textvid.json, rejected.json and
   frame_texts.txt are written (`Store.assemble`).
"""
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Dict, List, Optional

from util.errors import DataError

from .checks import Rejected, accept, fingerprint
from .config import GenConfig, settings
from .prompt import Prompt
from .seeds import Job, plan_jobs, read_seeds, shard_jobs
from .store import EXCERPT, JobState, Store
from .writers import Answer, Request


class Scheduler:
    """Which request comes next, and what an answer does: kept, retried, or given up (module docstring, 2)."""

    def __init__(self, jobs: List[Job], states: Dict[str, JobState], cfg: GenConfig, prompt: Prompt, store: Store,
                 bar):
        self.cfg, self.prompt, self.store, self.bar, self.states = cfg, prompt, store, bar, states
        self.kept: Dict[int, Dict[str, str]] = {}   # group -> fingerprint -> idx of its kept tideos
        for j in jobs:
            t = states.get(j.idx, JobState()).tideo
            if t is not None:
                self.kept.setdefault(j.group, {})[fingerprint(t)] = j.idx
        self.todo = deque(j for j in jobs if not states.get(j.idx, JobState()).finished(cfg.max_tries))
        self.waiting: Dict[int, deque] = {}          # group -> its jobs that wait for the one in flight
        self.busy = set()
        self.written = 0                             # tideos kept by this run

    def next_request(self) -> Optional[Request]:
        while self.todo:
            job = self.todo.popleft()
            if job.group in self.busy:
                self.waiting.setdefault(job.group, deque()).append(job)
                continue
            self.busy.add(job.group)
            st = self.states.setdefault(job.idx, JobState())
            try_no = len(st.rejections) + 1
            domain = job.seed.domain or self.cfg.domain
            return Request(job, try_no, self.prompt.render(job.seed.caption, domain), job.request_seed(try_no))
        return None

    def done(self, r: Request, a: Answer):
        job, st = r.job, self.states[r.job.idx]
        line = {"idx": job.idx, "try": r.try_no, "tokens": [a.tokens_in, a.tokens_out]}
        try:
            tideo = self.check(job, a)
        except Rejected as e:
            line.update(reason=e.reason, message=e.message, answer=(a.text or "")[:EXCERPT])
            self.store.append(line)
            st.add_tokens(line)
            st.rejections.append({"try": r.try_no, "reason": e.reason, "message": e.message})
            if not st.finished(self.cfg.max_tries):
                self.todo.appendleft(job)   # its next try, before other groups' jobs
                self.busy.discard(job.group)
                return
        else:
            line["tideo"] = tideo
            self.store.append(line)
            st.add_tokens(line)
            st.tideo = tideo
            self.kept.setdefault(job.group, {})[fingerprint(tideo)] = job.idx
            self.written += 1
        self.busy.discard(job.group)
        self.todo.extendleft(reversed(self.waiting.pop(job.group, ())))
        self.bar.update(1)

    def check(self, job: Job, a: Answer) -> dict:
        if a.refused is not None:
            raise Rejected("refused", a.refused)
        if a.truncated:
            raise Rejected("truncated", f"the answer reached --max_tokens {self.cfg.max_tokens}")
        tideo = accept(a.text, job, self.cfg.shape)
        twin = self.kept.get(job.group, {}).get(fingerprint(tideo))
        if twin is not None:
            raise Rejected("near-duplicate", f"the same text as tideo {twin} of the same seed caption")
        return tideo


@dataclass
class Report:
    shard: tuple
    writer: str
    asked: int                 # jobs of this shard
    before: int                # of them done before this run
    written: int               # kept tideos of this shard (all runs)
    given_up: int
    rejected: Counter = field(default_factory=Counter)   # every rejected answer of this shard, by reason
    tokens: tuple = (0, 0)
    seconds: float = 0.0
    written_now: int = 0
    peak: int = 0              # requests in flight at once (--concurrency / --batch_size)
    open_jobs: Optional[int] = None   # jobs of any shard still open; 0: the final files are written

    def table(self) -> str:
        i, n = self.shard
        rows = [("seeds asked", f"{self.asked}" + (f" ({self.before} done before this run)" if self.before else "")),
                ("tideos written", f"{self.written}"),
                ("given up", f"{self.given_up} (see rejected.json)" if self.given_up else "0"),
                ("answers rejected", f"{sum(self.rejected.values())}")]
        rows += [(f"  {reason}", f"{k}") for reason, k in self.rejected.most_common()]
        rows += [("tokens in / out", f"{self.tokens[0]:,} / {self.tokens[1]:,}"),
                 ("time (this run)", str(timedelta(seconds=round(self.seconds)))),
                 ("tideos/s (this run)", f"{self.written_now / max(self.seconds, 1e-9):.3f}"),
                 ("in flight (peak)", f"{self.peak}")]
        head = f"textvid.generate, shard {i}/{n}, writer {self.writer}"
        return "\n".join([head] + [f"  {k:<24} {v}" for k, v in rows])


def make_writer(cfg: GenConfig, prompt: Prompt):
    """The writer of the flags: a local model (--hf_model) or an OpenAI-compatible server (--base_url). The
    writers import writers.py's types; only this module picks one (no import circle)."""
    if cfg.hf_model:
        from .local import LocalWriter
        return LocalWriter(cfg, prompt.schema, prompt.schema_path)
    from .remote import HttpWriter
    return HttpWriter(cfg, prompt.schema)


def run(cfg: GenConfig) -> Report:
    from tqdm import tqdm

    prompt = Prompt.load(cfg.template, cfg.schema, cfg.shape)
    jobs = plan_jobs(read_seeds(cfg.seeds), cfg.per_seed, cfg.seed)
    mine = shard_jobs(jobs, cfg.shard)
    with Store(cfg.out, cfg.shard, settings(cfg, prompt), cfg.overwrite) as store:
        states = store.load()
        before = sum(states.get(j.idx, JobState()).finished(cfg.max_tries) for j in mine)
        t0 = time.perf_counter()
        bar = tqdm(total=len(mine), initial=before, unit="tideo", disable=cfg.quiet, dynamic_ncols=True,
                   smoothing=0.05)
        sched = Scheduler(mine, states, cfg, prompt, store, bar)
        writer = None
        try:
            if sched.todo:
                writer = make_writer(cfg, prompt)
                writer.run(sched.next_request, sched.done)
        finally:
            bar.close()
        report = summarize(cfg, mine, states, before, time.perf_counter() - t0, sched, writer)
        left = store.assemble(jobs, cfg.max_tries)
        report.open_jobs = None if left is None else len(left)
    print(report.table())
    tell(cfg, report, states, mine)
    return report


def summarize(cfg, mine, states, before, seconds, sched, writer) -> Report:
    rejected, tokens, written, given_up = Counter(), [0, 0], 0, 0
    for j in mine:
        st = states.get(j.idx, JobState())
        rejected.update(x["reason"] for x in st.rejections)
        tokens = [tokens[0] + st.tokens[0], tokens[1] + st.tokens[1]]
        if st.tideo is not None:
            written += 1
        elif st.finished(cfg.max_tries):
            given_up += 1
    return Report(cfg.shard, cfg.model or cfg.hf_model, len(mine), before, written, given_up, rejected, tuple(tokens),
                  seconds, sched.written, getattr(writer, "peak", 0))


def tell(cfg, report: Report, states, mine):
    """The given-up jobs (a few), and where the output stands."""
    out = cfg.out
    for j in [j for j in mine if states.get(j.idx, JobState()).tideo is None][:5]:
        last = states[j.idx].rejections[-1]
        print(f"given up: tideo {j.idx} (seeds line {j.seed.line}) after {len(states[j.idx].rejections)} tries; "
              f"last: {last['reason']}: {last['message']}", file=sys.stderr)
    if report.open_jobs == 0:
        print(f"wrote {out}/textvid.json ({'all shards' if cfg.shard[1] > 1 else 'all seeds'}), rejected.json, "
              "frame_texts.txt")
        if report.written == 0 and cfg.shard[1] == 1:
            raise DataError(f"no answer passed the checks: {out}/textvid.json is empty (see {out}/rejected.json)")
    elif report.open_jobs is None:
        print(f"{out}/textvid.json: another shard is writing it now")
    else:
        print(f"{out}/textvid.json waits for {report.open_jobs} seeds of other shards; the last shard to finish "
              "writes it")
