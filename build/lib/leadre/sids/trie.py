"""S-ID tokens and the prefix tree (trie) of live ads' S-IDs that grounds constrained decoding (built from the S-ID
table's live rows where a model is loaded, never stored).

An S-ID is a string of tokens `<a_12><b_6><c_22><d_0>`: one token per codebook level (letters a, b, c, …) and a
last one that separates ads whose codes collide. Decoding may only follow paths of this trie, so every generated S-ID
is a real, live ad.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


TOKEN_PATTERN = re.compile(r"<([a-z])_(\d+)>")


def level_letter(level: int) -> str:
    """Letter of a level's tokens: 0 → a, 1 → b, …"""
    return string.ascii_lowercase[level]


def sid_token(level: int, code: int) -> str:
    return f"<{level_letter(level)}_{int(code)}>"


def format_sid(codes: Sequence[int]) -> str:
    """Codes of every level, the disambiguation index last → the S-ID string."""
    return "".join(sid_token(level, code) for level, code in enumerate(codes))


def sid_tokens(sid: str) -> list[str]:
    """Split an S-ID into its tokens; ValueError if the string is not exactly a well-formed token sequence."""
    tokens = [m.group(0) for m in TOKEN_PATTERN.finditer(sid)]
    if not tokens or "".join(tokens) != sid:
        raise ValueError(f"not an S-ID: {sid!r} (expected tokens like <a_12><b_6><c_0>)")
    for level, token in enumerate(tokens):
        if token[1] != level_letter(level):
            raise ValueError(f"not an S-ID: {sid!r} (token {level} is {token}, expected level '{level_letter(level)}')")
    return tokens


def token_order(token: str) -> tuple[str, int]:
    """Sort key: by level letter, then by code number (so <a_2> comes before <a_10>)."""
    match = TOKEN_PATTERN.fullmatch(token)
    if match is None:
        raise ValueError(f"not an S-ID token: {token!r}")
    return match.group(1), int(match.group(2))


@dataclass(frozen=True)
class TrieArrays:
    """The trie as flat arrays (CSR): node i's children are child_tokens/child_nodes[offsets[i]:offsets[i + 1]].

    Node 0 is the root; a node at depth == sid_length is a complete S-ID. This is the shape a vectorised logits mask
    wants: map child_tokens to tokenizer ids once, then each decoding step is an array slice.
    """

    offsets: np.ndarray  # int64, n_nodes + 1
    child_tokens: np.ndarray  # object (str), n_edges
    child_nodes: np.ndarray  # int64, n_edges
    depth: np.ndarray  # int64, n_nodes
    sid_length: int


class SidTrie:
    """Prefix tree over the token sequences of a set of S-IDs (all of the same length)."""

    def __init__(self) -> None:
        self._edges: list[dict[str, int]] = [{}]  # node id → {token: child node id}; node 0 is the root
        self._depth: list[int] = [0]
        self._count = 0
        self.sid_length: int | None = None

    @classmethod
    def from_sids(cls, sids: Iterable[str]) -> SidTrie:
        trie = cls()
        for sid in sids:
            trie.add(sid)
        return trie

    def add(self, sid: str) -> None:
        tokens = sid_tokens(sid)
        if self.sid_length is None:
            self.sid_length = len(tokens)
        elif len(tokens) != self.sid_length:
            # Mixed lengths would make a short S-ID a prefix of a longer one: decoding could not tell where to stop.
            raise ValueError(f"S-ID {sid!r} has {len(tokens)} tokens; this trie holds {self.sid_length}-token S-IDs")
        node, created = 0, False
        for token in tokens:
            child = self._edges[node].get(token)
            if child is None:
                child = len(self._edges)
                self._edges.append({})
                self._depth.append(self._depth[node] + 1)
                self._edges[node][token] = child
                created = True
            node = child
        self._count += created

    def node_of(self, prefix_tokens: Sequence[str]) -> int | None:
        """Node reached by following `prefix_tokens` from the root, or None if no S-ID starts that way."""
        node = 0
        for token in prefix_tokens:
            node = self._edges[node].get(token)
            if node is None:
                return None
        return node

    def children(self, prefix_tokens: tuple[str, ...] = ()) -> list[str]:
        """Valid next tokens after `prefix_tokens`, in code order; [] after a complete S-ID or an unknown prefix."""
        node = self.node_of(prefix_tokens)
        return [] if node is None else sorted(self._edges[node], key=token_order)

    def contains(self, sid: str) -> bool:
        try:
            tokens = sid_tokens(sid)
        except ValueError:
            return False
        return len(tokens) == self.sid_length and self.node_of(tokens) is not None

    __contains__ = contains

    def __len__(self) -> int:
        return self._count

    def sids(self) -> list[str]:
        """Every complete S-ID, in trie order."""
        found: list[str] = []

        def walk(node: int, prefix: str) -> None:
            if self._depth[node] == self.sid_length:
                found.append(prefix)
            for token in sorted(self._edges[node], key=token_order):
                walk(self._edges[node][token], prefix + token)

        if self.sid_length:
            walk(0, "")
        return found

    def to_arrays(self) -> TrieArrays:
        counts = np.array([len(e) for e in self._edges], dtype=np.int64)
        ordered = [sorted(e.items(), key=lambda item: token_order(item[0])) for e in self._edges]
        return TrieArrays(
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            child_tokens=np.array([t for edges in ordered for t, _ in edges], dtype=object),
            child_nodes=np.array([n for edges in ordered for _, n in edges], dtype=np.int64),
            depth=np.array(self._depth, dtype=np.int64),
            sid_length=self.sid_length or 0,
        )

