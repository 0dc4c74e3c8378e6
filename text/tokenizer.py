"""Llama-2 SentencePiece and Llama-3 tiktoken tokenizers behind one interface.

`encode(s)` never adds BOS/EOS. Ids that prompts need (BOS, EOS, the separator
after the video slot, the newline-form keyword tokens) are derived from the tokenizer file, never
hard-coded; `load_tokenizer` picks the kind from the file's content.
"""
import base64
import os
from pathlib import Path
from typing import List

from util.errors import MissingFileError, TokenizerError

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_N_RESERVED_IDS = 256


def llama3_special_tokens() -> List[str]:
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
             "<|reserved_special_token_1|>", "<|reserved_special_token_2|>", "<|reserved_special_token_3|>",
             "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    return named + [f"<|reserved_special_token_{i}|>" for i in range(5, LLAMA3_N_RESERVED_IDS - 5)]


class Tokenizer:
    kind: str          # "sentencepiece" | "tiktoken"
    bos_id: int
    eos_id: int
    n_words: int
    sep_text: str      # the text of the one-token separator after the video slot

    def encode(self, s: str) -> List[int]:
        raise NotImplementedError

    def decode(self, ids: List[int]) -> str:
        raise NotImplementedError

    @property
    def sep_id(self) -> int:
        return self.single_token(self.sep_text)

    def single_token(self, text: str) -> int:
        raise NotImplementedError

    def newline_form(self, word: str) -> int:
        """Id of `word` when it follows a newline inside a segment (e.g. Llama-2 "\\nAnswer" -> 22550)."""
        ids = self.encode("\n" + word)
        if not ids or self.decode(ids[-1:]).strip() != word:
            raise TokenizerError(f"tokenizer {self.path}: '{word}' after a newline is not a single token "
                                 f"(got ids {ids}); the prompt format needs it to be one")
        return ids[-1]


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"
    sep_text = "\n"

    def __init__(self, path: str):
        from sentencepiece import SentencePieceProcessor
        self.path = str(path)
        self.sp = SentencePieceProcessor(model_file=self.path)
        self.bos_id, self.eos_id = self.sp.bos_id(), self.sp.eos_id()
        self.pad_id = self.sp.pad_id()
        self.n_words = self.sp.vocab_size()

    def encode(self, s):
        return self.sp.encode(s)

    def decode(self, ids):
        return self.sp.decode(list(ids))

    def single_token(self, text):
        if text == "\n":  # SentencePiece writes a lone newline as its byte piece
            i = self.sp.piece_to_id("<0x0A>")
            if i == self.sp.unk_id():
                raise TokenizerError(f"tokenizer {self.path}: no '<0x0A>' byte piece for the video separator")
            return i
        ids = self.encode(text)
        if len(ids) != 1:
            raise TokenizerError(f"tokenizer {self.path}: {text!r} is not one token ({ids})")
        return ids[0]


class TiktokenTokenizer(Tokenizer):
    kind = "tiktoken"
    sep_text = ".\n"

    def __init__(self, path: str):
        import tiktoken
        self.path = str(path)
        ranks = {}
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    tok, rank = line.split()
                    ranks[base64.b64decode(tok)] = int(rank)
                except ValueError as e:
                    raise TokenizerError(f"{path}:{lineno}: not a tiktoken 'base64 rank' line") from e
        n = len(ranks)
        specials = {t: n + i for i, t in enumerate(llama3_special_tokens())}
        self.enc = tiktoken.Encoding(name=Path(path).name, pat_str=LLAMA3_PATTERN,
                                     mergeable_ranks=ranks, special_tokens=specials)
        self.n_words = self.enc.n_vocab
        self.bos_id = specials["<|begin_of_text|>"]
        self.eos_id = specials["<|end_of_text|>"]
        self.pad_id = -1

    def encode(self, s):
        # plain text only: special-token strings in data are encoded as text, never as control tokens
        return self.enc.encode(s, disallowed_special=())

    def decode(self, ids):
        return self.enc.decode(list(ids))

    def single_token(self, text):
        ids = self.encode(text)
        if len(ids) != 1:
            raise TokenizerError(f"tokenizer {self.path}: {text!r} is not one token ({ids})")
        return ids[0]


def load_tokenizer(path) -> Tokenizer:
    """SentencePiece model (protobuf) or tiktoken rank file, told apart by content."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"tokenizer file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(256)
    first = head.split(b"\n", 1)[0].split()
    if len(first) == 2 and first[1].isdigit():
        try:
            base64.b64decode(first[0], validate=True)
            return TiktokenTokenizer(path)
        except ValueError:
            pass
    try:
        return SentencePieceTokenizer(path)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with no file name
        raise TokenizerError(f"{path}: neither a SentencePiece model nor a tiktoken rank file ({e})") from e
