"""`python -m bench.ddp [--rows 8192] [--nproc 2]`: SFT tokens/s of one process against N under torchrun.

Each run is the real command, `torchrun --standalone --nproc_per_node n -m leadre.cli sft`, one CPU thread per
process (gloo between them), on the same rows, model and global batch (`sft.batch_size` is split across the
processes, so both runs take the same optimizer steps). Tokens/s is the step's own `train_tokens_per_second` (all
ranks' non-padding tokens over the training time); the loss curves come from the trainer state. Goal (issue 18):
N=2 ≥ 1.6× one process, the same losses within noise. The workspace needs prompts and S-IDs (`make run`, or the
tiny world's). Interpreting the ratio on a shared machine: the 2-process run needs both cores free.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import save_results

REPO = Path(__file__).resolve().parents[1]


def sft_run(params_file: Path, processes: int, rows: int, out: Path) -> dict:
    """One `leadre sft` under torchrun; its metrics file and its logged losses."""
    settings = {"sft.max_train_examples": rows, "sft.max_eval_examples": 1, "sft.epochs": 1,
                "sft.early_stopping_patience": 0, "sft.checkpoint_every_steps": 0, "model.cpu_threads": 1,
                "sft.out_dir": out / "model", "sft.checkpoint_dir": out / "checkpoints",
                "sft.metrics_file": out / "metrics.json", "tracking.tracking_uri": f"sqlite:///{out / 'mlruns.db'}",
                "tracking.artifact_root": out / "mlartifacts", "tracking.log_models": False}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "leadre.cli", "--params", str(params_file),
               *[arg for key, value in settings.items() for arg in ("-S", f"{key}={value}")], "sft"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{processes} process(es): exit {result.returncode}\n{result.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    state = json.loads(max((out / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    metrics["losses"] = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=8192,
                        help="SFT training rows (512 optimizer steps: fewer leave the fixed start and end costs weighing)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    args = parser.parse_args()

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, args.nproc):
            runs[processes] = sft_run(args.params.resolve(), processes, args.rows, Path(tmp) / str(processes))
    one, many = runs[1], runs[args.nproc]
    ratio = many["train_tokens_per_second"] / one["train_tokens_per_second"]
    print(f"\nSFT, {args.rows} rows, {int(one['global_step'])} steps, one CPU thread per process\n")
    print("| processes | tokens/s | train seconds | train_loss | logged losses |")
    print("|---:|---:|---:|---:|---|")
    for processes, run in runs.items():
        losses = " ".join(f"{loss:.3f}" for loss in run["losses"])
        print(f"| {processes} | {run['train_tokens_per_second']:,.0f} | {run['train_seconds']:.1f} | "
              f"{run['train_loss']:.4f} | {losses} |")
    print(f"\n{args.nproc} processes / 1 process: {ratio:.2f}× (goal ≥ 1.6×)")
    path = save_results("ddp", {"rows": args.rows, "nproc": args.nproc, "ratio": ratio,
                                "runs": {str(k): v for k, v in runs.items()}})
    print(f"raw figures: {path}")


if __name__ == "__main__":
    main()
