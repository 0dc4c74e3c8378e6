"""The writer LLM behind one interface: what the run asks, what comes back.

    writer = run.make_writer(cfg, prompt)   # remote.HttpWriter (--base_url) or local.LocalWriter (--hf_model)
    writer.run(next_request, done)          # until next_request() has nothing and nothing is in flight

`next_request()` returns a `Request` or None (nothing to ask right now); `done(request, answer)` is called in
the calling thread for every answer, and may queue more requests (a retry). A writer asks as many requests
at once as it can (--concurrency requests in flight, or a --batch_size batch on the device). An error that
no retry can mend (a wrong key, an unknown model, a server that stays away) is an `InputError`.
"""
from dataclasses import dataclass
from typing import Callable, Optional

from .seeds import Job


@dataclass(frozen=True)
class Request:
    job: Job
    try_no: int           # 1 .. --max_tries
    prompt: str           # the user message
    seed: int             # the sampling seed of this try (Job.request_seed)


@dataclass(frozen=True)
class Answer:
    text: Optional[str]
    tokens_in: int = 0
    tokens_out: int = 0
    truncated: bool = False      # cut at --max_tokens
    refused: Optional[str] = None  # the server refused this one request (HTTP 400, 413, 422): its message


NextRequest = Callable[[], Optional[Request]]
Done = Callable[[Request, Answer], None]
