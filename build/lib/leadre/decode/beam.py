"""Trie-constrained batched beam search over S-ID tokens, and value/diversity re-ranking of the ads it returns.

A search runs one forward pass over the left-padded prompts, then `sid_length` selection steps; every step but the
last is followed by a one-token forward pass that reuses the KV cache. Scores are true sequence log-probabilities
under the model: each step normalises over the whole vocabulary and only then restricts the candidates to the
trie's children, so the trie decides which beams survive, never what a beam is worth.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer

from leadre.sids.trie import TrieArrays

DEAD = float("-inf")  # score of a beam slot that holds no path (fewer live prefixes than beams)
NOT_A_SID = -1  # S-ID index of a sequence that is not a live ad's S-ID (only unconstrained search makes them)

TokenIds = Mapping[str, int] | Callable[[list[str]], list[int]]


@dataclass(frozen=True)
class TokenTrie:
    """The S-ID trie over tokenizer ids, as tensors, so a decoding step handles every beam at once.

    Layout: CSR (node i's edges are offsets[i]:offsets[i + 1]) rather than a dense node × token table. At ~200k ads
    the trie has ~1M nodes; a dense table over the ~1.3k S-ID tokens is ~1.3G cells (5 GiB as int32), and even one
    level's codebook (~256 columns) is ~1 GiB, nearly all empty because nodes below the first levels have a handful
    of children. CSR is four int64 arrays of ~1M entries (~32 MiB). A step stays vectorised: each beam's children
    are the window offsets[node] + arange(max_fanout[depth]), one gather for all beams, valid where the slot is below
    the node's child count; the window is never wider than one codebook.
    """

    offsets: torch.Tensor  # int64 (n_nodes + 1,)
    child_token_ids: torch.Tensor  # int64 (n_edges,): tokenizer id of each edge's token
    child_nodes: torch.Tensor  # int64 (n_edges,)
    leaf_sid: torch.Tensor  # int64 (n_nodes,): index into `sids` of a leaf's S-ID, NOT_A_SID for inner nodes
    max_fanout: tuple[int, ...]  # widest node at each depth 0 … sid_length - 1: that step's window width
    max_token_id: int
    sids: Sequence[str]  # the S-ID of each index the search returns
    sid_length: int
    # For per-prompt exclusions (host arrays: built once per batch, never on the device's hot path):
    parent: np.ndarray  # int64 (n_nodes,): each node's parent (the root is its own)
    leaf_count: np.ndarray  # int64 (n_nodes,): S-IDs below each node
    sid_leaf: np.ndarray  # int64 (len(sids),): the leaf node of each S-ID index, -1 if it is not in the trie

    @classmethod
    def build(cls, arrays: TrieArrays, token_ids: TokenIds, sids: Sequence[str] | None = None) -> TokenTrie:
        """`token_ids`: S-ID token → tokenizer id, a mapping or `tokenizer.convert_tokens_to_ids`.

        `sids` fixes what the returned indices mean (e.g. the rows of the S-ID table); every S-ID of the trie must be
        in it. Without it, indices follow trie order, the order of `SidTrie.sids()`.
        """
        if arrays.sid_length == 0:
            raise ValueError("the trie holds no S-IDs")
        vocab, edge_vocab = np.unique(arrays.child_tokens.astype(str), return_inverse=True)
        ids = _lookup(list(vocab), token_ids)
        n_nodes, n_edges = len(arrays.depth), len(arrays.child_nodes)
        counts = np.diff(arrays.offsets)

        parent = np.zeros(n_nodes, dtype=np.int64)
        parent[arrays.child_nodes] = np.repeat(np.arange(n_nodes), counts)
        in_edge = np.zeros(n_nodes, dtype=np.int64)
        in_edge[arrays.child_nodes] = np.arange(n_edges)
        leaves = np.flatnonzero(arrays.depth == arrays.sid_length)
        paths = np.empty((len(leaves), arrays.sid_length), dtype=np.int64)  # edge ids, root → leaf
        node = leaves
        for level in reversed(range(arrays.sid_length)):
            paths[:, level] = in_edge[node]
            node = parent[node]
        # A node's edges are stored in token order, so sorting leaves by their edge ids level by level is trie order.
        order = np.lexsort(paths.T[::-1])
        leaves, paths = leaves[order], paths[order]
        found = ["".join(tokens) for tokens in arrays.child_tokens[paths].tolist()]

        leaf_sid = np.full(n_nodes, NOT_A_SID, dtype=np.int64)
        if sids is None:
            sids = found
            leaf_sid[leaves] = np.arange(len(leaves))
        else:
            row = {sid: i for i, sid in enumerate(sids)}
            missing = [sid for sid in found if sid not in row]
            if missing:
                raise ValueError(f"{len(missing)} S-IDs of the trie are not in `sids`, e.g. {missing[0]!r}")
            leaf_sid[leaves] = [row[sid] for sid in found]

        inner = arrays.depth < arrays.sid_length
        max_fanout = np.zeros(arrays.sid_length, dtype=np.int64)
        np.maximum.at(max_fanout, arrays.depth[inner], counts[inner])
        leaf_count = (arrays.depth == arrays.sid_length).astype(np.int64)
        for depth in reversed(range(1, arrays.sid_length + 1)):
            at = np.flatnonzero(arrays.depth == depth)
            np.add.at(leaf_count, parent[at], leaf_count[at])
        sid_leaf = np.full(len(sids), -1, dtype=np.int64)
        sid_leaf[leaf_sid[leaves]] = leaves
        return cls(offsets=torch.from_numpy(arrays.offsets.astype(np.int64)),
                   child_token_ids=torch.from_numpy(ids[edge_vocab]),
                   child_nodes=torch.from_numpy(arrays.child_nodes.astype(np.int64)),
                   leaf_sid=torch.from_numpy(leaf_sid), max_fanout=tuple(max_fanout.tolist()),
                   max_token_id=int(ids.max()), sids=sids, sid_length=arrays.sid_length,
                   parent=parent, leaf_count=leaf_count, sid_leaf=sid_leaf)

    def blocked(self, excluded: Sequence[np.ndarray]) -> torch.Tensor:
        """Sorted keys `row · n_nodes + node` of the nodes whose every S-ID is excluded for prompt `row`.

        `excluded[row]` holds S-ID indices (into `sids`). A blocked node is never expanded, so no beam is spent on a
        prefix that can only end in an excluded ad: the search returns the best not-yet-engaged ads, as many as it
        has beams, rather than filtering afterwards and returning a shorter list.
        """
        n_nodes = len(self.parent)
        if not sum(len(e) for e in excluded):
            return torch.empty(0, dtype=torch.long)
        rows = np.repeat(np.arange(len(excluded), dtype=np.int64), [len(e) for e in excluded])
        leaves = self.sid_leaf[np.concatenate([np.asarray(e, dtype=np.int64) for e in excluded])]
        pairs = np.unique(rows[leaves >= 0] * n_nodes + leaves[leaves >= 0])  # an S-ID excluded twice counts once
        rows, node = pairs // n_nodes, pairs % n_nodes
        keys = []
        for _ in range(self.sid_length + 1):  # the leaf, then each ancestor up to the root
            keys.append(rows * n_nodes + node)
            node = self.parent[node]
        # a node is blocked when the excluded S-IDs below it are all the S-IDs below it
        key, excluded_below = np.unique(np.concatenate(keys), return_counts=True)
        full = excluded_below == self.leaf_count[key % n_nodes]
        return torch.from_numpy(key[full])

    def to(self, device: torch.device | str) -> TokenTrie:
        if self.offsets.device == torch.device(device):
            return self
        return dataclasses.replace(self, offsets=self.offsets.to(device),
                                   child_token_ids=self.child_token_ids.to(device),
                                   child_nodes=self.child_nodes.to(device), leaf_sid=self.leaf_sid.to(device))

    def children(self, nodes: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, child nodes and validity of the child slots of `nodes` (all at `depth`): (n, fanout) each."""
        start = self.offsets[nodes]
        slot = torch.arange(self.max_fanout[depth], device=nodes.device)
        valid = slot < (self.offsets[nodes + 1] - start)[:, None]
        # Invalid slots read some other node's edge; they are masked, the clamp only keeps the gather in bounds.
        edge = (start[:, None] + slot).clamp_(max=self.child_nodes.numel() - 1)
        return self.child_token_ids[edge], self.child_nodes[edge], valid

    def sid_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """S-ID index of each token sequence (n, sid_length); NOT_A_SID where a sequence leaves the trie."""
        node = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        alive = torch.ones_like(node, dtype=torch.bool)
        for depth in range(self.sid_length):
            ids, kids, valid = self.children(node, depth)
            hit = valid & (ids == tokens[:, depth, None])  # a node's tokens are distinct: at most one hit
            alive &= hit.any(dim=1)
            node = torch.where(alive, (kids * hit).sum(dim=1), 0)
        return torch.where(alive, self.leaf_sid[node], NOT_A_SID)


def _lookup(tokens: list[str], token_ids: TokenIds) -> np.ndarray:
    ids = token_ids(tokens) if callable(token_ids) else [token_ids.get(t) for t in tokens]
    unknown = [t for t, i in zip(tokens, ids) if i is None or i < 0]
    if unknown:
        raise ValueError(f"{len(unknown)} S-ID tokens have no tokenizer id, e.g. {unknown[0]!r}: add the S-ID "
                         f"vocabulary to the tokenizer as special tokens")
    ids = np.asarray(ids, dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        # Typically the tokenizer's unknown-token id: two S-ID tokens on one id would make decoding ambiguous.
        raise ValueError("distinct S-ID tokens share a tokenizer id: add the S-ID vocabulary as special tokens")
    return ids


@dataclass(frozen=True)
class Beams:
    """The final beams of one batch of prompts, best first per prompt."""

    tokens: torch.Tensor  # int64 (prompts, beam_width, sid_length)
    scores: torch.Tensor  # float32 (prompts, beam_width): sequence log-probs; DEAD marks a slot holding no path
    sid_index: torch.Tensor  # int64 (prompts, beam_width): index into trie.sids, NOT_A_SID if none


def _model_kwargs(model: torch.nn.Module) -> dict:
    # Logits of the prompt's last position only: the full (batch × prompt length × vocab) logits would dwarf the
    # rest of the prompt pass.
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def select_rows(cache: Cache, rows: torch.Tensor) -> None:
    """Keep the cache's batch rows `rows`, in that order, repeats allowed (beam search's reorder).

    Plain key/value layers go through `batch_select_indices` (advanced indexing) instead of `reorder_cache`
    (index_select): same result, but torch's CPU index_select on 4-D key/value tensors is pathologically slow (~400 ms
    against ~2 ms for 80 × 2 × 330 × 64 floats, torch 2.13). Only layers that keep the generic reorder qualify:
    quantized layers inherit `batch_select_indices` yet keep most states elsewhere, so they, and every other layer
    with its own reorder (static, indexed, linear-attention), use `reorder_cache`.
    """
    for layer in cache.layers:
        plain = (type(layer).reorder_cache is CacheLayerMixin.reorder_cache
                 and getattr(type(layer), "batch_select_indices", None) is DynamicLayer.batch_select_indices)
        if plain:
            layer.batch_select_indices(rows)
        else:
            layer.reorder_cache(rows)


class _CacheDecoder:
    """One-token steps through the model's own KV cache: every beam holds a full copy of its prompt's keys and values,
    reordered after each selection. Works for any model; `_PromptPrefixDecoder` is the fast path for most."""

    def __init__(self, model: torch.nn.Module, cache: Cache, attention_mask: torch.Tensor, beam_width: int) -> None:
        self.model, self.cache, self.mask, self.beam_width = model, cache, attention_mask, beam_width

    def step(self, rows: torch.Tensor, new_tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        select_rows(self.cache, rows)  # the first selection also grows the cache from one row per prompt to one per beam
        if self.mask.shape[0] != rows.numel():
            self.mask = self.mask.repeat_interleave(self.beam_width, dim=0)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        out = self.model(input_ids=new_tokens[:, None], attention_mask=self.mask, position_ids=positions,
                         cache=self.cache, use_cache=True)
        self.cache = out.cache
        return out.logits[:, -1]


class _PromptPrefixDecoder:
    """One-token steps that keep each prompt's keys and values once, shared by all of its beams.

    Every beam of a prompt has the same prompt prefix; only its own S-ID tokens (at most sid_length - 1) differ. The
    generic cache copies the prefix to every beam and copies it again at every reorder: at 20 beams that was most of
    a search's time and 20× the memory. Here the prefix stays (prompts, heads, length, dim); the beams' own keys and
    values sit in preallocated (prompts · beams, heads, steps, dim) buffers, and a reorder moves only those. Attention
    is `_prompt_prefix_attention`, plugged into the model as an attention implementation for the decode steps only.
    """

    def __init__(self, model: torch.nn.Module, cache: Cache, attention_mask: torch.Tensor, beam_width: int,
                 steps: int) -> None:
        self.model, self.beams = model, beam_width
        self.keys = [layer.keys for layer in cache.layers]
        self.values = [layer.values for layer in cache.layers]
        dtype = self.keys[0].dtype
        self.bias = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device)
        self.bias.masked_fill_(attention_mask == 0, float("-inf"))  # every prompt has a token: no row is all -inf
        self.bias = self.bias[:, None, None, :]
        prompts, heads, _, dim = self.keys[0].shape
        self.new_keys = [k.new_empty(prompts * beam_width, heads, steps, dim) for k in self.keys]
        self.new_values = [v.new_empty(prompts * beam_width, heads, steps, dim) for v in self.values]
        self.filled = 0

    @staticmethod
    def fits(model: torch.nn.Module, cache: Cache) -> bool:
        """Plain decoder-only models on the attention interface, full attention, plain cache layers."""
        config = model.config
        return (getattr(model, "_supports_attention_backend", False) and not getattr(config, "sub_configs", None)
                and all(t == "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"])
                and all(type(layer) is DynamicLayer and layer.keys.dim() == 4 for layer in cache.layers))

    def step(self, rows: torch.Tensor, new_tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.filled:  # rows stay within their prompt: the shared prefix needs no reorder
            for buffer in (*self.new_keys, *self.new_values):
                buffer[:, :, :self.filled] = buffer[rows, :, :self.filled]
        with _attention_implementation(self.model, PROMPT_PREFIX_ATTENTION):
            out = self.model(input_ids=new_tokens[:, None], position_ids=positions, use_cache=False,
                             prompt_prefix=self)
        self.filled += 1
        return out.logits[:, -1]

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float) -> torch.Tensor:
        """Attention of each beam's new token over its prompt (shared) and its own tokens so far: (B, 1, Hq, D)."""
        self.new_keys[layer][:, :, self.filled] = key[:, :, -1]
        self.new_values[layer][:, :, self.filled] = value[:, :, -1]
        own_keys = self.new_keys[layer][:, :, :self.filled + 1]
        own_values = self.new_values[layer][:, :, :self.filled + 1]
        prefix_keys, prefix_values = self.keys[layer], self.values[layer]
        prompts, kv_heads, length, dim = prefix_keys.shape
        rows, heads = query.shape[0], query.shape[1]
        group, per_prompt = heads // kv_heads, self.beams * heads // kv_heads

        def by_prompt(x: torch.Tensor) -> torch.Tensor:  # (rows, kv_heads, group, n) → (prompts, kv_heads, W·G, n)
            x = x.reshape(prompts, self.beams, kv_heads, group, x.shape[-1]).transpose(1, 2)
            return x.reshape(prompts, kv_heads, per_prompt, x.shape[-1])

        def by_row(x: torch.Tensor) -> torch.Tensor:  # the inverse
            x = x.reshape(prompts, kv_heads, self.beams, group, x.shape[-1]).transpose(1, 2)
            return x.reshape(rows, kv_heads, group, x.shape[-1])

        query = query.view(rows, kv_heads, group, dim) * scaling
        # A prompt's beams and the query heads of one KV head are the rows of one product with the shared prefix;
        # the softmax runs in that layout, in two parts (prefix, own tokens), so the large scores are never copied.
        prefix_scores = (by_prompt(query) @ prefix_keys.transpose(-1, -2)).float().add_(self.bias)
        own_scores = by_prompt(query @ own_keys.transpose(-1, -2)).float()
        top = torch.maximum(prefix_scores.amax(dim=-1, keepdim=True), own_scores.amax(dim=-1, keepdim=True))
        prefix_weights, own_weights = prefix_scores.sub_(top).exp_(), own_scores.sub_(top).exp_()
        total = prefix_weights.sum(dim=-1, keepdim=True) + own_weights.sum(dim=-1, keepdim=True)
        out = prefix_weights.to(value.dtype) @ prefix_values
        out += by_prompt(by_row(own_weights.to(value.dtype)) @ own_values)
        out = out.div_(total.to(out.dtype))
        return by_row(out).reshape(rows, 1, heads, dim)


PROMPT_PREFIX_ATTENTION = "leadre_prompt_prefix"
_SWITCH = threading.Lock()


def _prompt_prefix_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             prompt_prefix: _PromptPrefixDecoder | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    if prompt_prefix is None or query.shape[2] != 1:
        raise RuntimeError(f"{PROMPT_PREFIX_ATTENTION} attention only runs the beam search's one-token steps")
    if kwargs.get("sliding_window") is not None or kwargs.get("softcap") is not None or "s_aux" in kwargs:
        raise NotImplementedError("prompt-prefix attention covers plain full attention only")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    return prompt_prefix.attend(module.layer_idx, query, key, value, scaling), None


@contextmanager
def _attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """The model's attention implementation switched for one call and put back; one switch at a time, process-wide."""
    from transformers import AttentionInterface

    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _prompt_prefix_attention)
    with _SWITCH:
        before = model.config._attn_implementation
        model.config._attn_implementation = name
        try:
            yield
        finally:
            model.config._attn_implementation = before


