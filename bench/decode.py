"""`python -m bench.decode [--shape default|large] [--users 64] [--beams 10,20] [--threads 1]`: users/s of the
trie-constrained S-ID beam search, today's implementation against the one before it and against unconstrained beam
search of the same width: same model, same prompts, same process.

Shapes (random-init Qwen2: weights do not change how long a forward pass takes; S-ID tokens sit after the text
vocabulary, as when they are added to a tokenizer as special tokens):
- `default`: what `leadre evaluate` and the near-line job run on the default world: the builtin tiny model (hidden
  128, 3 layers, 4 heads / 2 KV heads, 2k text tokens + 320 S-ID tokens: 2,368 in all), prompts of 90–100 tokens,
  ~1.5k live ads with 5-token S-IDs (4 levels × 64 codes + a collision index), each user excluding a few engaged ads.
- `large`: hidden 256, 4 layers, an 8k text vocabulary, ~300-token prompts, 2000 S-IDs (4 × 32 + collision index).
The model's vocabulary holds every S-ID token as `leadre sft` adds them (`leadre.sids.build.sid_vocabulary`: each
level's codebook, then `collisions` indexes), not only those the live ads use: the LM head's width is the real one.

Methods, taking turns (ABBA… so a busy spell on a shared machine lands on all alike):
- `before`: the search as it was before prompt-prefix sharing (`_reference_search_batch` below, kept verbatim for
  this comparison): every beam carries a full copy of its prompt's KV cache, reordered after each selection.
- `constrained`: `leadre.decode.beam.constrained_beam_search`, as evaluation calls it.
- `unconstrained`: the same search without the trie (a plain top-k per beam), the floor the trie's cost is judged on.
Each users/s is the best of --repeats; ratios are medians over rounds of paired times (steadier on shared CPUs),
of wall time and, in brackets, of this thread's CPU time (steadier still when other processes share the cores).
Verdicts use the wall ratios. Targets: speed-up over `before` ≥ 3× (default shape, 1 thread, beam 20); constrained ≤ 1.3× unconstrained.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bench import save_results
from leadre.decode.beam import (
    DEAD,
    NOT_A_SID,
    Beams,
    TokenTrie,
    _model_kwargs,
    constrained_beam_search,
    left_pad,
    select_rows,
)
from leadre.sids.trie import SidTrie, format_sid, sid_token

SHAPES: dict[str, dict[str, Any]] = {
    "default": {"text_vocab": 2_048, "ads": 1_500, "levels": 4, "codebook": 64, "collisions": 64,
                "prompt_tokens": (90, 100),
                "excluded_per_user": 5,
                "model": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3,
                          "num_attention_heads": 4, "num_key_value_heads": 2}},
    "large": {"text_vocab": 8_000, "ads": 2_000, "levels": 4, "codebook": 32, "collisions": 64,
              "prompt_tokens": (270, 330),
              "excluded_per_user": 0,
              "model": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "num_key_value_heads": 2}},
}
NUM_RETURN = 10
SPEEDUP_TARGET = 3.0
TARGET_RATIO = 1.3
PAD = 0
SEED = 0


def random_sids(rng: np.random.Generator, ads: int, levels: int, codebook: int) -> list[str]:
    """Random codes, and a last token numbering the ads that share them (as the S-ID build does)."""
    seen: dict[tuple[int, ...], int] = {}
    sids = []
    for codes in rng.integers(0, codebook, size=(ads, levels)).tolist():
        index = seen[tuple(codes)] = seen.get(tuple(codes), -1) + 1
        sids.append(format_sid([*codes, index]))
    return sids


def build(shape: dict[str, Any], users: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    rng = np.random.default_rng(SEED)
    sids = random_sids(rng, shape["ads"], shape["levels"], shape["codebook"])
    arrays = SidTrie.from_sids(sids).to_arrays()
    vocab = [sid_token(level, code) for level in range(shape["levels"]) for code in range(shape["codebook"])]
    vocab += [sid_token(shape["levels"], index) for index in range(shape["collisions"])]
    trie = TokenTrie.build(arrays, {token: shape["text_vocab"] + i for i, token in enumerate(vocab)})
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=shape["text_vocab"] + len(vocab), **shape["model"])).eval()
    low, high = shape["prompt_tokens"]
    prompts = [rng.integers(1, shape["text_vocab"], size=n).tolist() for n in rng.integers(low, high + 1, size=users)]
    exclude = [rng.choice(len(sids), size=shape["excluded_per_user"], replace=False) for _ in prompts]
    return model, trie, len(arrays.depth), prompts, exclude


# --- the search before prompt-prefix sharing, verbatim (only the names changed) ---------------------------------

def _reference_search_batch(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            trie: TokenTrie, beam_width: int, constrained: bool = True,
                            blocked: torch.Tensor | None = None) -> Beams:
    prompts, device = input_ids.shape[0], input_ids.device
    trie = trie.to(device)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                **_model_kwargs(model))
    cache, logits = out.cache, out.logits[:, -1]
    next_position = positions[:, -1:] + 1
    scores = torch.zeros(prompts, 1, device=device)
    nodes = torch.zeros(prompts, 1, dtype=torch.long, device=device)
    tokens = torch.zeros(prompts, 1, 0, dtype=torch.long, device=device)
    mask = attention_mask

    for depth in range(trie.sid_length):
        beams = scores.shape[1]
        logits = logits.float()
        normaliser = logits.logsumexp(dim=-1, keepdim=True)
        if constrained:
            cand_tokens, cand_nodes, valid = trie.children(nodes.flatten(), depth)
            cand_scores = (logits.gather(1, cand_tokens) - normaliser).masked_fill_(~valid, DEAD)
            if blocked is not None and blocked.numel():
                owner = torch.arange(prompts, device=device).repeat_interleave(beams)[:, None]
                cand_scores.masked_fill_(torch.isin(owner * len(trie.parent) + cand_nodes, blocked), DEAD)
        else:
            top = logits.topk(min(beam_width, logits.shape[-1]), dim=-1)
            cand_tokens, cand_scores = top.indices, top.values - normaliser
        width = cand_tokens.shape[1]
        total = (scores[..., None] + cand_scores.view(prompts, beams, width)).view(prompts, beams * width)
        if total.shape[1] < beam_width:
            total = torch.cat([total, total.new_full((prompts, beam_width - total.shape[1]), DEAD)], dim=1)
        scores, flat = total.topk(beam_width, dim=1)
        flat = flat.clamp_(max=beams * width - 1)
        rows = (torch.arange(prompts, device=device)[:, None] * beams + flat // width).flatten()
        picked = rows * width + (flat % width).flatten()
        new_tokens = cand_tokens.flatten()[picked]
        tokens = torch.cat([tokens.view(prompts * beams, -1)[rows], new_tokens[:, None]], dim=1)
        tokens = tokens.view(prompts, beam_width, -1)
        if constrained:
            nodes = cand_nodes.flatten()[picked].view(prompts, beam_width)
        if depth == trie.sid_length - 1:
            break
        select_rows(cache, rows)
        if depth == 0:
            mask = mask.repeat_interleave(beam_width, dim=0)
            next_position = next_position.repeat_interleave(beam_width, dim=0)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out = model(input_ids=new_tokens[:, None], attention_mask=mask, position_ids=next_position + depth,
                    cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1]

    sid_index = trie.leaf_sid[nodes] if constrained else \
        trie.sid_index(tokens.view(-1, trie.sid_length)).view(prompts, beam_width)
    return Beams(tokens=tokens, scores=scores, sid_index=sid_index.masked_fill(scores == DEAD, NOT_A_SID))


def _reference_search(model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], trie: TokenTrie, beam_width: int,
                      num_return: int, batch_size: int, exclude: Sequence[np.ndarray] | None) -> list:
    """`constrained_beam_search` as it was, over `_reference_search_batch`."""
    by_length = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    results: list = [[] for _ in prompt_ids]
    with torch.inference_mode():
        for start in range(0, len(by_length), batch_size):
            chunk = by_length[start:start + batch_size]
            ids, mask = left_pad([prompt_ids[i] for i in chunk], PAD, "cpu")
            blocked = trie.blocked([exclude[i] for i in chunk]) if exclude is not None else None
            beams = _reference_search_batch(model, ids, mask, trie, beam_width, True, blocked)
            scores = beams.scores[:, :num_return].tolist()
            index = beams.sid_index[:, :num_return].tolist()
            for i, row_scores, row_index in zip(chunk, scores, index):
                results[i] = [(sid, score) for sid, score in zip(row_index, row_scores) if score != DEAD]
    return results


# --- timing -----------------------------------------------------------------------------------------------------

def seconds(func: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU seconds of one call. With one torch thread all work is on this thread, and its CPU time barely
    moves when other processes share the cores, where wall time can double."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.thread_time()
    result = func()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.thread_time() - cpu_start, result


def take_turns(funcs: list[Callable[[], Any]],
               repeats: int) -> tuple[list[list[float]], list[list[float]], list[Any]]:
    """Each function's wall and CPU times over `repeats` rounds, and its last result; reversed order every other
    round (ABBA), so a busy spell or a slow drift lands on all of them alike."""
    wall: list[list[float]] = [[] for _ in funcs]
    cpu: list[list[float]] = [[] for _ in funcs]
    results: list[Any] = [None] * len(funcs)
    for round_ in range(repeats):
        turns = list(enumerate(funcs))
        for i, func in turns[::-1] if round_ % 2 else turns:
            elapsed, used, results[i] = seconds(func)
            wall[i].append(elapsed)
            cpu[i].append(used)
    return wall, cpu, results


def same_results(a: list, b: list, tolerance: float = 1e-3) -> bool:
    """Same S-IDs per user (as sets: near-ties may swap places) with log-probs within `tolerance`."""
    for x, y in zip(a, b):
        if dict(x).keys() != dict(y).keys():
            return False
        if any(abs(dict(x)[k] - dict(y)[k]) > tolerance for k in dict(x)):
            return False
    return True


def run(shape_name: str, users: int, beams: list[int], batch_size: int, repeats: int, device: str) -> dict[str, Any]:
    shape = SHAPES[shape_name]
    model, trie, nodes, prompts, exclude = build(shape, users)
    model.to(device)
    exclude = exclude if shape["excluded_per_user"] else None

    def search(beam: int, constrained: bool, subset: list[list[int]] = prompts) -> list:
        return constrained_beam_search(model, subset, trie, beam, min(NUM_RETURN, beam), batch_size, PAD,
                                       constrained=constrained,
                                       exclude=exclude[:len(subset)] if constrained and exclude else None)

    def before(beam: int, subset: list[list[int]] = prompts) -> list:
        return _reference_search(model, subset, trie, beam, min(NUM_RETURN, beam), batch_size,
                                 exclude[:len(subset)] if exclude else None)

    warm = prompts[:batch_size]
    for beam in beams:
        search(beam, True, warm), search(beam, False, warm)
        if device == "cpu":
            before(beam, warm)
    rows = []
    for beam in beams:
        print(f"beam {beam}…", flush=True)
        funcs = [lambda: search(beam, True), lambda: search(beam, False)]
        if device == "cpu":  # the reference runs on the CPU only
            funcs.append(lambda: before(beam))
        times, cpu, results = take_turns(funcs, repeats)
        row = {"beam": beam, "constrained_times": times[0], "unconstrained_times": times[1],
               "constrained_cpu": cpu[0], "unconstrained_cpu": cpu[1],
               "constrained_users_per_s": users / min(times[0]), "unconstrained_users_per_s": users / min(times[1]),
               "ratio": float(np.median(np.divide(times[0], times[1]))),
               "cpu_ratio": float(np.median(np.divide(cpu[0], cpu[1]))),
               "unconstrained_live_share": float(np.mean([i != NOT_A_SID for u in results[1] for i, _ in u]))}
        if device == "cpu":
            row |= {"before_times": times[2], "before_cpu": cpu[2], "before_users_per_s": users / min(times[2]),
                    "speedup": float(np.median(np.divide(times[2], times[0]))),
                    "cpu_speedup": float(np.median(np.divide(cpu[2], cpu[0]))),
                    "same_as_before": same_results(results[0], results[2])}
        rows.append(row)
    return {"shape": shape_name, "users": users, "ads": shape["ads"], "trie_nodes": nodes,
            "sid_length": trie.sid_length, "prompt_tokens_mean": float(np.mean([len(p) for p in prompts])),
            "excluded_per_user": shape["excluded_per_user"], "model": shape["model"],
            "vocab": model.config.vocab_size, "device": device, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "batch_size": batch_size, "repeats": repeats, "num_return": NUM_RETURN,
            "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [f"shape {result['shape']}: {result['users']} users, prompts ~{result['prompt_tokens_mean']:.0f} tokens, "
             f"{result['ads']:,} S-IDs ({result['sid_length']} tokens, {result['trie_nodes']:,} trie nodes), "
             f"{result['excluded_per_user']} excluded per user, vocab {result['vocab']:,}, {result['device']} "
             f"({result['threads']} threads), batch {result['batch_size']}, {result['repeats']} rounds", "",
             "| beam | before users/s | constrained users/s | speed-up: wall (CPU) | unconstrained users/s "
             "| constrained ÷ unconstrained: wall (CPU) | targets | same results as before |",
             "|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in result["rows"]:
        verdicts = [f"≤{TARGET_RATIO}× " + ("ok" if row["ratio"] <= TARGET_RATIO else "missed")]
        if "speedup" in row:
            verdicts.insert(0, f"≥{SPEEDUP_TARGET}× " + ("ok" if row["speedup"] >= SPEEDUP_TARGET else "missed"))
        lines.append(f"| {row['beam']} | {row.get('before_users_per_s', float('nan')):.1f} | "
                     f"{row['constrained_users_per_s']:.1f} | {row.get('speedup', float('nan')):.2f}× "
                     f"({row.get('cpu_speedup', float('nan')):.2f}×) | {row['unconstrained_users_per_s']:.1f} | "
                     f"{row['ratio']:.2f}× ({row['cpu_ratio']:.2f}×) | {', '.join(verdicts)} | "
                     f"{'yes' if row.get('same_as_before', True) else 'NO'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="default")
    parser.add_argument("--users", type=int, default=64, help="prompts to generate for")
    parser.add_argument("--beams", default="10,20", help="beam widths, comma-separated")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass (decode.batch_size)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per figure")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.shape, args.users, [int(b) for b in args.beams.split(",")], args.batch_size, args.repeats,
                 args.device)
    print(table(result))
    print(f"\nsaved {save_results('decode', result)}")


if __name__ == "__main__":
    main()
