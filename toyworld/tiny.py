"""Tiny stand-ins for what a user brings (docs/formats.md): Meta-format Llama folders with random weights and
a self-trained Llama-2-style SentencePiece tokenizer. Tests, the benchmark and the synthetic world
(`toyworld/synthetic.py`) build on these; nothing here is needed to run the real models.

    write_meta_checkpoint(folder, params, state, n_shards=1, dtype=torch.bfloat16)
    random_llama_state(args, seed=0, std=0.02) -> {Meta key: fp32 tensor}
    train_sentencepiece(out_path, texts=(), vocab_size=1000, multiple_of=8) -> Path
    make_tiny_llama(folder, tokenizer_path, dim=64, n_layers=2, ...) -> Path of <folder>/<name>
"""
import io
import json
import shutil
from pathlib import Path
from typing import Dict, Iterable, Optional

import torch

from llama.model import ModelArgs
from llama.weights import shard_dim

def write_meta_checkpoint(folder, params: dict, state: Dict[str, torch.Tensor], n_shards: int = 1,
                          dtype: Optional[torch.dtype] = torch.bfloat16) -> Path:
    """Write Meta's on-disk layout: `params.json` + `consolidated.00.pth .. NN.pth`, each shard a
    model-parallel slice (split dims as Meta's, norms replicated), tensors cast to `dtype`
    (bf16 like Meta's; None keeps them as given). Every slice is a fresh contiguous tensor, so a
    shard file holds only its own slice."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if n_shards < 1:
        raise ValueError("n_shards must be >= 1")
    shards = [{} for _ in range(n_shards)]
    for key, t in state.items():
        t = t.detach().cpu()
        if dtype is not None:
            t = t.to(dtype)
        d = shard_dim(key)
        if d is None or n_shards == 1:
            for s in shards:
                s[key] = t.clone()
            continue
        if t.shape[d] % n_shards:
            raise ValueError(f"{key}: dim {d} of size {t.shape[d]} does not split into {n_shards} shards")
        for s, part in zip(shards, torch.chunk(t, n_shards, dim=d)):
            s[key] = part.contiguous().clone()
    for old in folder.glob("consolidated.*.pth"):
        old.unlink()
    for i, s in enumerate(shards):
        torch.save(s, folder / f"consolidated.{i:02d}.pth")
    with open(folder / "params.json", "w") as f:
        json.dump(params, f)
    return folder


def random_llama_state(args: ModelArgs, seed: int = 0, std: float = 0.02,
                       norm_std: float = 0.1) -> Dict[str, torch.Tensor]:
    """A random fp32 backbone with Meta's key names and shapes for `args` (vocab_size must be set).
    Linear/embedding weights ~ N(0, std); RMSNorm weights 1 + N(0, norm_std) (not all ones, so a
    mix-up of norms is visible in tests). Deterministic for a seed."""
    if args.vocab_size <= 0:
        raise ValueError("random_llama_state needs args.vocab_size > 0")
    g = torch.Generator().manual_seed(seed)
    D, V, H = args.dim, args.vocab_size, args.ffn_hidden
    kv = args.n_kv_heads * args.head_dim

    def w(*shape):
        return torch.randn(*shape, generator=g) * std

    def nrm():
        return 1.0 + torch.randn(D, generator=g) * norm_std

    state = {"tok_embeddings.weight": w(V, D)}
    for i in range(args.n_layers):
        p = f"layers.{i}."
        state[p + "attention.wq.weight"] = w(args.n_heads * args.head_dim, D)
        state[p + "attention.wk.weight"] = w(kv, D)
        state[p + "attention.wv.weight"] = w(kv, D)
        state[p + "attention.wo.weight"] = w(D, args.n_heads * args.head_dim)
        state[p + "feed_forward.w1.weight"] = w(H, D)
        state[p + "feed_forward.w2.weight"] = w(D, H)
        state[p + "feed_forward.w3.weight"] = w(H, D)
        state[p + "attention_norm.weight"] = nrm()
        state[p + "ffn_norm.weight"] = nrm()
    state["norm.weight"] = nrm()
    state["output.weight"] = w(V, D)
    return state


# ---- tokenizer ----

KEYWORDS = ("Answer", "Question", "Description")  # must be single tokens after a newline (docs/prompts.md)


def _prompt_texts():
    from text import prompts as P
    texts = [P.MCQA_INSTR, P.DIALOGUE_INSTR, P.DIALOGUE_VAQ_INSTR, P.DIALOGUE_QAV_INSTR, P.CAPTION_INSTR,
             P.OPENQA_INSTR, P.VAQ_INSTR, P.QAV_INSTR]
    texts = [t.strip() + " Video:" for t in texts]
    texts += [P.ANSWER_TEXT + f"({c})" for c in P.LETTERS[:5]] + [P.STAR_ANSWER_TEXT + f"({c})" for c in P.LETTERS[:5]]
    texts += ["Question: what is it?", "Choices: ", "Dialogue: hello.", "Description: a video.", "Video:"]
    return texts


def train_sentencepiece(out_path, texts: Iterable[str] = (), vocab_size: int = 1000,
                        multiple_of: int = 8) -> Path:
    """Train a Llama-2-style SentencePiece model on the prompt texts of `text/prompts.py` plus `texts`
    and write it to `out_path`.

    Llama-2 style: BPE, byte_fallback (so `<0x0A>` .. every byte is a piece and any text encodes),
    unk 0, bos 1, eos 2, pad -1, identity normalisation, dummy prefix, digits split. "Answer",
    "Question", "Description" are pieces both bare (their newline form, as `Tokenizer.newline_form`
    needs) and with the word-boundary mark (their segment-start form), like the real tokenizer's
    22550 vs 673. `vocab_size` is an upper bound: a small corpus yields fewer pieces (never fewer
    than 3 + 6 keyword pieces + 256 bytes + the distinct characters); the size is then rounded down
    to a multiple of `multiple_of` where possible, so that model-parallel shards split the output
    layer evenly. Deterministic: the same texts give the same file."""
    import sentencepiece as spm

    sents = [s.replace("\n", " ").strip() for s in list(_prompt_texts()) + list(texts)]
    sents = [s for s in sents if s]
    user = [f"\u2581{k}" for k in KEYWORDS] + list(KEYWORDS)
    n_chars = len(set("".join(sents)) | {"\u2581"})
    floor = 3 + len(user) + 256 + n_chars
    if vocab_size < floor:
        raise ValueError(f"vocab_size={vocab_size} is too small: need >= {floor} "
                         f"(3 specials + {len(user)} keywords + 256 bytes + {n_chars} characters)")

    def train(n, hard):
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sents), model_writer=buf, vocab_size=n, hard_vocab_limit=hard,
            model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            character_coverage=1.0, normalization_rule_name="identity", add_dummy_prefix=True,
            remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
            user_defined_symbols=user, num_threads=1, shuffle_input_sentence=False,
            minloglevel=2)
        return buf.getvalue()

    model = train(vocab_size, False)
    n = spm.SentencePieceProcessor(model_proto=model).vocab_size()
    target = n - n % multiple_of
    if floor <= target < n:
        model = train(target, True)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_bytes(model)
    return out_path


# ---- a whole tiny Llama folder ----

def make_tiny_llama(folder, tokenizer_path, dim: int = 64, n_layers: int = 2, n_heads: int = 4,
                    n_kv_heads: Optional[int] = None, ffn_dim_multiplier: Optional[float] = None,
                    rope_theta: Optional[float] = None, n_shards: int = 1, seed: int = 0,
                    llama2_style: bool = True, name: str = "tiny", multiple_of: int = 32,
                    norm_eps: float = 1e-5, std: float = 0.02,
                    dtype: Optional[torch.dtype] = torch.bfloat16, use_scaled_rope: bool = False,
                    rope_scaling_factor: Optional[float] = None, tie_embeddings: bool = False) -> Path:
    """Write `<folder>/<name>/{params.json, consolidated.NN.pth}` with random weights sized for the
    tokenizer, and copy the tokenizer to `<folder>/tokenizer.model` (Meta's layout, e.g.
    `pretrained/llama2/tiny/...` + `pretrained/llama2/tokenizer.model`). Returns the model folder.

    llama2_style: params.json says `vocab_size: -1` and the shards carry Meta's `rope.freqs`;
    otherwise (Llama-3 style) params.json holds the real vocab size. Keys set to None are left out
    of params.json, as Meta's files do. Llama-3.1 style: `use_scaled_rope` (params.json states no factor,
    as Meta's files; `rope_scaling_factor` writes one). Llama-3.2 1B/3B style: also `tie_embeddings`, whose
    shards carry `output.weight` as a copy of `tok_embeddings.weight`, as Meta's 3.2 files do."""
    from text.tokenizer import load_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok_dst = folder / "tokenizer.model"
    if Path(tokenizer_path).resolve() != tok_dst.resolve():
        shutil.copyfile(tokenizer_path, tok_dst)
    vocab = load_tokenizer(tok_dst).n_words
    args = ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=vocab,
                     multiple_of=multiple_of, ffn_dim_multiplier=ffn_dim_multiplier, norm_eps=norm_eps,
                     rope_theta=10000.0 if rope_theta is None else rope_theta)
    state = random_llama_state(args, seed=seed, std=std)
    params = {"dim": dim, "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
              "vocab_size": -1 if llama2_style else vocab, "multiple_of": multiple_of,
              "ffn_dim_multiplier": ffn_dim_multiplier, "norm_eps": norm_eps, "rope_theta": rope_theta}
    if use_scaled_rope:
        params.update(use_scaled_rope=True, rope_scaling_factor=rope_scaling_factor)
    params = {k: v for k, v in params.items() if v is not None}
    if tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"].clone()
    if llama2_style:
        hd = args.head_dim
        state["rope.freqs"] = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
    return write_meta_checkpoint(folder / name, params, state, n_shards=n_shards, dtype=dtype)
