"""Prompt build at 100k and 1M users: wall time and peak memory of `leadre prompts build`.

Runs on the worlds bench.data generated and validated. The S-ID table is synthetic (unique, deterministic codes):
S-ID quality does not change how long prompts take to build, and S-ID build is timed on its own in bench/sids.py.
Baseline, in the same benchmark: a straightforward per-pair Python renderer (slice the user's events, f-string
each one) on a sample of the same pairs; the ratio is our time per pair over its time per pair.
Target (issues 3 and 14): 1M users within 60 s and 8 GiB on 2 cores; `python -m bench` prints the verdict.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from leadre.config import Params

SAMPLE_PAIRS = 20_000


def write_synthetic_sids(params: Params) -> None:
    ads = pd.read_parquet(params.path(params.data.validated_dir) / "ads.parquet", columns=["ad_id"])
    k = np.arange(len(ads))
    size = params.sids.codebook_size
    sid = [f"<a_{a}><b_{b}><c_{c}><d_{d}>" for a, b, c, d in zip(k % size, k // size % size, k // size**2 % size,
                                                                   k // size**3)]
    out = params.path(params.sids.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"ad_id": ads["ad_id"], "sid": sid, "live": True}).to_parquet(out / "ad_sids.parquet")


def naive_render_seconds_per_pair(params: Params) -> float:
    """Render a sample of main-task pairs the obvious way, one pair and one event at a time."""
    from leadre.data.tables import read_tables
    from leadre.prompts.build import event_log
    from leadre.prompts.pairs import PairDraws, select_pairs

    write_synthetic_sids(params)
    tables = read_tables(params.path(params.data.validated_dir))
    log, titles = event_log(tables)
    sids = pd.read_parquet(params.path(params.sids.out_dir) / "ad_sids.parquet")["sid"].tolist()
    texts = sids + titles.tolist()[len(sids):]
    ads = tables["ads"]
    snapshot_ms = int(pd.Timestamp(params.data.snapshot_time).value // 1_000_000)
    pairs = select_pairs(log, ads["industry"].cat.codes.to_numpy(), snapshot_ms, params.prompts, PairDraws(0))
    sample = np.random.default_rng(1).choice(len(pairs), size=min(SAMPLE_PAIRS, len(pairs)), replace=False)
    users = tables["users"].set_index(np.arange(len(tables["users"])))
    started = time.perf_counter()
    for i in sample:
        u, cut = pairs.user[i], pairs.cutoff[i]
        lo, hi = log.user_start[u], log.position(np.array([u]), np.array([cut]))[0]
        window = range(max(lo, hi - params.prompts.short_term_events), hi)
        recent = ", ".join(f"{(cut - log.ts[j]) // 86_400_000}d'{log.actions[log.action[j]]}'{texts[log.obj[j]]}"
                           for j in window)
        counts: dict[str, int] = {}
        for j in range(lo, hi):
            if log.ts[j] >= cut - params.prompts.long_term_days * 86_400_000:
                label = log.categories[log.category[j]]
                counts[label] = counts.get(label, 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])[: params.prompts.long_term_top]
        row = users.iloc[u]
        _ = (f"Profile: gender: {row.gender}; age: {row.age}\nLong-term interests: "
             + ", ".join(f"{k}:{v}" for k, v in top) + f"\nRecent behaviour: {recent}")
    return (time.perf_counter() - started) / len(sample)
