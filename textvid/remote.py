"""The writer behind an OpenAI-compatible endpoint (`--base_url`, `--model`): vLLM, SGLang, llama.cpp's server,
Ollama, TGI, `transformers serve`, hosted APIs. The key, if any, comes from the environment (`--api_key_env`,
default OPENAI_API_KEY) and is sent as a bearer token.

* --concurrency requests in flight, each on its own (daemon) thread: a stopped run does not wait for them.
* A request that fails for a passing reason — no connection, a timeout, HTTP 408/409/425/429 or 5xx — is
  sent again after 1, 2, 4, ... s (at most 30 s, times a jitter of 0.5-1.5, or the server's Retry-After),
  --retries times; then the run ends with one line, keeping what was written.
* Structured output: each request carries `response_format` {"type": "json_schema", ...} with the schema
  (--response_format auto or json_schema). A server that refuses the field (HTTP 400/422 naming it) is asked
  again with {"type": "json_object"}, then without (auto only); one that ignores it (`transformers serve`)
  answers as it likes, and the checks do the rest.
* HTTP 401/403/404 end the run (the key, the URL or --model is wrong); another 4xx is this answer's
  rejection ("refused", with the server's message), e.g. a prompt longer than the model's context.
"""
import json
import os
import queue
import random
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from typing import Optional, Tuple

from util.errors import ConfigError

from .writers import Answer, Done, NextRequest, Request

PASSING = {408, 409, 425, 429}
FORMATS = ("json_schema", "json_object", "none")


class HttpWriter:
    def __init__(self, cfg, schema: dict):
        self.cfg, self.schema = cfg, schema
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.key = os.environ.get(cfg.api_key_env) or None
        self.format = "json_schema" if cfg.response_format == "auto" else cfg.response_format
        self.peak = 0               # most requests in flight at once
        self._busy = 0
        self._lock = threading.Lock()

    # ---- one request ----

    def body(self, r: Request) -> dict:
        c = self.cfg
        b = {"model": c.model, "messages": [{"role": "user", "content": r.prompt}], "temperature": c.temperature,
             "top_p": c.top_p, "max_tokens": c.max_tokens, "seed": r.seed}
        if self.format == "json_schema":
            b["response_format"] = {"type": "json_schema",
                                    "json_schema": {"name": "tideo", "schema": self.schema, "strict": True}}
        elif self.format == "json_object":
            b["response_format"] = {"type": "json_object"}
        return b

    def post(self, body: dict) -> Tuple[int, str, Optional[str]]:
        """(HTTP status, response text, Retry-After); raises OSError/HTTPException for a failed connection."""
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.url, json.dumps(body).encode("utf-8"), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
                return resp.status, resp.read().decode("utf-8", "replace"), None
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace"), e.headers.get("Retry-After")

    def ask(self, r: Request) -> Answer:
        """The server's answer to `r`, with the retries of the module docstring."""
        jitter = random.Random(r.seed)
        for attempt in range(self.cfg.retries + 1):
            fmt = self.format
            try:
                status, text, retry_after = self.post(self.body(r))
                why = f"HTTP {status}: {_message(text)}"
            except (OSError, HTTPException) as e:  # URLError, timeouts, resets are OSErrors
                status, text, retry_after = None, "", None
                why = _reason(e)
            if status == 200:
                return self.parse(text)
            if status in (400, 422) and fmt != "none" and self.cfg.response_format == "auto" \
                    and ("response_format" in text or "json_schema" in text):
                self._downgrade(fmt, why)
                continue
            if status in (401, 403, 404):
                raise ConfigError(f"--base_url {self.cfg.base_url} --model {self.cfg.model}: {why} (check the URL, "
                                  f"the model name and ${self.cfg.api_key_env})")
            if status is not None and 400 <= status < 500 and status not in PASSING:
                return Answer(None, refused=why)
            if attempt == self.cfg.retries:
                break
            delay = _delay(attempt, retry_after, jitter)
            print(f"textvid.generate: {self.url}: {why}; retry {attempt + 1} of {self.cfg.retries} in {delay:.1f} s",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
        raise ConfigError(f"--base_url {self.cfg.base_url}: no answer after {self.cfg.retries} retries ({why}); is "
                          "the server up? Rerun the same command to go on")

    def _downgrade(self, fmt: str, why: str):
        with self._lock:
            if self.format == fmt:
                self.format = FORMATS[FORMATS.index(fmt) + 1]
                print(f"textvid.generate: the server refused response_format {fmt} ({why}); asking with "
                      f"{self.format} from now on", file=sys.stderr, flush=True)

    @staticmethod
    def parse(text: str) -> Answer:
        try:
            data = json.loads(text)
            choice = data["choices"][0]
            content = choice["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return Answer(None, refused=f"not a chat completion: {_message(text)}")
        usage = data.get("usage") or {}
        return Answer(content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                      truncated=choice.get("finish_reason") == "length")

    # ---- many requests ----

    def _work(self, todo: queue.Queue, results: queue.Queue):
        while True:
            r = todo.get()
            with self._lock:
                self._busy += 1
                self.peak = max(self.peak, self._busy)
            try:
                results.put((r, self.ask(r), None))
            except BaseException as e:  # handed to the main thread
                results.put((r, None, e))
            finally:
                with self._lock:
                    self._busy -= 1

    def run(self, next_request: NextRequest, done: Done):
        todo, results = queue.Queue(), queue.Queue()
        for _ in range(self.cfg.concurrency):
            threading.Thread(target=self._work, args=(todo, results), daemon=True).start()
        in_flight = 0
        while True:
            while in_flight < self.cfg.concurrency:
                r = next_request()
                if r is None:
                    break
                todo.put(r)
                in_flight += 1
            if in_flight == 0:
                return
            r, answer, error = results.get()
            in_flight -= 1
            if error is not None:
                raise error
            done(r, answer)


def _delay(attempt: int, retry_after: Optional[str], jitter: random.Random) -> float:
    if retry_after:
        try:
            return min(60.0, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return min(30.0, 2.0 ** attempt) * jitter.uniform(0.5, 1.5)


def _message(text: str) -> str:
    try:
        err = json.loads(text).get("error")
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err or text)
    except (ValueError, AttributeError):
        pass
    return " ".join(str(text).split())[:200]


def _reason(e: BaseException) -> str:
    inner = getattr(e, "reason", e)
    if isinstance(inner, (socket.timeout, TimeoutError)):
        return "timed out"
    return " ".join(str(getattr(inner, "strerror", None) or inner or type(e).__name__).split())
