"""`python -m bench.fusion --work DIR`: fusion settings chosen on the valid split, judged on the test split.

Reads the seed folders a kept `python -m bench.quality --work DIR` left (each with its trained candidate). For every
seed and split it generates the candidate's lists once and fits every ID baseline, then scores each point of a grid
of fusion settings by NDCG@10: both methods of leadre/decode/fusion.py, the mixture (the LLM's weight against the ID
channels', SASRec's part of theirs, the LLM's temperature) and RRF (LLM and SASRec weights against item-KNN's 1, the
rank constant). The setting with the best median valid NDCG@10 over seeds is the choice, for each method; only then
is the test split looked at, for those choices and for params.yaml's current one, as each seed's ratio to the best
ID baseline (median and range over seeds). Choosing on test would flatter the row.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from bench import save_results
from bench.quality import HEADLINE

LLM_WEIGHTS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
SASREC_WEIGHTS = (0.0, 0.25, 0.5, 1.0)  # relative to item-KNN's 1.0
RANK_CONSTANTS = (2, 5, 10, 20, 60)
LLM_SHARES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the mixture: the LLM's weight; the ID channels share the rest of 1
SASREC_SHARES = (0.0, 0.25, 0.5)  # the mixture: SASRec's part of the ID channels' share, item-KNN's the rest
TEMPERATURES = (1.0, 1.5, 2.0, 3.0)
SETTING_KEYS = ("method", "rank_constant", "temperature")  # a setting's other keys are channels' weights
REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def lists_of(seed_dir: Path, split: str, overrides: dict | None = None) -> dict:
    """The candidate's and every baseline's top-`depth` lists for one split (with the LLM's scores and each
    baseline's shares, what the mixture reads), with what scoring them needs."""
    from leadre.config import load_params, read_params_file
    from leadre.decode.recommender import LlmRecommender, top_k
    from leadre.evaluate.run import _baselines, load_eval_set
    from leadre.runtime import set_cpu_threads

    seed = int(seed_dir.name.split("-")[1])  # as bench.quality seeded it: SASRec's seed too
    # the kept run's models and settings, with this checkout's fusion settings (the run may predate them)
    fusion = read_params_file(REPO_PARAMS)["fusion"]
    params = load_params(seed_dir / "params.yaml", {**(overrides or {}), "evaluate.split": split,
                                                    "evaluate.baselines.sasrec.seed": seed, "fusion": fusion})
    set_cpu_threads(params.model.cpu_threads)
    data = load_eval_set(params)
    gen, depth = params.decode, params.fusion.depth
    width = max(gen.beam_width, max(params.evaluate.ks))  # as `leadre evaluate` generates
    recommender = LlmRecommender(params.path(params.evaluate.candidate_dir), gen)
    generated = recommender.generate(data.prompts, beam_width=width, exclude=data.exclude)
    llm, llm_scores = top_k(generated, width, data.exclude, data.ads["ecpm"], data.ads["industry"], gen.value_weight,
                            gen.diversity_penalty, recommender.popularity_shift(data.engagements))
    channels, shares = {}, {}
    for baseline in _baselines(params):
        baseline.fit(data.engagements)
        channels[baseline.name], shares[baseline.name] = baseline.recommend(
            data.user_ids, depth, data.candidates, data.exclude, return_shares=True)
    return {"params": params, "data": data, "llm": llm, "llm_scores": llm_scores, "channels": channels,
            "shares": shares}


def fused(lists: dict, setting: dict, k: int = 50) -> np.ndarray:
    """The lists merged under one grid setting (leadre.decode.fusion, any number of channels)."""
    from leadre.decode.fusion import mixture_fusion, reciprocal_rank_fusion, softmax_shares

    depth = lists["params"].fusion.depth
    weights = {name: w for name, w in setting.items() if name not in SETTING_KEYS and w}
    if setting["method"] == "mixture":
        llm = softmax_shares(lists["llm_scores"], setting["temperature"], depth)
        return mixture_fusion([(lists["llm"], llm, weights.pop("llm", 0.0))]
                              + [(lists["channels"][name], lists["shares"][name], w) for name, w in weights.items()],
                              k, depth)[0]
    channels = [(lists["llm"] if name == "llm" else lists["channels"][name], w) for name, w in weights.items()]
    return reciprocal_rank_fusion(channels, k, setting["rank_constant"], depth)[0]


def lists_names(by_seed: dict) -> list[str]:
    return list(next(iter(by_seed.values()))["test"]["channels"])


def score(lists: dict, ids: np.ndarray) -> dict[str, float]:
    from leadre.evaluate.run import score_lists

    k_max = max(lists["params"].evaluate.ks)
    return score_lists(lists["params"], lists["data"], ids[:, :k_max])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fusion", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a kept bench.quality --work folder")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                        help="a param override for every seed's run, e.g. model.cpu_threads=1 (as bench.quality's)")
    args = parser.parse_args()
    from leadre.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    seeds = sorted(args.work.glob("seed-*"))
    if not seeds:
        raise SystemExit(f"bench.fusion: no seed-* folders in {args.work}")
    by_seed = {s.name: {split: lists_of(s, split, overrides) for split in ("valid", "test")} for s in seeds}
    for split in ("valid", "test"):  # where each channel stands alone: the weights can only trade these off
        alone = {name: [score(seed[split], seed[split]["llm"] if name == "llm" else seed[split]["channels"][name])
                        ["ndcg@10"] for seed in by_seed.values()] for name in ("llm", *lists_names(by_seed))}
        print(f"{split}, NDCG@10 alone (median over seeds): "
              + ", ".join(f"{name} {np.median(v):.4f}" for name, v in alone.items()))
    grid = ([{"method": "mixture", "llm": a, "itemknn": round((1 - a) * (1 - s), 4), "sasrec": round((1 - a) * s, 4),
              "temperature": t} for a, s, t in itertools.product(LLM_SHARES, SASREC_SHARES, TEMPERATURES)]
            + [{"method": "rrf", "llm": w, "itemknn": 1.0, "sasrec": s, "rank_constant": c}
               for w, s, c in itertools.product(LLM_WEIGHTS, SASREC_WEIGHTS, RANK_CONSTANTS)])

    def ndcg(setting: dict, split: str) -> list[float]:
        return [score(lists[split], fused(lists[split], setting))["ndcg@10"] for lists in by_seed.values()]

    valid = [(float(np.median(ndcg(setting, "valid"))), setting) for setting in grid]
    valid.sort(key=lambda pair: -pair[0])
    print("best settings on valid (median NDCG@10 over seeds):")
    for value, setting in valid[:8]:
        print(f"  {value:.4f}  {setting}")
    fusion = by_seed[seeds[0].name]["test"]["params"].fusion
    total = fusion.llm_weight + fusion.channel_weight
    current = ({"method": "mixture", "llm": round(fusion.llm_weight / total, 4), "itemknn": 0.0, "sasrec": 0.0,
                fusion.channel: round(fusion.channel_weight / total, 4), "temperature": fusion.temperature}
               if fusion.method == "mixture" else
               {"method": "rrf", "llm": fusion.llm_weight, "itemknn": 0.0, "sasrec": 0.0,
                fusion.channel: fusion.channel_weight, "rank_constant": fusion.rank_constant})
    rank = next((i for i, (_, s) in enumerate(valid) if s == current), None)
    if rank is not None:
        print(f"  params.yaml's setting: {valid[rank][0]:.4f}, {rank + 1} of {len(valid)}")
    table = {}
    chosen = {f"chosen on valid, {method}": next(s for _, s in valid if s["method"] == method)
              for method in ("mixture", "rrf")}
    for label, setting in (("current", current), *chosen.items()):
        ratios = {metric: [] for metric in HEADLINE}
        for lists in (seed["test"] for seed in by_seed.values()):
            mine = score(lists, fused(lists, setting))
            base = {name: score(lists, ids) for name, ids in lists["channels"].items()}
            for metric in HEADLINE:
                ratios[metric].append(mine[metric] / max(b[metric] for b in base.values()))
        table[label] = {"setting": setting, "ratios": ratios}
        print(f"\ntest, {label} {setting}: ratio to the best ID baseline, median [range] over {len(seeds)} seeds")
        for metric, values in ratios.items():
            print(f"  {metric}: {np.median(values):.3f}× [{min(values):.3f}, {max(values):.3f}]")
    print(f"\nsaved {save_results('fusion', {'valid_top': [{'ndcg@10': v, **s} for v, s in valid[:20]], **table})}")


if __name__ == "__main__":
    main()
