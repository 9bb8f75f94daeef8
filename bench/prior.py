"""`python -m bench.prior --work DIR`: does correcting the LLM's scores for the shift in ad popularity help?

The model learns p(ad | prompt) under the training pairs' mix of ads, spread over the weeks before the cut-off;
at the cut-off, ads' popularity has moved on (new ads launched, old ones faded). Bayes' rule for a label shift
(Saerens et al., 2002) re-weights each ad by p_now(ad) / p_train(ad):
    score = log p(ad | prompt) + a · log p_now(ad) − b · log p_train(ad)
leadre/decode/prior.py holds the correction decoding applies (`decode.prior`: a, b and p_now's half-life); this
script measures it over a grid of (beam width, a, b) on models a kept bench.quality run left, without retraining.

Reads the seed folders a kept `python -m bench.quality --work DIR` left; per seed and split it generates the
candidate's beams once per beam width (cached as .npz beside the seed), then scores a grid of (width, a, b) by
NDCG@10. The best median valid NDCG@10 is chosen; only then is test looked at, as ratios to the best ID baseline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench import save_results
from bench.quality import BASELINES, HEADLINE


WIDTHS = (20, 50)
NOW_WEIGHTS = (0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
TRAIN_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _params(seed_dir: Path, split: str):
    from leadre.config import load_params

    seed = int(seed_dir.name.split("-")[1])
    return load_params(seed_dir / "params.yaml", {"evaluate.split": split, "evaluate.baselines.sasrec.seed": seed,
                                                 "model.cpu_threads": 1})


def generate(seed_dir: Path, widths: tuple[int, ...] = WIDTHS) -> None:
    """The candidate's beams for valid and test at every width, cached as beams-<split>-<width>.npz."""
    from leadre.decode.recommender import LlmRecommender
    from leadre.evaluate.run import load_eval_set
    from leadre.runtime import set_cpu_threads

    set_cpu_threads(1)
    rec = None
    for split in ("valid", "test"):
        params = _params(seed_dir, split)
        data = load_eval_set(params)
        rec = rec or LlmRecommender(params.path(params.evaluate.candidate_dir), params.decode)  # same for both splits
        for width in widths:
            out = seed_dir / f"beams-{split}-{width}.npz"
            if out.exists():
                continue
            g = rec.generate(data.prompts, beam_width=width, exclude=data.exclude)
            ids = np.full((len(g.ad_ids), width), -1, dtype=np.int64)
            lp = np.full((len(g.ad_ids), width), -np.inf)
            for row, (a, s) in enumerate(zip(g.ad_ids, g.logprobs)):
                ids[row, :len(a)], lp[row, :len(s)] = a, s
            np.savez(out, ids=ids, logprobs=lp)
            print(f"{seed_dir.name} {split} width {width}: {len(ids)} users", flush=True)


def score_grid(seed_dir: Path, split: str, widths: tuple[int, ...] = WIDTHS) -> dict:
    from leadre.bundle import read_response_counts
    from leadre.decode.prior import log_shares
    from leadre.evaluate.baselines import popularity_scores
    from leadre.evaluate.run import load_eval_set, score_lists
    from leadre.units import PAD

    params = _params(seed_dir, split)
    data = load_eval_set(params)
    train_counts = read_response_counts(params.path(params.evaluate.candidate_dir))  # what SFT wrote: p_train
    if train_counts is None:
        raise SystemExit(f"bench.prior: {seed_dir} was trained before models carried their response counts")
    now_counts = popularity_scores(data.engagements, params.decode.prior.half_life_days)
    k_max = max(params.evaluate.ks)
    results = {}
    for width in widths:
        beams = np.load(seed_dir / f"beams-{split}-{width}.npz")
        ids, lp = beams["ids"], beams["logprobs"]
        ads, inverse = np.unique(ids[ids >= 0], return_inverse=True)
        log_now = np.zeros(ids.shape)
        log_train = np.zeros(ids.shape)
        log_now[ids >= 0] = log_shares(now_counts, ads)[inverse]
        log_train[ids >= 0] = log_shares(train_counts, ads)[inverse]
        for a, b in itertools.product(NOW_WEIGHTS, TRAIN_WEIGHTS):
            score = np.where(ids >= 0, lp + a * log_now - b * log_train, -np.inf)
            order = np.argsort(-score, axis=1, kind="stable")[:, :k_max]
            lists = np.take_along_axis(ids, order, axis=1)
            lists = np.where(lists >= 0, lists, PAD)
            results[(width, a, b)] = score_lists(params, data, lists)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prior", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="a kept bench.quality --work folder")
    parser.add_argument("--widths", default=",".join(map(str, WIDTHS)),
                        help="beam widths to generate and score, comma-separated")
    parser.add_argument("--generate-only", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))
    if args.generate_only:
        generate(args.generate_only, widths)
        return
    seeds = sorted(args.work.glob("seed-*"))
    procs = [subprocess.Popen([sys.executable, "-m", "bench.prior", "--work", str(args.work), "--widths",
                               args.widths, "--generate-only", str(s)]) for s in seeds]
    if any(p.wait() for p in procs):
        raise SystemExit("bench.prior: generation failed")
    grids = {s.name: {split: score_grid(s, split, widths) for split in ("valid", "test")} for s in seeds}
    best_baseline = {}
    for s in seeds:
        summary = json.loads((s / "reports" / "evaluation" / "summary.json").read_text())["methods"]
        best_baseline[s.name] = {m: max(summary[b][m] for b in BASELINES) for m in HEADLINE}
    settings = list(next(iter(grids.values()))["valid"])
    valid = {k: float(np.median([g["valid"][k]["ndcg@10"] for g in grids.values()])) for k in settings}
    ranked = sorted(settings, key=lambda k: -valid[k])

    def test_row(k):
        return {m: [g["test"][k][m] / best_baseline[name][m] for name, g in grids.items()] for m in HEADLINE}

    lines = ["width a b | valid NDCG@10 | test ratio to best baseline: " + " / ".join(HEADLINE)]
    for k in dict.fromkeys([*ranked[:8], *((w, a, b) for w in widths for a, b in ((0.0, 0.0), (1.0, 1.0)))]):
        row = test_row(k)
        lines.append(f"{k} | {valid[k]:.4f} | " + " / ".join(
            f"{np.median(v):.3f} [{min(v):.3f}, {max(v):.3f}]" for v in row.values()))
    print("\n".join(lines))
    save_results("prior", {"valid": {str(k): v for k, v in valid.items()},
                           "test": {str(k): test_row(k) for k in settings}})


if __name__ == "__main__":
    main()
