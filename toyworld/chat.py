"""A tiny chat LLM in Hugging Face format, the stand-in for the writer of TextVid (`python -m textvid.generate
--hf_model DIR`, or `transformers serve DIR` behind `--base_url`): a random 2-layer `LlamaForCausalLM`, a
byte-level BPE tokenizer trained here (`tokenizer.json`, any text encodes), and a chat template.

    make_tiny_chat_llama(folder, seed=0) -> Path

`teach(folder, pairs)` overfits the model on (user message, answer) pairs so that greedy decoding answers
those messages with those texts: a server test gets answers that are known in advance (a valid tideo, a
broken one) from a real model, not a stub.
"""
from pathlib import Path
from typing import Iterable, Sequence, Tuple

import torch

from textvid.local import chat_ids

CONTROL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header|>", "<|end_header|>", "<|eot|>"]
# messages as Llama-3's template lays them out, with the tokenizer's own names
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header|>{{ m['role'] }}<|end_header|>\n\n"
                 "{{ m['content'] | trim }}<|eot|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header|>assistant<|end_header|>\n\n{% endif %}")
CORPUS = (  # what a tideo's JSON is made of, so that the merges include its pieces
    '{"frames": [{"caption": "A man walks a brown dog along a quiet street.", "objects": ["man: tall, '
    'in a blue coat", "dog: small and brown"]}], "QAs": [{"question": "What does the man hold?", "options": '
    '["A leash", "A cup", "A bag", "A phone", "A ball"], "answer": "A", "answer_open_ended": "He holds a '
    'leash."}], "global_video_caption": "A man walks his dog down a street in the morning."}',
    "Write a textual video about the caption below. Answer with JSON only. Frames, objects, questions, "
    "options, one correct answer among five plausible options, an open answer and a summary.",
)


def train_byte_bpe(texts: Iterable[str], vocab_size: int = 384):
    """A byte-level BPE `tokenizers.Tokenizer` (GPT-2 style: every byte is a piece) with CONTROL_TOKENS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CONTROL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def make_tiny_chat_llama(folder, seed: int = 0, dim: int = 64, n_layers: int = 2, n_heads: int = 4,
                         n_kv_heads: int = 2, vocab_size: int = 384, texts: Sequence[str] = ()) -> Path:
    """Write a random Llama with its tokenizer (trained on CORPUS + `texts`) and chat template into `folder`
    (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`).
    Deterministic for a seed."""
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    transformers.logging.set_verbosity_error()
    folder = Path(folder)
    fast = PreTrainedTokenizerFast(tokenizer_object=train_byte_bpe(list(CORPUS) + list(texts), vocab_size),
                                   bos_token=CONTROL_TOKENS[0], eos_token=CONTROL_TOKENS[4], pad_token=CONTROL_TOKENS[1])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    n_vocab = len(fast)
    config = LlamaConfig(vocab_size=n_vocab, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=n_layers,
                         num_attention_heads=n_heads, num_key_value_heads=n_kv_heads, max_position_embeddings=8192,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.do_sample = False
    model.save_pretrained(folder)
    return folder


def margin(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The smallest lead of the labelled token's logit over the best other one (positions with label -100
    left out): > 0 means greedy decoding follows the labels."""
    keep = labels != -100
    lg, lb = logits[keep], labels[keep]
    right = lg.gather(1, lb[:, None])[:, 0]
    other = lg.scatter(1, lb[:, None], float("-inf")).max(1).values
    return (right - other).min().item()


def teach(folder, pairs: Sequence[Tuple[str, str]], steps: int = 1000, lr: float = 3e-3, seed: int = 0,
          min_margin: float = 2.0) -> Path:
    """Overfit the model in `folder` on (user message, answer) pairs (answer tokens + end of turn) with
    AdamW, full batch, until every answer token leads the others by `min_margin` logits (so greedy decoding
    of each message gives its answer, with room for the small differences of a cached decoder); saved in
    place. Raises RuntimeError if `steps` are not enough."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    folder = Path(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    rows = []
    for user, answer in pairs:
        prompt = chat_ids(tok, user)
        target = tok.encode(answer, add_special_tokens=False) + [tok.eos_token_id]
        rows.append((prompt, target))
    width = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
        mask[i, :len(p) + len(t)] = 1
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24 and margin(logits, labels[:, 1:]) > min_margin:
            break
    else:
        raise RuntimeError(f"teach: {steps} steps did not memorise the answers (loss {loss.item():.3f})")
    model.eval()
    model.save_pretrained(folder)
    return folder
