"""The writer as a local transformers model (`--hf_model DIR`, a Hugging Face folder with a fast tokenizer and
a chat template), in batches of --batch_size on --device, every token constrained to the answer's JSON
schema by llguidance (docs/textvid.md says why that library).

Each step, `SchemaSampler` (a transformers LogitsProcessor) moves every row's grammar matcher past the token
it chose last, masks the tokens the schema does not allow, and draws the next token itself from the
masked distribution (--temperature, --top_p; 0: the most likely one) with the row's own generator, seeded
by the request; `generate` then keeps that token (greedy over a one-hot). A row's answer depends on its
prompt and its seed, not on which rows share its batch (up to floating-point sums). A row whose JSON is
complete may only end (EOS); one that reaches --max_tokens first is "truncated".
"""
from typing import List

import torch

from util.dist import DTYPES, select_device
from util.errors import CheckpointError, ConfigError

from .writers import Answer, Done, NextRequest, Request


def chat_ids(tok, prompt: str) -> List[int]:
    """The prompt's token ids: the user message through the tokenizer's chat template, ready for the answer."""
    return list(tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False))


def allowed_tokens(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[B, ceil(V/32)] int32 bitmask (bit j of word i: token 32 i + j) -> [B, vocab] bool."""
    bits = (bitmask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32, device=bitmask.device)) & 1
    allowed = bits.bool().flatten(1)
    if allowed.shape[1] < vocab:  # the model's output layer may be wider than the tokenizer
        allowed = torch.cat([allowed, allowed.new_zeros(allowed.shape[0], vocab - allowed.shape[1])], 1)
    return allowed[:, :vocab]


class SchemaSampler:
    """A LogitsProcessor: schema mask + per-row seeded sampling (module docstring)."""

    def __init__(self, lltok, grammar: str, seeds: List[int], temperature: float, top_p: float, eos: int):
        import llguidance
        import llguidance.torch as llt
        self.llt = llt
        self.matchers = [llguidance.LLMatcher(lltok, grammar) for _ in seeds]
        self.executor = llguidance.LLExecutor()
        self.gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.bitmask = llt.allocate_token_bitmask(len(seeds), lltok.vocab_size)
        self.temperature, self.top_p, self.eos = temperature, top_p, eos
        self.started = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.started:
            for m, t in zip(self.matchers, input_ids[:, -1].tolist()):
                if not m.is_stopped():
                    m.consume_token(t)
        self.started = True
        live = [(m, i) for i, m in enumerate(self.matchers) if not m.is_stopped()]
        if live:
            self.llt.fill_next_token_bitmask_par(self.executor, live, self.bitmask)
        scores = scores.float().masked_fill(~allowed_tokens(self.bitmask.to(scores.device), scores.shape[1]),
                                            float("-inf"))
        picks = self.pick(scores)
        out = torch.full_like(scores, float("-inf"))
        for i, m in enumerate(self.matchers):
            out[i, self.eos if m.is_stopped() else picks[i]] = 0.0
        return out

    def pick(self, scores: torch.Tensor) -> List[int]:
        if self.temperature <= 0:
            return scores.argmax(-1).tolist()
        probs = torch.softmax(scores / self.temperature, -1)
        if self.top_p < 1:
            sorted_p, order = probs.sort(-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.top_p  # keep the smallest head reaching top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        probs = probs.cpu()
        return [int(torch.multinomial(p, 1, generator=g)) for p, g in zip(probs, self.gens)]

    def finished(self, i: int) -> bool:
        """Row i's JSON is complete (it ended by the schema, not by --max_tokens)."""
        return self.matchers[i].is_stopped() and not self.matchers[i].is_error()


class LocalWriter:
    def __init__(self, cfg, schema: dict, schema_path: str):
        import llguidance
        import llguidance.hf
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        transformers.logging.set_verbosity_error()
        self.cfg = cfg
        self.device = select_device(cfg.device)
        if cfg.dtype == "auto":
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            dtype = DTYPES[cfg.dtype]
        try:
            self.tok = AutoTokenizer.from_pretrained(cfg.hf_model)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"--hf_model {cfg.hf_model}: no tokenizer there ({e})") from None
        if not self.tok.is_fast:
            raise CheckpointError(f"--hf_model {cfg.hf_model}: constrained decoding needs a fast tokenizer "
                                  "(tokenizer.json)")
        if not self.tok.chat_template:
            raise CheckpointError(f"--hf_model {cfg.hf_model}: the tokenizer has no chat template "
                                  "(tokenizer_config.json 'chat_template' or chat_template.jinja)")
        self.lltok = llguidance.hf.from_tokenizer(self.tok)
        self.grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        problem = llguidance.LLMatcher.validate_grammar(self.grammar, self.lltok)
        if problem:
            raise ConfigError(f"{schema_path}: llguidance cannot follow this schema: {problem.splitlines()[0]}")
        try:
            self.model = AutoModelForCausalLM.from_pretrained(cfg.hf_model, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise CheckpointError(f"--hf_model {cfg.hf_model}: cannot load the model ({e})") from None
        self.peak = 0
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    def encode(self, prompt: str) -> List[int]:
        return chat_ids(self.tok, prompt)

    def answer_batch(self, batch: List[Request]) -> List[Answer]:
        from transformers import GenerationConfig, LogitsProcessorList

        rows = [self.encode(r.prompt) for r in batch]
        width = max(map(len, rows))
        ids = torch.tensor([[self.pad] * (width - len(x)) + x for x in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in rows], device=self.device)
        eos = self.tok.eos_token_id
        sampler = SchemaSampler(self.lltok, self.grammar, [r.seed for r in batch], self.cfg.temperature,
                                self.cfg.top_p, eos)
        gen = GenerationConfig(max_new_tokens=self.cfg.max_tokens, do_sample=False, eos_token_id=eos,
                               pad_token_id=self.pad, temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                                      logits_processor=LogitsProcessorList([sampler]))
        answers = []
        for i, x in enumerate(rows):
            new = out[i, width:].tolist()
            n = new.index(eos) + 1 if eos in new else len(new)
            text = self.tok.decode(new[:n], skip_special_tokens=True)
            answers.append(Answer(text, len(x), n, truncated=not sampler.finished(i)))
        return answers

    def run(self, next_request: NextRequest, done: Done):
        while True:
            batch = []
            while len(batch) < self.cfg.batch_size:
                r = next_request()
                if r is None:
                    break
                batch.append(r)
            if not batch:
                return
            self.peak = max(self.peak, len(batch))
            for r, a in zip(batch, self.answer_batch(batch)):
                done(r, a)
