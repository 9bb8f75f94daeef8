"""`leadre sft` under `torchrun --nproc_per_node 2`: two CPU processes (gloo) train one model data-parallel.

What a user relies on: the launch works with the plain command, the model learns, both processes take part in
every step, and everything a step writes once (the model bundle, the MLflow run, the metrics file, the checkpoint
markers, the final summary line) is written once, by rank 0, while the other rank exits 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from leadre.tracking import RETRAIN_TAG, tracking_uri
from leadre.train.checkpointing import COMPLETE_MARKER
from tests.conftest import prepared_workspace

# 10 optimizer steps of 8 rows (4 per process), a checkpoint and a loss line every 5, a few held-out rows
TWO_PROCESS_RUN = {"sft.epochs": 1, "sft.max_train_examples": 80, "sft.batch_size": 8, "sft.checkpoint_every_steps": 5,
                   "sft.logging_steps": 5, "sft.max_eval_examples": 8, "sft.early_stopping_patience": 0}


def test_two_processes_train_one_model_and_only_rank_0_writes(tmp_path, prepared_data):
    from mlflow.tracking import MlflowClient

    import mlflow

    params = prepared_workspace(tmp_path, prepared_data, TWO_PROCESS_RUN)
    retrain = "ddp-test"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "LEADRE_RETRAIN_ID": retrain}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "leadre.cli", "--params", str(params.root / "params.yaml"), "sft"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]

    # both ranks trained: one RNG state per process in each checkpoint, 10 steps of the global batch of 8
    checkpoints = params.path(params.sft.checkpoint_dir)
    last = checkpoints / "checkpoint-10"
    assert {p.name for p in last.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert sorted(p.parent.name for p in checkpoints.glob(f"checkpoint-*/{COMPLETE_MARKER}")) == [
        "checkpoint-10", "checkpoint-5"]
    state = json.loads((last / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert state["global_step"] == 10 and len(losses) == 2
    assert losses[-1] < losses[0], f"the loss did not fall: {losses}"

    # one MLflow run for the step, which names the bundle and says it ran on two processes
    mlflow.set_tracking_uri(tracking_uri(params))
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], f"tags.`{RETRAIN_TAG}` = '{retrain}'")
    steps = sorted(run.data.tags["leadre.step"] for run in runs)
    assert steps == ["retrain", "sft"]
    run = next(run for run in runs if run.data.tags["leadre.step"] == "sft")
    assert run.data.params["leadre.processes"] == "2"
    logged = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model/leadre_model.json",
                                                 dst_path=str(tmp_path / "logged"))
    assert Path(logged).read_text() == (params.path(params.sft.out_dir) / "leadre_model.json").read_text()
    assert json.loads(params.path(params.sft.metrics_file).read_text())["global_step"] == 10

    # the step's summary once (rank 1 exits without one), progress as lines rather than dicts and redraws
    assert output.count("sft done:") == 1, output[-4000:]
    assert "sft step 5/10 loss" in output
    assert "{'loss'" not in output and "\r" not in output
