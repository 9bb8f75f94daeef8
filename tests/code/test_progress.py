"""Progress outside a terminal: lines a person reads in a log file, not a bar redrawn with carriage returns."""

import logging
import os
import shutil
import subprocess
import sys

from leadre import runtime
from tests.conftest import write_params


def test_outside_a_terminal_progress_is_a_log_line_every_few_seconds(monkeypatch, caplog):
    readings = iter([1.0, 4.0, 11.0, 12.0])  # one per update; the first (after loading) starts the rate's clock
    monkeypatch.setattr(runtime, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="leadre.progress"):
        with runtime.progress(400, "encode ads", "text", every_seconds=10, clock=lambda: next(readings)) as bar:
            for _ in range(4):
                bar.update(100)
    lines = [r.getMessage() for r in caplog.records]
    # 11 s is 10 s after the first update; the end always gets its line; 4 s gets none
    assert lines == ["encode ads: 300/400 texts (75%), 20.0 texts/s, 5 s left",
                     "encode ads: 400/400 texts (100%), 27.3 texts/s, 0 s left"]
    assert not any("\r" in line for line in lines)


def test_at_a_terminal_progress_is_a_tqdm_bar(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setattr(runtime, "interactive", lambda: True)
    with runtime.progress(3, "encode ads", "text") as bar:
        assert isinstance(bar, tqdm)


def test_a_single_update_that_finishes_logs_one_line_without_a_rate(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="leadre.progress"):
        with runtime.progress(50, "encode ads", "text", clock=lambda: 3.0) as bar:
            bar.update(50)
    assert [r.getMessage() for r in caplog.records] == ["encode ads: 50/50 texts (100%)"]


def test_a_step_writing_to_a_log_shows_no_library_bars(tmp_path, validated):
    """`leadre sids build` with its output going to a file, as under make run, Airflow or a pod: none of the Hugging
    Face libraries' carriage-return bars (transformers' "Loading weights" when the encoder loads)."""
    params = write_params(tmp_path)
    shutil.copytree(validated, params.path(params.data.validated_dir))
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")}
    done = subprocess.run([sys.executable, "-m", "leadre.cli", "--params", str(tmp_path / "params.yaml"),
                           "sids", "build"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "semantic IDs built" in done.stdout
    assert "Loading weights" not in done.stderr and "\r" not in done.stderr


def test_training_writes_a_step_line_every_few_seconds_and_every_evaluation(caplog):
    """The default SFT logs a step every ~1.3 s on 2 cores; a line each made the training alone 41 kB of make run's
    log. The first step, each evaluation and the summary always get a line; other steps one per 10 s at most."""
    from types import SimpleNamespace

    from leadre.train.progress import ProgressLines

    readings = iter([0.0] + [1.5 * i for i in range(1, 16)])  # train begins at 0, then a logging step every 1.5 s
    lines = ProgressLines("sft", every_seconds=10, clock=lambda: next(readings))
    state = SimpleNamespace(global_step=0, max_steps=150, num_input_tokens_seen=0, is_world_process_zero=True)
    lines.on_train_begin(None, state, None)
    with caplog.at_level(logging.INFO, logger="leadre.train"):
        for i in range(1, 16):
            state.global_step, state.num_input_tokens_seen = 10 * i, 1500 * i
            logs = {"eval_loss": 1.5} if i == 8 else {"loss": 3.0 - 0.1 * i, "learning_rate": 1e-3}
            lines.on_log(None, state, None, logs=logs)
    written = [r.getMessage() for r in caplog.records]
    # step 10 at 1.5 s (the first); the evaluation at 12 s; step 90 at 13.5 s, the first 10 s after step 10's line;
    # none of steps 100-150 (15-22.5 s) is 10 s after step 90's
    assert [w.split(" loss")[0] for w in written] == ["sft step 10/150", "sft eval at step 80: eval_loss 1.5",
                                                      "sft step 90/150"]
    assert "1.0k tok/s" in written[2]  # tokens since the previous step line over the seconds since it


def test_rq_vae_training_logs_lines_not_a_redrawn_bar(monkeypatch, caplog, capfd):
    """`sids.method: rq_vae` trains for `rqvae.epochs` epochs; outside a terminal that is log lines, as every other
    long loop gives, not tqdm's carriage-return redraws (one each epoch in make run's log)."""
    import numpy as np

    from leadre.sids.quantize import RqVae

    monkeypatch.setattr(runtime, "interactive", lambda: False)
    vae = RqVae(levels=2, codebook_size=4, latent_dim=4, hidden_dim=8, epochs=3, learning_rate=1e-3, commitment=0.25,
                batch_size=16, seed=0, kmeans_iterations=2)
    with caplog.at_level(logging.INFO, logger="leadre.progress"):
        vae.fit(np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32))
    assert "\r" not in capfd.readouterr().err
    assert [r.getMessage().split(" (")[0] for r in caplog.records][-1] == "train rq-vae: 3/3 epochs"
