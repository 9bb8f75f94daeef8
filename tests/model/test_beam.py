"""Trie-constrained beam search on a tiny random-init Qwen2: results are live, distinct S-IDs, sorted; the search is
exact when the beams cover the trie (padding included); batching changes nothing; unconstrained it is transformers'
own beam search. Re-ranking matches the greedy loop it replaces.

No tokenizer: S-ID tokens get ids at the top of the model's vocabulary directly, prompts use the ids below them.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from leadre.decode.beam import (
    NOT_A_SID,
    TokenTrie,
    constrained_beam_search,
    diversify,
    left_pad,
    rerank,
    search_batch,
    select_rows,
    value_scores,
)
from leadre.sids.trie import SidTrie, format_sid, sid_tokens

VOCAB = 256
SID_TOKEN_BASE = 200  # S-ID tokens take ids from here up; prompts use 1 … SID_TOKEN_BASE - 1
PAD = 0
MAX_LEVELS, MAX_CODEBOOK = 4, 5  # at most 20 S-ID tokens: they fit above SID_TOKEN_BASE
SCORE_TOLERANCE = 1e-4
FAST = settings(max_examples=25, deadline=None)


@functools.cache
def tiny_model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    # A wide initialiser so next-token distributions are far from uniform: near-ties would make orders fragile.
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    return Qwen2ForCausalLM(config).eval()


def token_ids(sids: list[str]) -> dict[str, int]:
    tokens = sorted({t for sid in sids for t in sid_tokens(sid)})
    return {token: SID_TOKEN_BASE + i for i, token in enumerate(tokens)}


def token_trie(sids: list[str]) -> TokenTrie:
    return TokenTrie.build(SidTrie.from_sids(sids).to_arrays(), token_ids(sids))


def brute_force(prompt: list[int], sids: list[str]) -> dict[str, float]:
    """Each S-ID's log-prob after `prompt`, from one plain forward pass over prompt + S-ID (no padding, no cache)."""
    ids = token_ids(sids)
    sequences = torch.tensor([prompt + [ids[t] for t in sid_tokens(sid)] for sid in sids])
    with torch.inference_mode():
        logprobs = tiny_model()(input_ids=sequences).logits.float().log_softmax(-1)
    targets = sequences[:, len(prompt):]
    picked = logprobs[:, len(prompt) - 1:-1].gather(2, targets[..., None])
    return dict(zip(sids, picked.sum(dim=(1, 2)).tolist()))


@st.composite
def sid_sets(draw) -> list[str]:
    levels = draw(st.integers(2, MAX_LEVELS))
    sizes = draw(st.lists(st.integers(1, MAX_CODEBOOK), min_size=levels, max_size=levels))
    codes = draw(st.lists(st.tuples(*(st.integers(0, size - 1) for size in sizes)), min_size=1, max_size=12,
                          unique=True))
    return [format_sid(c) for c in codes]


prompt_lists = st.lists(st.lists(st.integers(1, SID_TOKEN_BASE - 1), min_size=1, max_size=8), min_size=1,
                        max_size=4)


@FAST
@given(sids=sid_sets(), prompts=prompt_lists, beam_width=st.integers(1, 6), data=st.data())
def test_results_are_live_distinct_sorted(sids, prompts, beam_width, data):
    num_return = data.draw(st.integers(1, beam_width))
    batch_size = data.draw(st.integers(1, len(prompts)))
    trie = token_trie(sids)
    results = constrained_beam_search(tiny_model(), prompts, trie, beam_width, num_return, batch_size, PAD)
    assert len(results) == len(prompts)
    for hits in results:
        # Every inner node has a child, so beams only go unfilled when the trie has fewer paths than beams.
        assert len(hits) == min(num_return, len(sids))
        found = [trie.sids[index] for index, _ in hits]
        assert set(found) <= set(sids)
        assert len(set(found)) == len(found)
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True)
        assert all(math.isfinite(s) and s <= 0 for s in scores)