def _logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise logsumexp (beams, 1) that overwrites `logits`: no (beams × vocab) temporaries, which on CPU cost
    more than the arithmetic (fresh pages for every step's large buffer)."""
    top = logits.amax(dim=-1, keepdim=True)
    return logits.sub_(top).exp_().sum(dim=-1, keepdim=True).log_().add_(top)


@torch.inference_mode()
def search_batch(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: TokenTrie,
                 beam_width: int, constrained: bool = True, blocked: torch.Tensor | None = None,
                 share_prompt_prefix: bool = True) -> Beams:
    """Beam search for one left-padded batch: (prompts, length) ids and mask, on the model's device.

    Unconstrained, each beam's candidates are its `beam_width` most likely tokens (no more of them can survive),
    and the trie only labels the final sequences. `blocked` (from `TokenTrie.blocked`, rows of this batch) are trie
    nodes a prompt may not enter: its excluded ads. `share_prompt_prefix=False` forces the generic KV-cache path.
    """
    prompts, device = input_ids.shape[0], input_ids.device
    trie = trie.to(device)
    # Left padding: a prompt's first real token is position 0 (pads get 0 too; they are masked anyway).
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                **_model_kwargs(model))
    logits = out.logits[:, -1]
    if trie.max_token_id >= logits.shape[-1]:
        raise ValueError(f"S-ID token id {trie.max_token_id} is outside the model's vocabulary "
                         f"({logits.shape[-1]}): resize its embeddings after adding the S-ID tokens")
    if share_prompt_prefix and _PromptPrefixDecoder.fits(model, out.cache):
        decoder = _PromptPrefixDecoder(model, out.cache, attention_mask, beam_width, trie.sid_length - 1)
    else:
        decoder = _CacheDecoder(model, out.cache, attention_mask, beam_width)
    del out
    next_position = (positions[:, -1:] + 1).repeat_interleave(beam_width, dim=0)
    scores = torch.zeros(prompts, 1, device=device)
    nodes = torch.zeros(prompts, 1, dtype=torch.long, device=device)
    tokens = torch.zeros(prompts, 1, 0, dtype=torch.long, device=device)
    prompt_rows = torch.arange(prompts, device=device)[:, None]
    check_blocked = constrained and blocked is not None and blocked.numel() > 0
    if check_blocked:
        owner_key = prompt_rows * len(trie.parent)  # a (prompt, node) pair's key is owner_key + node

    for depth in range(trie.sid_length):
        beams = scores.shape[1]
        logits = logits.float()
        if constrained:
            cand_tokens, cand_nodes, valid = trie.children(nodes.flatten(), depth)
            cand_scores = logits.gather(1, cand_tokens).masked_fill_(~valid, DEAD)
            if check_blocked:
                keys = owner_key[:, :, None] + cand_nodes.view(prompts, beams, -1)
                cand_scores.masked_fill_(torch.isin(keys, blocked).view_as(cand_scores), DEAD)
        else:
            top = logits.topk(min(beam_width, logits.shape[-1]), dim=-1)
            cand_tokens, cand_scores = top.indices, top.values
        cand_scores -= _logsumexp_(logits)  # log-softmax over the whole vocabulary: true log-probs
        width = cand_tokens.shape[1]
        total = (scores[..., None] + cand_scores.view(prompts, beams, width)).view(prompts, beams * width)
        if total.shape[1] < beam_width:  # early levels can have fewer paths than beams: pad with dead slots
            total = torch.cat([total, total.new_full((prompts, beam_width - total.shape[1]), DEAD)], dim=1)
        scores, flat = total.topk(beam_width, dim=1)
        flat = flat.clamp_(max=beams * width - 1)  # dead padding slots point at some real candidate, harmlessly
        rows = (prompt_rows * beams + flat // width).flatten()
        picked = rows * width + (flat % width).flatten()
        new_tokens = cand_tokens.flatten()[picked]
        tokens = torch.cat([tokens.view(prompts * beams, -1)[rows], new_tokens[:, None]], dim=1)
        tokens = tokens.view(prompts, beam_width, -1)
        if constrained:
            nodes = cand_nodes.flatten()[picked].view(prompts, beam_width)
        if depth == trie.sid_length - 1:
            break
        logits = decoder.step(rows, new_tokens, next_position + depth)

    if constrained:
        sid_index = trie.leaf_sid[nodes]
    else:
        sid_index = trie.sid_index(tokens.view(-1, trie.sid_length)).view(prompts, beam_width)
    return Beams(tokens=tokens, scores=scores, sid_index=sid_index.masked_fill(scores == DEAD, NOT_A_SID))


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int,
             device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, pads on the left so every prompt's next token is the last column's successor."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt):] = torch.as_tensor(prompt, dtype=torch.long)
        mask[row, length - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def constrained_beam_search(model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], trie: TokenTrie,
                            beam_width: int, num_return: int, batch_size: int, pad_token_id: int,
                            constrained: bool = True,
                            exclude: Sequence[np.ndarray] | None = None) -> list[list[tuple[int, float]]]:
    """For each prompt, its best `num_return` (S-ID index into `trie.sids`, sequence log-prob), best first.

    Constrained, these are distinct live S-IDs, none of them in the prompt's `exclude` (S-ID indices), and fewer only
    when the trie has fewer such S-IDs. Unconstrained (the baseline), a
    sequence that is not a live S-ID comes back as NOT_A_SID and may repeat. Prompts are batched by length so
    little of a batch is padding. The model runs as it is: put it in eval mode first.
    """
    if not 0 < num_return <= beam_width:
        raise ValueError(f"num_return must be in 1 … beam_width ({beam_width}), got {num_return}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    if exclude is not None and (not constrained or len(exclude) != len(prompt_ids)):
        raise ValueError("exclude needs constrained search and one array of S-ID indices per prompt")
    device = next(model.parameters()).device
    trie = trie.to(device)

    by_length = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list[list[tuple[int, float]]] = [[] for _ in prompt_ids]
    with torch.inference_mode():
        for start in range(0, len(by_length), batch_size):
            chunk = by_length[start:start + batch_size]
            ids, mask = left_pad([prompt_ids[i] for i in chunk], pad_token_id, device)
            blocked = trie.blocked([exclude[i] for i in chunk]).to(device) if exclude is not None else None
            beams = search_batch(model, ids, mask, trie, beam_width, constrained, blocked)
            scores = beams.scores[:, :num_return].cpu().tolist()
            index = beams.sid_index[:, :num_return].cpu().tolist()
            for i, row_scores, row_index in zip(chunk, scores, index):
                results[i] = [(sid, score) for sid, score in zip(row_index, row_scores) if score != DEAD]
    return results


@dataclass(frozen=True)
class Reranked:
    order: np.ndarray  # indices into the inputs, best first
    scores: np.ndarray  # each picked ad's final score (after its diversity penalty), in `order`'s order


def value_scores(logprob: np.ndarray, ecpm: np.ndarray, value_weight: float) -> np.ndarray:
    """logprob + λ·log(eCPM): relevance traded against expected revenue. eCPM 0 scores -inf when λ > 0."""
    logprob, ecpm = np.asarray(logprob, dtype=np.float64), np.asarray(ecpm, dtype=np.float64)
    if np.isnan(ecpm).any() or (ecpm < 0).any():
        raise ValueError("eCPM must be non-negative numbers")
    if value_weight == 0:
        return logprob.copy()  # and not 0 · log(0) = nan for unpriced ads
    with np.errstate(divide="ignore"):
        return logprob + value_weight * np.log(ecpm)


def diversify(scores: np.ndarray, industry: np.ndarray, diversity_penalty: float) -> Reranked:
    """Greedy pick of the best score, each ad penalised by `diversity_penalty` per already-picked ad of its industry.

    Computed without the greedy loop: an industry's ads are picked in score order, so its k-th ad (from 0) always
    pays k penalties, and the greedy order is the order of those penalised scores (ties: higher score, then earlier
    input). Needs a non-negative penalty, which keeps each industry's penalised scores decreasing.
    """
    scores, industry = np.asarray(scores, dtype=np.float64), np.asarray(industry)
    if diversity_penalty < 0:
        raise ValueError(f"diversity_penalty must be non-negative, got {diversity_penalty}")
    if np.isnan(scores).any():
        raise ValueError("scores must not be NaN")
    by_score = np.argsort(-scores, kind="stable")
    _, group = np.unique(industry[by_score], return_inverse=True)
    grouped = np.argsort(group, kind="stable")  # industry by industry, score order within each
    first = np.searchsorted(group[grouped], group[grouped], side="left")
    rank = np.empty(len(scores), dtype=np.int64)
    rank[grouped] = np.arange(len(scores)) - first
    penalised = scores[by_score] - diversity_penalty * rank
    final = np.argsort(-penalised, kind="stable")
    return Reranked(order=by_score[final], scores=penalised[final])


def rerank(logprob: np.ndarray, ecpm: np.ndarray, industry: np.ndarray, value_weight: float,
           diversity_penalty: float) -> Reranked:
    """An ad list's final order: value_scores, then diversify."""
    return diversify(value_scores(logprob, ecpm, value_weight), industry, diversity_penalty)
