"""`python -m bench.roofline [--threads 1,2]`: how close SFT and beam-search decoding of the default model come to
this CPU's float32 matmul speed, and so how much faster they can still get at this precision.

- SFT: one optimizer step of the builtin tiny model (params.yaml's `model.tiny`, every S-ID token in the vocabulary),
  `sft.batch_size` rows of `--length` tokens (the default world's prompts are ~95 tokens, plus the answer), loss on
  the answer; forward, backward and AdamW, as `leadre sft` runs them.
- decode: `bench.decode`'s default shape (the same model shape), beam 20, 64 users, as `leadre evaluate` searches.
- S-ID encoding: `sids.encoder` (MiniLM) in float32 over ad texts of a generated default world, through
  `encode_texts` as `leadre sids build` runs it (same-length batches of `sids.batch_size`).

FLOPs are counted by torch's FlopCounterMode (matrix products; the attention kernel of the prompt pass and the
element-wise work are not counted, so the share of peak is a lower bound). The peak is the best of several float32
matmuls of the workload's largest product (rows × hidden × vocabulary: the LM head) in the same process and thread
count. `headroom` = peak ÷ achieved: no float32 implementation of the same arithmetic runs faster than that, and
reaching it would need every product at the peak's speed with nothing else left.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench import save_results

SFT_LENGTH, DECODE_USERS, BEAM, ENCODER_TEXTS = 104, 64, 20, 512
S_ID_TARGET_ADS, S_ID_TARGET_SECONDS = 200_000, 8 * 60  # issue 14: semantic IDs for 200k ads in 8 minutes


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(rows: int, inner: int, cols: int, repeats: int = 20) -> float:
    """GFLOP/s of the best of `repeats` float32 (rows × inner) @ (inner × cols) products."""
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * rows * inner * cols / best / 1e9


def sft_step(length: int):
    """(step function, tokens per step, product shape of its LM head)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from leadre.config import load_params
    from leadre.sids.build import sid_vocabulary

    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    tiny, batch = params.model.tiny, params.sft.batch_size
    vocab = tiny.vocab_size + len(sid_vocabulary(params.sids))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=vocab, hidden_size=tiny.hidden_size, num_hidden_layers=tiny.layers, num_attention_heads=tiny.heads,
        num_key_value_heads=tiny.kv_heads, intermediate_size=tiny.intermediate_size,
        max_position_embeddings=tiny.max_position_embeddings, tie_word_embeddings=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.sft.learning_rate)
    ids = torch.randint(0, vocab, (batch, length))
    labels = ids.clone()
    labels[:, :-6] = -100  # the answer: 5 S-ID tokens and the end of turn

    def step():
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step, batch * length, (batch * length, tiny.hidden_size, vocab)


def decode_search():
    """(search function, users per search, product shape of its LM head)."""
    from bench.decode import SHAPES, build
    from leadre.decode.beam import constrained_beam_search

    shape = SHAPES["default"]
    model, trie, _, prompts, exclude = build(shape, DECODE_USERS)

    def search():
        constrained_beam_search(model, prompts, trie, BEAM, 10, 32, 0, True, exclude)

    return search, DECODE_USERS, (32 * BEAM, shape["model"]["hidden_size"], model.config.vocab_size)


def encoder_batch(texts: int = ENCODER_TEXTS):
    """(encoding function, texts per call, product shape of its widest layer: the feed-forward's first)."""
    import tempfile

    import pandas as pd

    from leadre.data.generate import run_generate
    from leadre.sids.build import ad_texts
    from leadre.sids.encoder import _load, encode_texts, resolve_encoder_dir
    from tests.conftest import write_params

    with tempfile.TemporaryDirectory() as root:
        params = write_params(Path(root), {"world.scale": "default"})
        run_generate(params)
        ads = pd.read_parquet(params.path(params.data.generated_dir) / "ads.parquet")
    sample = ad_texts(ads)[:texts]
    folder = resolve_encoder_dir(params.sids.encoder)
    tokenizer, model, _ = _load(str(folder))
    tokens = int(np.mean([len(ids) for ids in tokenizer(sample)["input_ids"]]))

    def encode():
        encode_texts(folder, sample, params.sids.batch_size)

    config = model.config
    return encode, len(sample), (min(params.sids.batch_size, len(sample)) * tokens, config.hidden_size,
                                 config.intermediate_size)


def sft_target(r: dict) -> str:
    return f"2× tokens/s needs {2 * r['share_of_peak']:.0%} of peak"


def decode_target(r: dict) -> str:
    return "3× the previous search: `bench.decode` runs both"


def encoder_target(r: dict) -> str:
    needed = S_ID_TARGET_ADS * r["gflop_per_unit"] / S_ID_TARGET_SECONDS
    return f"200k ads in 8 min needs {needed:.0f} GFLOP/s, {needed / r['peak_gflop_per_second']:.1f}× peak"


def measure(name: str, unit: str, make, threads: int, repeats: int, target) -> dict:
    torch.set_num_threads(threads)
    fn, units, head = make()
    flops = _flops(fn)
    seconds = _median_seconds(fn, repeats)
    achieved = flops / seconds / 1e9
    peak = matmul_peak(*head)
    return {"workload": name, "unit": unit, "threads": threads, "gflop_per_unit": flops / units / 1e9,
            "units_per_second": units / seconds, "gflop_per_second": achieved, "peak_shape": list(head),
            "peak_gflop_per_second": peak, "share_of_peak": achieved / peak, "headroom": peak / achieved} | \
        {"target": target({"gflop_per_unit": flops / units / 1e9, "share_of_peak": achieved / peak,
                           "peak_gflop_per_second": peak})}


def report(rows: list[dict]) -> str:
    lines = ["| workload | threads | MFLOP per unit | units/s | achieved GFLOP/s | matmul peak GFLOP/s (shape) | "
             "share of peak | headroom | issue 14's target |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        shape = "×".join(str(x) for x in r["peak_shape"])
        lines.append(f"| {r['workload']} | {r['threads']} | {r['gflop_per_unit'] * 1e3:,.2f} per {r['unit']} | "
                     f"{r['units_per_second']:,.0f} | {r['gflop_per_second']:.1f} | {r['peak_gflop_per_second']:.1f} "
                     f"({shape}) | {r['share_of_peak']:.0%} | {r['headroom']:.2f}× | {r['target']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="torch CPU thread counts, comma-separated")
    parser.add_argument("--length", type=int, default=SFT_LENGTH, help="tokens per SFT row")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per figure (median)")
    args = parser.parse_args()
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        rows.append(measure("SFT step", "token", lambda: sft_step(args.length), threads, args.repeats, sft_target))
        if threads == 1:  # the decode target is set on one thread
            rows.append(measure(f"decode, beam {BEAM}", "user", decode_search, threads, args.repeats, decode_target))
        rows.append(measure("S-ID encoding", "text", encoder_batch, threads, max(3, args.repeats // 5),
                            encoder_target))
    print(report(rows))
    print(f"\nsaved {save_results('roofline', rows)}")


if __name__ == "__main__":
    main()
