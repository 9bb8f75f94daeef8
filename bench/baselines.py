"""`python -m bench.baselines [--data-root DIR] [--repeats 1]`: the SASRec baseline as `leadre evaluate` fits and
scores it on a real world (the default one), its settings now against its settings before, same process.

SASRec learns from `ad_engagements(events, before=the test cut-off)` and ranks every live ad for every test user,
engaged ads excluded, exactly as `leadre/evaluate/run.py` does (`load_eval_set`). `--data-root` is a checkout whose
data/validated, data/prompts and artifacts/sids are built (`dvc repro prompts`); it is only read. Seconds are wall
and, in brackets, CPU seconds of fitting (on one thread CPU time barely moves when other processes share the cores;
on two it counts both). Three rows: the settings before the speed-up, today's on one thread (the default before it followed
`model.cpu_threads`), and today's. Target: fit ≤ 20 s at the NDCG@10 of before ± 0.002.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import save_results
from leadre.config import load_params
from leadre.evaluate import metrics as m
from leadre.evaluate.baselines import SASRec, SASRecParams

REPO = Path(__file__).resolve().parent.parent
# evaluate.baselines.sasrec before the speed-ups: 25 epochs of 18 batches on one thread reached the same NDCG@10 in
# ~4× the time
BEFORE = {"epochs": 25, "batch_size": 256, "lr": 0.003, "threads": 1}
TARGET_SECONDS, NDCG_TOLERANCE = 20.0, 0.002
LINKED = ("data/validated", "data/prompts", "artifacts/sids")


def eval_set(data_root: Path, split: str):
    """`load_eval_set` of the worktree's params over `data_root`'s data, linked read-only into a scratch root."""
    from leadre.evaluate.run import load_eval_set
    from leadre.runtime import set_cpu_threads

    scratch = Path(tempfile.mkdtemp(prefix="bench-baselines-"))
    try:
        shutil.copy(REPO / "params.yaml", scratch / "params.yaml")
        for relative in LINKED:
            source = data_root / relative
            if not source.exists():
                raise FileNotFoundError(f"{source}: missing; build it with `dvc repro prompts` in {data_root}")
            (scratch / relative).parent.mkdir(parents=True, exist_ok=True)
            (scratch / relative).symlink_to(source.resolve(), target_is_directory=True)
        params = load_params(scratch / "params.yaml", {"evaluate.split": split})
        set_cpu_threads(params.model.cpu_threads)  # as `leadre evaluate` does: SASRec's threads: 0 follows it
        return params, load_eval_set(params)
    finally:
        shutil.rmtree(scratch)


def fit_and_score(settings: SASRecParams, data, k: int) -> dict[str, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    model = SASRec(settings).fit(data.engagements)
    fit_s, fit_cpu = time.perf_counter() - start, time.process_time() - cpu
    recommended = model.recommend(data.user_ids, k, data.candidates, data.exclude)
    rows = m.per_row_metrics(recommended, data.relevant, (10,))
    return {"fit_seconds": fit_s, "fit_cpu_seconds": fit_cpu, "ndcg@10": float(rows["ndcg@10"].mean()),
            "hr@10": float(rows["hr@10"].mean()), "final_loss": model.loss_history[-1]}


def run(data_root: Path, repeats: int, split: str) -> dict[str, Any]:
    params, data = eval_set(data_root, split)
    now = params.evaluate.baselines["sasrec"]
    before = now.model_copy(update=BEFORE)
    one_thread = now.model_copy(update={"threads": 1})
    k = max(params.evaluate.ks)
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "now, one thread": [], "now": []}
    for round_ in range(repeats):  # ABC CBA: a busy spell on a shared machine lands on all
        order = [("before", before), ("now, one thread", one_thread), ("now", now)]
        for name, settings in order[::-1] if round_ % 2 else order:
            print(f"{name} (round {round_ + 1})…", flush=True)
            runs[name].append(fit_and_score(settings, data, k))
    return {"split": split, "users": len(data.user_ids), "engagements": len(data.engagements), "candidates": len(data.candidates),
            "settings": {"before": before.model_dump(), "now, one thread": one_thread.model_dump(),
                         "now": now.model_dump()}, "step_threads": torch.get_num_threads(), "runs": runs}


def table(result: dict[str, Any]) -> str:
    runs = result["runs"]
    best = {name: min(r["fit_seconds"] for r in rs) for name, rs in runs.items()}
    best_cpu = {name: min(r["fit_cpu_seconds"] for r in rs) for name, rs in runs.items()}
    ndcg = {name: rs[0]["ndcg@10"] for name, rs in runs.items()}  # seeded: every round gives the same lists
    lines = [f"SASRec on {result['engagements']:,} engagements; {result['users']:,} {result['split']} users ranked over "
             f"{result['candidates']:,} live ads (best of {len(runs['now'])})", "",
             "| settings | epochs | batch | lr | threads | fit s: wall (CPU) | NDCG@10 | HR@10 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, rs in runs.items():
        s = result["settings"][name]
        threads = s["threads"] or result["step_threads"]
        lines.append(f"| {name} | {s['epochs']} | {s['batch_size']} | {s['lr']} | {threads} | {best[name]:.1f} "
                     f"({best_cpu[name]:.1f}) | {ndcg[name]:.4f} | {rs[0]['hr@10']:.4f} |")
    speed = "ok" if best["now"] <= TARGET_SECONDS else "missed"
    same = "ok" if abs(ndcg["now"] - ndcg["before"]) <= NDCG_TOLERANCE else "missed"
    lines += ["", f"speed-up {best['before'] / best['now']:.1f}× wall ({best_cpu['before'] / best_cpu['now']:.1f}× CPU); "
              f"fit ≤ {TARGET_SECONDS:.0f} s: {speed}; NDCG@10 within ±{NDCG_TOLERANCE} of before: {same} "
              f"({ndcg['now'] - ndcg['before']:+.4f})"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO, help="checkout holding the built default world")
    parser.add_argument("--repeats", type=int, default=1, help="fits of each setting; the best time counts")
    parser.add_argument("--split", choices=["test", "valid"], default="test", help="evaluate.split")
    args = parser.parse_args()
    result = run(args.data_root, args.repeats, args.split)
    print(table(result))
    print(f"\nsaved {save_results('baselines', result)}")


if __name__ == "__main__":
    main()
