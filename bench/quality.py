"""`python -m bench.quality --seeds 3 [-S key=value ...]`: is the LLM better than the ID baselines, beyond noise?

Runs the default retrain from prompts on (prompts → sft → dpo → evaluate) once per seed, each in its own folder with
its own MLflow store (so no champion joins in), on the repository's validated data and semantic IDs (`dvc repro
sids` first). A seed sets `sft.seed`, `dpo.seed` and the SASRec baseline's seed; prompts are built once, since
their seed picks the held-out users and so the evaluation's users. Prints, per method, the median and range over
seeds of the headline metrics, and per seed the paired bootstrap interval of each LLM row's lift over the best ID
baseline. Overrides (`-S`) apply to every step, so two runs compare a change, e.g. `-S prompts.max_prompt_tokens=160`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import save_results

REPO = Path(__file__).resolve().parents[1]
HEADLINE = ("ndcg@10", "hr@10", "new_ads.hr@10", "cold_users.ndcg@10")
LLM_ROWS = ("candidate", "sft", "fusion")
BASELINES = ("popularity", "itemknn", "sasrec")
# what a seeded run reads from the repository as it is (built by `dvc repro sids`)
SHARED_INPUTS = ("data/validated", "artifacts/sids", "artifacts/embeddings")


def _leadre(root: Path, overrides: list[str], *command: str) -> float:
    args = [str(Path(sys.executable).parent / "leadre"), "--params", str(root / "params.yaml")]
    for override in overrides:
        args += ["-S", override]
    started = time.perf_counter()
    log = root / "bench.log"
    with log.open("a") as out:
        done = subprocess.run([*args, *command], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
    if done.returncode:
        sys.exit(f"bench.quality: `leadre {' '.join(command)}` failed in {root} (see {log})")
    return time.perf_counter() - started


def _workspace(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    for relative in SHARED_INPUTS:
        source = REPO / relative
        if not source.exists():
            sys.exit(f"bench.quality: {source} is missing: run `dvc repro sids` first")
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).symlink_to(source)


def _one_seed(work: Path, prompts_root: Path, overrides: list[str], seed: int) -> dict:
    root = work / f"seed-{seed}"
    _workspace(root)
    (root / "data" / "prompts").symlink_to(prompts_root / "data" / "prompts")
    seeded = [*overrides, f"sft.seed={seed}", f"dpo.seed={seed}", f"evaluate.baselines.sasrec.seed={seed}",
              f"tracking.tracking_uri=sqlite:///{root / 'mlruns.db'}"]
    seconds = {step: _leadre(root, seeded, step) for step in ("sft", "dpo", "evaluate")}
    summary = json.loads((root / "reports" / "evaluation" / "summary.json").read_text())
    print(f"seed {seed}: " + ", ".join(f"{s} {v:.0f}s" for s, v in seconds.items()), flush=True)
    return {"seed": seed, "seconds": seconds, "methods": summary["methods"], "lifts": summary["lifts"]}


def run(seeds: list[int], overrides: list[str], work: Path, jobs: int = 1) -> dict:
    """`jobs` seeds at once. On 2 cores, two one-thread runs side by side finish sooner than two two-thread runs in
    turn (a thread per core, no contention); pass `-S model.cpu_threads=1` with `--jobs 2`."""
    from concurrent.futures import ThreadPoolExecutor

    prompts_root = work / "prompts"
    _workspace(prompts_root)
    prompt_seconds = _leadre(prompts_root, overrides, "prompts", "build")
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each seed is its own process: threads only wait
        runs = list(pool.map(lambda seed: _one_seed(work, prompts_root, overrides, seed), seeds))
    return {"overrides": overrides, "jobs": jobs, "prompt_seconds": prompt_seconds, "runs": runs}


def report(result: dict) -> str:
    runs = result["runs"]
    lines = [f"Quality over {len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}); overrides: "
             f"{' '.join(result['overrides']) or 'none'}", "",
             "| method | " + " | ".join(f"{m} median [min, max]" for m in HEADLINE) + " |",
             "|---|" + "---:|" * len(HEADLINE)]
    for method in [*LLM_ROWS, *BASELINES]:
        if not all(method in r["methods"] for r in runs):
            continue
        cells = []
        for metric in HEADLINE:
            values = np.array([r["methods"][method].get(metric, np.nan) for r in runs])
            cells.append(f"{np.median(values):.4f} [{values.min():.4f}, {values.max():.4f}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Lift over the best ID baseline on each seed (paired bootstrap over users):", "",
              "| seed | method | metric | best baseline | ratio | interval of the ratio |", "|---|---|---|---|---:|---|"]
    for r in runs:
        for metric in HEADLINE[:2]:
            best = max(BASELINES, key=lambda b: r["methods"][b][metric])
            for method in LLM_ROWS:
                lift = r["lifts"].get(method, {}).get(best, {}).get(metric)
                if lift:
                    lines.append(f"| {r['seed']} | {method} | {metric} | {best} | {1 + lift['lift']:.3f}× | "
                                 f"[{1 + lift['low']:.3f}×, {1 + lift['high']:.3f}×] |")
    lines += ["", "Ratio to the best ID baseline per metric (median over seeds of each seed's ratio):", "",
              "| method | " + " | ".join(HEADLINE) + " |", "|---|" + "---:|" * len(HEADLINE)]
    for method in LLM_ROWS:
        if not all(method in r["methods"] for r in runs):
            continue
        cells = []
        for metric in HEADLINE:
            ratios = [r["methods"][method][metric] / max(r["methods"][b].get(metric, 0) for b in BASELINES)
                      for r in runs if max(r["methods"][b].get(metric, 0) for b in BASELINES) > 0]
            cells.append(f"{np.median(ratios):.3f}× [{min(ratios):.3f}, {max(ratios):.3f}]" if ratios else "n/a")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    seconds = {step: np.median([r["seconds"][step] for r in runs]) for step in runs[0]["seconds"]}
    lines += ["", "Median seconds per step: " + ", ".join(f"{s} {v:.0f}" for s, v in seconds.items())
              + f"; prompts {result['prompt_seconds']:.0f} (once)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (1, 2, …)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], help="a param override")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (see `run`)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="leadre-quality-"))
    result = run(list(range(1, args.seeds + 1)), args.overrides, work, args.jobs)
    print(report(result))
    print(f"\nruns in {work}; saved {save_results('quality', result)}")


if __name__ == "__main__":
    main()