@FAST
@given(sids=sid_sets(), prompts=prompt_lists, beam_width=st.integers(1, 6), data=st.data())
def test_excluded_ads_never_come_back_and_lists_stay_full(sids, prompts, beam_width, data):
    """Exclusion inside the search: a list holds min(beams, S-IDs not excluded) fresh S-IDs, never an excluded one."""
    trie = token_trie(sids)
    exclude = [np.array(data.draw(st.lists(st.integers(0, len(sids) - 1), max_size=len(sids))), dtype=np.int64)
               for _ in prompts]
    results = constrained_beam_search(tiny_model(), prompts, trie, beam_width, beam_width, len(prompts), PAD,
                                      exclude=exclude)
    for hits, excluded in zip(results, exclude):
        found = [index for index, _ in hits]
        assert not set(found) & set(excluded.tolist())
        assert len(found) == len(set(found)) == min(beam_width, len(sids) - len(set(excluded.tolist())))


def test_exclusion_keeps_the_scores_of_the_ads_left():
    """With a beam per leaf, excluding ads changes nothing about the others: same S-IDs, same log-probs."""
    sids = [format_sid(c) for c in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 1), (2, 0, 0)]]
    trie = token_trie(sids)
    prompt = [[5, 17, 33]]
    full = dict(constrained_beam_search(tiny_model(), prompt, trie, len(sids), len(sids), 1, PAD)[0])
    excluded = np.array([0, 1, 5])  # all of the (0, 0) branch, and a whole first-level branch
    kept = dict(constrained_beam_search(tiny_model(), prompt, trie, len(sids), len(sids), 1, PAD,
                                        exclude=[excluded])[0])
    assert kept.keys() == full.keys() - set(excluded.tolist())
    for index, score in kept.items():
        assert score == pytest.approx(full[index], abs=SCORE_TOLERANCE)


def test_blocked_nodes_are_prefixes_with_nothing_left():
    sids = [format_sid(c) for c in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]]
    trie = token_trie(sids)
    n_nodes = len(trie.parent)
    blocked = set(trie.blocked([np.array([0, 1]), np.array([3]), np.array([], dtype=np.int64)]).tolist())
    rows = {}
    for key in blocked:
        rows.setdefault(key // n_nodes, set()).add(key % n_nodes)
    # prompt 0: two leaves and their shared (0, 0) prefix; prompt 1: the leaf and both its inner ancestors
    assert len(rows[0]) == 3 and len(rows[1]) == 3 and 2 not in rows
    assert 0 not in rows[0] and 0 not in rows[1]  # the root still leads somewhere


@FAST
@given(sids=sid_sets(), prompts=prompt_lists)
def test_exact_when_beams_cover_the_trie(sids, prompts):
    """With a beam per leaf nothing is pruned: every S-ID comes back with its brute-force log-prob."""
    trie = token_trie(sids)
    results = constrained_beam_search(tiny_model(), prompts, trie, len(sids), len(sids), len(prompts), PAD)
    for prompt, hits in zip(prompts, results):
        expected = brute_force(prompt, sids)
        got = {trie.sids[index]: score for index, score in hits}
        assert got.keys() == expected.keys()
        for sid, score in got.items():
            assert score == pytest.approx(expected[sid], abs=SCORE_TOLERANCE)


def test_exact_with_heavy_left_padding():
    sids = [format_sid(c) for c in [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 0, 1), (2, 3, 0), (3, 3, 3)]]
    rng = random.Random(1)
    prompts = [[rng.randrange(1, SID_TOKEN_BASE) for _ in range(n)] for n in (1, 9, 30, 4)]
    trie = token_trie(sids)
    results = constrained_beam_search(tiny_model(), prompts, trie, len(sids), len(sids), len(prompts), PAD)
    for prompt, hits in zip(prompts, results):
        expected = brute_force(prompt, sids)
        for index, score in hits:
            assert score == pytest.approx(expected[trie.sids[index]], abs=SCORE_TOLERANCE)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_equals_one_at_a_time(seed):
    rng = random.Random(seed)
    codes = {tuple(rng.randrange(4) for _ in range(3)) for _ in range(40)}
    sids = [format_sid(c) for c in sorted(codes)]
    prompts = [[rng.randrange(1, SID_TOKEN_BASE) for _ in range(rng.randint(1, 12))] for _ in range(6)]
    trie = token_trie(sids)
    beam_width, num_return = 4, 3  # fewer beams than leaves: pruning happens, and must not depend on the batch
    batched = constrained_beam_search(tiny_model(), prompts, trie, beam_width, num_return, len(prompts), PAD)
    single = [constrained_beam_search(tiny_model(), [p], trie, beam_width, num_return, 1, PAD)[0] for p in prompts]
    for got, expected in zip(batched, single):
        assert [index for index, _ in got] == [index for index, _ in expected]
        assert [s for _, s in got] == pytest.approx([s for _, s in expected], abs=SCORE_TOLERANCE)


