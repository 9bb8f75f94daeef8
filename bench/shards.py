"""`python -m bench.shards`: prompts and near-line as 2 shards in parallel (2 processes) against 1 process.

On a generated world (`--scale`, tiny by default): validate, S-IDs, prompts, tiny SFT + DPO, evaluate, gate and
promote run once so that near-line has a champion (for `--steps prompts` alone, validation and a synthetic S-ID table
as `bench.prompts` writes: no model is needed, so the 1M world prepares in minutes); then each data-parallel step is
timed through the real CLI:

- 1 shard: `leadre prompts build` (or `leadre nearline`), one process;
- 2 shards: `--shard 0/2` and `--shard 1/2` started together, then `--merge 2`.

Every process runs one thread (prompts.workers 1, model.cpu_threads 1), so the comparison is processes on cores,
not threads inside one process. users/s counts the whole wall time, process start-up and data loading included;
the merge's share is its seconds over the sharded wall time (shards + merge). `--rounds N` repeats the three
timings N times and reports medians with their range (a shared VM's timings drift by a fifth within minutes);
`--params FILE` times an existing workspace instead of preparing one (prompts needs validated data and S-IDs,
near-line a champion too).
Targets (issue 18): 2 shards ≥ 1.7× the users/s of 1 shard on 2 cores; merge ≤ 10% of the sharded step's time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench import save_results

TARGET_SPEEDUP, TARGET_MERGE_SHARE = 1.7, 0.10
COMMANDS = {"prompts": ("prompts", "build"), "nearline": ("nearline",)}
PASS = {"gate.min_relative_lift": -2.0, "gate.guardrails": {}}  # the tiny model must become champion, even at NDCG 0


def prepare(root: Path, scale: str, model: str = "test", nearline_users: int = 0, champion: bool = True) -> Path:
    """A workspace with a champion: the retrain's steps once, tiny training settings. `model`: "test" is the test
    suite's model (hidden 32, 2 layers: fast to generate with), "default" the shape params.yaml ships. Without
    `champion`, only what prompts read: validated tables and a synthetic S-ID table."""
    import pandas as pd

    from bench.prompts import write_synthetic_sids
    from leadre.config import load_params
    from leadre.data.generate import run_generate
    from leadre.steps import run_step
    from tests.conftest import FAST_TRAINING, write_params

    repo_params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))
    baselines = repo_params["evaluate"]["baselines"]
    # the champion only has to exist: SASRec would train on every user of a large world for many minutes
    training = FAST_TRAINING if model == "test" else {k: v for k, v in FAST_TRAINING.items() if k != "model.tiny"}
    settings = {**training, "world.scale": scale, "prompts.workers": 1, "evaluate.max_users": 60,
                "evaluate.baselines": {name: s for name, s in baselines.items() if name != "sasrec"},
                "nearline.max_users": nearline_users}
    params = write_params(root, settings)
    run_generate(params)
    users = len(pd.read_parquet(params.path(params.data.generated_dir) / "users.parquet", columns=["user_id"]))
    # at least 8 chunks of users, so that 2 shards split the prompts evenly; params.yaml's chunk size where it gives more
    chunk = min(repo_params["prompts"]["users_per_chunk"], max(1, -(-users // 8)))
    write_params(root, {**settings, "prompts.users_per_chunk": chunk})
    params_file = root / "params.yaml"
    if not champion:
        run_step("validate", params_file)
        write_synthetic_sids(load_params(params_file))
        return params_file
    for step in ("validate", "sids", "prompts", "sft", "dpo", "evaluate"):
        print(f"  prepare: {step}", flush=True)
        run_step(step, params_file)
    run_step("gate", params_file, PASS)
    run_step("promote", params_file)
    return params_file


def _leadre(params_file: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "leadre.cli", "--params", str(params_file), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait(*procs: subprocess.Popen) -> list[str]:
    outputs = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{' '.join(proc.args[3:])} exited {proc.returncode}: {err[-3000:]}")
        outputs.append(out)
    return outputs


def _users(step: str, output: str, params_file: Path) -> int:
    if step == "nearline":  # "near-line: N users from model version …"
        return int(output.split("near-line: ", 1)[1].split(" users", 1)[0])
    from leadre.config import load_params
    from leadre.data.tables import read_tables

    params = load_params(params_file)
    return len(read_tables(params.path(params.data.validated_dir), names=("users",))["users"])


def time_step(step: str, params_file: Path, shards: int = 2, rounds: int = 1) -> dict:
    """The step's timings, medians over `rounds` rounds of 1 process / `shards` processes / merge, with each
    ratio's range."""
    runs = [_time_once(step, params_file, shards) for _ in range(rounds)]
    result = {key: float(np.median([r[key] for r in runs])) for key in runs[0] if key not in ("users", "shards")}
    result |= {"users": runs[0]["users"], "shards": shards, "rounds": rounds,
               "speedup_range": [min(r["speedup"] for r in runs), max(r["speedup"] for r in runs)],
               "merge_share_range": [min(r["merge_share"] for r in runs), max(r["merge_share"] for r in runs)],
               "runs": runs}
    return result


