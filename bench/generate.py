"""`python -m bench.generate [--users 64] [--beams 10,20]`: users/s of trie-constrained S-ID beam search against
unconstrained beam search of the same width, same model, same prompts, same run.

The model is a random-init Qwen2 (hidden 256, 4 layers) over an 8k text vocabulary plus the S-ID tokens: weights do
not change how long a forward pass takes. The trie holds ~2000 random S-IDs of 4 codebook levels and a collision
index (5 tokens); prompts are ~300 random text tokens. Both searches run the same prompt pass and the same number of
cached one-token steps, so the ratio is the cost of the trie (window gather, masking) against a plain top-k.
Each time is the best of --repeats runs after a warm-up, the two searches taking turns; the paired ratio is the
median over rounds of constrained / unconstrained, steadier on shared CPUs. "Prompt pass" times the shared prompt
forward alone, the floor under both. Target: constrained time ≤ 1.3× unconstrained (judged on the paired ratio).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bench import save_results
from leadre.generate.beam import NOT_A_SID, TokenTrie, constrained_beam_search, left_pad
from leadre.sids.trie import SidTrie, format_sid

TEXT_VOCAB = 8_000
MODEL = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2}
ADS = 2_000
CODE_LEVELS, CODEBOOK_SIZE = 4, 32  # plus one collision-index level: 5-token S-IDs
PROMPT_TOKENS, PROMPT_SPREAD = 300, 30  # prompt lengths are uniform in 300 ± 30
NUM_RETURN = 10
TARGET_RATIO = 1.3
PAD = 0
SEED = 0


def random_sids(rng: np.random.Generator) -> list[str]:
    """ADS S-IDs: random codes, and a last token numbering the ads that share them (as the S-ID build does)."""
    seen: dict[tuple[int, ...], int] = {}
    sids = []
    for codes in rng.integers(0, CODEBOOK_SIZE, size=(ADS, CODE_LEVELS)).tolist():
        index = seen[tuple(codes)] = seen.get(tuple(codes), -1) + 1
        sids.append(format_sid([*codes, index]))
    return sids


def build(users: int) -> tuple[torch.nn.Module, TokenTrie, int, list[list[int]]]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    rng = np.random.default_rng(SEED)
    arrays = SidTrie.from_sids(random_sids(rng)).to_arrays()
    # S-ID tokens sit after the text vocabulary, as when they are added to a tokenizer as special tokens.
    vocab = sorted(set(arrays.child_tokens))
    trie = TokenTrie.build(arrays, {token: TEXT_VOCAB + i for i, token in enumerate(vocab)})
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=TEXT_VOCAB + len(vocab), **MODEL)).eval()
    lengths = rng.integers(PROMPT_TOKENS - PROMPT_SPREAD, PROMPT_TOKENS + PROMPT_SPREAD + 1, size=users)
    prompts = [rng.integers(1, TEXT_VOCAB, size=n).tolist() for n in lengths]
    return model, trie, len(arrays.depth), prompts


def prompt_pass(model: torch.nn.Module, prompts: list[list[int]], batch_size: int) -> None:
    """The prompt forward alone, batched as the search batches it (by length)."""
    device = next(model.parameters()).device
    ordered = sorted(prompts, key=len)
    with torch.inference_mode():
        for start in range(0, len(ordered), batch_size):
            ids, mask = left_pad(ordered[start:start + batch_size], PAD, device)
            positions = (mask.cumsum(-1) - 1).clamp_(min=0)
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)


def seconds(func: Callable[[], Any]) -> tuple[float, Any]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = func()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def take_turns(funcs: list[Callable[[], Any]], repeats: int) -> tuple[list[list[float]], list[Any]]:
    """Each function's times over `repeats` rounds, and its last result.

    The functions take turns, in reversed order every other round (ABBA), so a busy spell on shared CPUs or a slow
    drift lands on all of them alike.
    """
    times: list[list[float]] = [[] for _ in funcs]
    results: list[Any] = [None] * len(funcs)
    for round_ in range(repeats):
        turns = list(enumerate(funcs))
        for i, func in turns[::-1] if round_ % 2 else turns:
            elapsed, results[i] = seconds(func)
            times[i].append(elapsed)
    return times, results


def run(users: int, beams: list[int], batch_size: int, repeats: int, device: str) -> dict[str, Any]:
    model, trie, nodes, prompts = build(users)
    model.to(device)

    def search(beam: int, constrained: bool, subset: list[list[int]] = prompts) -> list:
        return constrained_beam_search(model, subset, trie, beam, min(NUM_RETURN, beam), batch_size, PAD,
                                       constrained=constrained)

    warm = prompts[:batch_size]
    for beam in beams:
        search(beam, True, warm)
        search(beam, False, warm)
    prompt_seconds = min(take_turns([lambda: prompt_pass(model, prompts, batch_size)], repeats)[0][0])
    rows = []
    for beam in beams:
        print(f"beam {beam}…", flush=True)
        (constrained, unconstrained), (found, free) = take_turns(
            [lambda: search(beam, True), lambda: search(beam, False)], repeats)
        constrained_s, unconstrained_s = min(constrained), min(unconstrained)
        hits = [index for user in free for index, _ in user]
        rows.append({"beam": beam, "constrained_seconds": constrained_s, "unconstrained_seconds": unconstrained_s,
                     "constrained_times": constrained, "unconstrained_times": unconstrained,
                     "constrained_users_per_s": users / constrained_s,
                     "unconstrained_users_per_s": users / unconstrained_s,
                     "ratio": constrained_s / unconstrained_s,
                     # Runs next to each other saw similar load: their ratio is steadier than best over best.
                     "paired_ratio": float(np.median(np.divide(constrained, unconstrained))),
                     "decode_ratio": (constrained_s - prompt_seconds) / (unconstrained_s - prompt_seconds),
                     "constrained_results": sum(len(user) for user in found),
                     "unconstrained_live_share": float(np.mean([i != NOT_A_SID for i in hits]))})
    return {"users": users, "ads": ADS, "trie_nodes": nodes, "sid_length": trie.sid_length,
            "prompt_tokens_mean": float(np.mean([len(p) for p in prompts])), "model": MODEL,
            "vocab": TEXT_VOCAB + len(set(trie.child_token_ids.tolist())), "device": device,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "batch_size": batch_size,
            "repeats": repeats, "num_return": NUM_RETURN, "prompt_seconds": prompt_seconds, "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['users']} users, prompts ~{result['prompt_tokens_mean']:.0f} tokens, {result['ads']:,} S-IDs "
             f"({result['sid_length']} tokens, {result['trie_nodes']:,} trie nodes), vocab {result['vocab']:,}, "
             f"{result['device']} ({result['threads']} threads), batch {result['batch_size']}, "
             f"best of {result['repeats']}; prompt pass alone {result['prompt_seconds']:.2f} s", "",
             "| beam | constrained users/s | unconstrained users/s | × unconstrained time (best) "
             "| × (paired median) | × decode time | target | unconstrained live S-IDs |",
             "|---:|---:|---:|---:|---:|---:|---|---:|"]
    for row in result["rows"]:
        verdict = "ok" if row["paired_ratio"] <= TARGET_RATIO else f"over {TARGET_RATIO}"
        lines.append(f"| {row['beam']} | {row['constrained_users_per_s']:.1f} | "
                     f"{row['unconstrained_users_per_s']:.1f} | {row['ratio']:.2f} | {row['paired_ratio']:.2f} | "
                     f"{row['decode_ratio']:.2f} | "
                     f"{verdict} | {row['unconstrained_live_share']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=64, help="prompts to generate for")
    parser.add_argument("--beams", default="10,20", help="beam widths, comma-separated")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the best counts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    result = run(args.users, [int(b) for b in args.beams.split(",")], args.batch_size, args.repeats, args.device)
    print(table(result))
    print(f"\nsaved {save_results('generate', result)}")


if __name__ == "__main__":
    main()