def test_single_leaf_comes_back():
    sid = format_sid((3, 1, 4, 1))
    trie = token_trie([sid])
    results = constrained_beam_search(tiny_model(), [[5, 6], [7]], trie, 3, 3, 2, PAD)
    for prompt, hits in zip([[5, 6], [7]], results):
        assert [trie.sids[index] for index, _ in hits] == [sid]
        assert hits[0][1] == pytest.approx(brute_force(prompt, [sid])[sid], abs=SCORE_TOLERANCE)


def test_unconstrained_is_transformers_beam_search():
    """The baseline the benchmark compares against: same beams and scores as `generate(num_beams=…)`."""
    trie = token_trie([format_sid((0, 0, 0))])
    beam_width = 4
    ids, mask = left_pad([[1, 2, 3], [5, 6, 7, 8, 9, 10, 11]], PAD, "cpu")
    with torch.inference_mode():
        ours = search_batch(tiny_model(), ids, mask, trie, beam_width, constrained=False)
        # No EOS and length_penalty 0: transformers then ranks by the plain sum of log-probs, as we do.
        config = GenerationConfig(num_beams=beam_width, num_return_sequences=beam_width, do_sample=False,
                                  max_new_tokens=trie.sid_length, min_new_tokens=trie.sid_length,
                                  length_penalty=0.0, eos_token_id=None, pad_token_id=PAD,
                                  return_dict_in_generate=True, output_scores=True)
        theirs = tiny_model().generate(input_ids=ids, attention_mask=mask, generation_config=config)
    prompts = ids.shape[0]
    assert torch.equal(ours.tokens, theirs.sequences[:, ids.shape[1]:].view(prompts, beam_width, -1))
    assert torch.allclose(ours.scores, theirs.sequences_scores.view(prompts, beam_width), atol=SCORE_TOLERANCE)


def test_select_rows_is_reorder_cache():
    """The fast path for plain layers keeps exactly the rows transformers' own reorder keeps."""
    rows = torch.tensor([2, 2, 0, 1, 0])
    with torch.inference_mode():
        ours, theirs = (tiny_model()(input_ids=torch.arange(1, 16).view(3, 5), use_cache=True).cache
                        for _ in range(2))
        select_rows(ours, rows)
        theirs.reorder_cache(rows)
    for mine, reference in zip(ours.layers, theirs.layers):
        assert torch.equal(mine.keys, reference.keys) and torch.equal(mine.values, reference.values)


def test_unconstrained_labels_sequences_by_trie():
    sids = [format_sid(c) for c in [(0, 0), (0, 1), (2, 1)]]
    trie = token_trie(sids)
    ids = token_ids(sids)
    sequences = torch.tensor([[ids[t] for t in sid_tokens(sid)] for sid in trie.sids]
                             + [[ids["<a_2>"], ids["<b_0>"]], [1, 2]])
    assert trie.sid_index(sequences).tolist() == [0, 1, 2, NOT_A_SID, NOT_A_SID]


def test_indices_follow_given_sid_rows():
    table = ["<a_9><b_9>", "<a_1><b_0>", "<a_0><b_2>"]  # a row that is not in the trie, then two that are
    live = table[1:]
    trie = TokenTrie.build(SidTrie.from_sids(live).to_arrays(), token_ids(live), sids=table)
    hits = constrained_beam_search(tiny_model(), [[3]], trie, 2, 2, 1, PAD)[0]
    assert sorted(index for index, _ in hits) == [1, 2]
    with pytest.raises(ValueError, match="not in `sids`"):
        TokenTrie.build(SidTrie.from_sids(live).to_arrays(), token_ids(live), sids=table[:2])