def _time_once(step: str, params_file: Path, shards: int) -> dict:
    command = COMMANDS[step]
    started = time.perf_counter()
    (output,) = _wait(_leadre(params_file, *command))
    one = time.perf_counter() - started
    users = _users(step, output, params_file)

    started = time.perf_counter()
    _wait(*[_leadre(params_file, *command, "--shard", f"{i}/{shards}") for i in range(shards)])
    parallel = time.perf_counter() - started
    started = time.perf_counter()
    _wait(_leadre(params_file, *command, "--merge", str(shards)))
    merge = time.perf_counter() - started
    sharded = parallel + merge
    return {"users": users, "one_shard_seconds": one, "shards": shards, "shards_seconds": parallel,
            "merge_seconds": merge, "users_per_second_one": users / one, "users_per_second_sharded": users / sharded,
            "speedup": one / sharded, "merge_share": merge / sharded}


def report(result: dict) -> str:
    lines = [f"scale {result['scale']}, {result.get('model', 'test')} model, {result['cpus']} CPUs "
             f"(load average {result['load_average']}); medians over {result['rounds']} round(s), [range]",
             "| step | users | 1 process | 2 shards | merge | 1 process users/s | 2 shards + merge users/s | speedup "
             "| merge share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for step, r in result["steps"].items():
        (s_lo, s_hi), (m_lo, m_hi) = r["speedup_range"], r["merge_share_range"]
        lines.append(f"| {step} | {r['users']:,} | {r['one_shard_seconds']:.1f} s | {r['shards_seconds']:.1f} s | "
                     f"{r['merge_seconds']:.1f} s | {r['users_per_second_one']:.1f} | "
                     f"{r['users_per_second_sharded']:.1f} | {r['speedup']:.2f}× [{s_lo:.2f}, {s_hi:.2f}] "
                     f"(target ≥ {TARGET_SPEEDUP}) | {r['merge_share']:.1%} [{m_lo:.1%}, {m_hi:.1%}] "
                     f"(target ≤ {TARGET_MERGE_SHARE:.0%}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="tiny", help="world.scale of the generated world (params.yaml's scales)")
    parser.add_argument("--steps", default="prompts,nearline", help="comma-separated: prompts, nearline")
    parser.add_argument("--model", choices=("test", "default"), default="test",
                        help="near-line's model: the test suite's (fast) or the shape params.yaml ships")
    parser.add_argument("--nearline-users", type=int, default=0, help="nearline.max_users (0 = every active user)")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (printed)")
    parser.add_argument("--rounds", type=int, default=1, help="timing rounds; medians and ranges are reported")
    parser.add_argument("--params", type=Path, help="time this workspace's params file instead of preparing one")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="leadre-bench-shards-"))
    try:
        if args.params:
            params_file = args.params.resolve()
            scale = yaml.safe_load(params_file.read_text(encoding="utf-8"))["world"]["scale"]
        else:
            champion = "nearline" in args.steps.split(",")
            print(f"preparing a {args.scale} world{' with a champion' if champion else ''} in {root} …", flush=True)
            params_file = prepare(root, args.scale, args.model, args.nearline_users, champion)
            scale = args.scale
        steps = {step: time_step(step, params_file, rounds=args.rounds) for step in args.steps.split(",")}
        result = {"scale": scale, "model": args.model, "nearline_users": args.nearline_users,
                  "cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()],
                  "rounds": args.rounds, "steps": steps}
        print(report(result))
        print(json.dumps(result, indent=2))
        print(f"\nsaved {save_results('shards', result)}")
    finally:
        if args.keep:
            print(f"workspace kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