def test_tokens_need_distinct_ids():
    arrays = SidTrie.from_sids(["<a_0><b_0>", "<a_1><b_0>"]).to_arrays()
    with pytest.raises(ValueError, match="share a tokenizer id"):
        TokenTrie.build(arrays, lambda tokens: [7] * len(tokens))
    with pytest.raises(ValueError, match="no tokenizer id"):
        TokenTrie.build(arrays, {"<a_0>": 1})


def greedy_diversify(scores: np.ndarray, industry: np.ndarray, penalty: float) -> list[int]:
    """The loop `diversify` replaces: pick the best penalised ad, charge its industry, repeat."""
    ranked = list(np.argsort(-scores, kind="stable"))  # tie-break: higher score, then earlier input
    picked, count = [], {}
    while ranked:
        best = max(ranked, key=lambda i: (scores[i] - penalty * count.get(industry[i], 0), -ranked.index(i)))
        picked.append(best)
        ranked.remove(best)
        count[industry[best]] = count.get(industry[best], 0) + 1
    return picked


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(-6, 0), st.integers(0, 3)), min_size=1, max_size=12),
       penalty=st.sampled_from([0.0, 0.5, 1.0, 2.5]))
def test_diversify_is_the_greedy_pick(rows, penalty):
    scores = np.array([s for s, _ in rows], dtype=float)  # integer scores: plenty of ties
    industry = np.array([f"i{g}" for _, g in rows])
    result = diversify(scores, industry, penalty)
    assert result.order.tolist() == greedy_diversify(scores, industry, penalty)
    assert np.all(np.diff(result.scores) <= 0)


def test_rerank_trades_relevance_for_value_and_spreads_industries():
    logprob = np.array([-1.0, -1.1, -1.2, -3.0])
    ecpm = np.array([1.0, 1.0, 1.0, 100.0])
    industry = np.array(["travel", "travel", "travel", "games"])
    assert rerank(logprob, ecpm, industry, 0.0, 0.0).order.tolist() == [0, 1, 2, 3]
    assert rerank(logprob, ecpm, industry, 1.0, 0.0).order[0] == 3  # log(100) ≈ 4.6 outweighs 2 nats
    assert rerank(logprob, ecpm, industry, 0.0, 1.0).order.tolist() == [0, 1, 3, 2]
    assert value_scores(np.array([-1.0]), np.array([0.0]), 0.0).tolist() == [-1.0]  # not 0 · log 0
    assert value_scores(np.array([-1.0]), np.array([0.0]), 1.0).tolist() == [-np.inf]
    with pytest.raises(ValueError):
        diversify(logprob, industry, -1.0)


@pytest.mark.parametrize("constrained", [True, False])
def test_shared_prompt_prefix_equals_a_kv_cache_per_beam(constrained):
    """The fast path (each prompt's keys and values kept once for all its beams) finds what the generic path finds,
    a full KV cache per beam, and leaves the model's attention implementation as it found it."""
    rng = random.Random(3)
    sids = [format_sid(c) for c in sorted({tuple(rng.randrange(4) for _ in range(3)) for _ in range(30)})]
    prompts = [[rng.randrange(1, SID_TOKEN_BASE) for _ in range(n)] for n in (2, 11, 7)]
    trie = token_trie(sids)
    ids, mask = left_pad(prompts, PAD, "cpu")
    before = tiny_model().config._attn_implementation
    blocked = trie.blocked([np.array([0, 3]), np.array([], dtype=np.int64), np.array([5])]) if constrained else None
    shared, per_beam = (search_batch(tiny_model(), ids, mask, trie, 5, constrained, blocked, share_prompt_prefix=share)
                        for share in (True, False))
    assert tiny_model().config._attn_implementation == before
    assert torch.equal(shared.tokens, per_beam.tokens)
    assert torch.equal(shared.sid_index, per_beam.sid_index)
    assert torch.allclose(shared.scores, per_beam.scores, atol=SCORE_TOLERANCE)
