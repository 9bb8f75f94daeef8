"""SFT and DPO on the tiny world with a very small model: they learn, they resume, and MLflow records every run.

The data steps and one SFT + DPO retrain run once for the session (`trained` in conftest: the slow part); the tests
read what they wrote. Resume and the model factory's error paths use their own small runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leadre.bundle import SID_FILES, bundle_sids
from leadre.sids import sid_tokens, sid_vocabulary
from leadre.tracking import RETRAIN_TAG, dvc_md5, tracking_uri
from leadre.train.checkpointing import COMPLETE_MARKER
from leadre.train.model import (
    ModelError,
    check_causal_lm,
    load_pretrained,
    load_trained,
)
from tests.conftest import RETRAIN, prepared_workspace, write_params


def test_sft_learns_below_the_unigram_baseline(trained):
    params, sft, _ = trained
    assert sft["eval_loss"] < 0.85 * sft["eval_unigram_baseline_loss"], sft
    saved = json.loads((params.path(params.sft.metrics_file)).read_text())
    assert saved["eval_loss"] == pytest.approx(sft["eval_loss"], rel=1e-5)


@pytest.mark.parametrize("completion_only_loss", [True, False])
def test_pretokenised_rows_are_what_sft_trainer_makes_of_raw_rows(prepared_data, completion_only_loss):
    """SFT tokenises its rows in one batched call; TRL, given the raw prompt/completion rows, must train on exactly
    the same token ids and labels (the loss on the response only, or on everything)."""
    from trl import SFTConfig, SFTTrainer

    from leadre.config import load_params
    from leadre.train.data import SFT_COLUMNS, corpus, load_split, tokenized_prompt_completion
    from leadre.train.model import load_model

    params = load_params(prepared_data / "params.yaml")
    with_task = load_split(params, "sft", "train", [*SFT_COLUMNS, "task"], 300, 0)
    rows = with_task.remove_columns("task")
    model, tokenizer = load_model(params.model, corpus(rows, 300), sid_vocabulary(params.sids), 0)
    ours = tokenized_prompt_completion(with_task, tokenizer, completion_only_loss)
    assert ours["task"] == with_task["task"]  # run_sft's unigram baseline keeps the main task's rows by it
    ours = ours.remove_columns("task")
    args = SFTConfig(output_dir=str(prepared_data / "unused"), max_length=params.sft.max_length, report_to=[],
                     completion_only_loss=completion_only_loss, use_cpu=True, bf16=False, shuffle_dataset=False)
    theirs = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer).train_dataset
    given = SFTTrainer(model=model, args=args, train_dataset=ours, processing_class=tokenizer).train_dataset
    assert given["input_ids"] == theirs["input_ids"]
    assert given["labels"] == theirs["labels"]
    assert any(-100 in labels for labels in given["labels"]) == completion_only_loss


def test_saved_model_has_every_sid_token_as_one_token(trained):
    params, _, _ = trained
    model, tokenizer = load_trained(params.path(params.sft.out_dir))
    vocab = sid_vocabulary(params.sids)
    ids = tokenizer.convert_tokens_to_ids(vocab)
    assert len(set(ids)) == len(vocab) and tokenizer.unk_token_id not in ids
    sid = "".join(vocab[i] for i in (0, 64, 128, 192, 256))  # one token per level
    assert tokenizer(sid, add_special_tokens=False)["input_ids"] == tokenizer.convert_tokens_to_ids(sid_tokens(sid))
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    folder = params.path(params.sft.out_dir)
    assert {path.name for path in bundle_sids(folder).iterdir()} == set(SID_FILES)


def test_dpo_prefers_chosen_ads_more_often_than_the_sft_model(trained):
    _, _, dpo = trained
    # held-out pairs (dpo/valid): the chosen ad is engaged with and of higher eCPM than the rejected one. The mean
    # log-prob margin is what DPO optimises and must grow; the share of pairs ranked right is its thresholded, noisier
    # shadow (64 pairs: one pair is 1.6 points) and must not fall (a clean clone once tied it at 42/64 both ways)
    assert dpo["dpo_logp_margin"] > dpo["sft_logp_margin"], dpo
    assert dpo["dpo_preference_accuracy"] >= dpo["sft_preference_accuracy"], dpo
    assert "rewards_margins" in dpo and "rewards_accuracies" in dpo


def test_mlflow_has_one_parent_run_with_sft_and_dpo_nested(trained):
    from mlflow.tracking import MlflowClient

    import mlflow

    params, _, _ = trained
    mlflow.set_tracking_uri(tracking_uri(params))
    client = MlflowClient()
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    assert Path(experiment.artifact_location.removeprefix("file://")).is_relative_to(params.root.resolve())
    runs = client.search_runs([experiment.experiment_id], f"tags.`{RETRAIN_TAG}` = '{RETRAIN}'")
    by_step = {run.data.tags["leadre.step"]: run for run in runs}
    assert set(by_step) == {"retrain", "sft", "dpo"}
    parent = by_step["retrain"].info.run_id
    for step in ("sft", "dpo"):
        run = by_step[step]
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.tags.get("mlflow.source.git.commit")
        # our params, flattened by section, lead the compare view; the trainer's ~170 arguments are one artifact
        assert run.data.params[f"{step}.learning_rate"] == str(getattr(params, step).learning_rate)
        assert "per_device_train_batch_size" not in run.data.params
        arguments = json.loads(Path(client.download_artifacts(run.info.run_id, "training_arguments.json")).read_text())
        assert arguments["learning_rate"] == getattr(params, step).learning_rate
        assert client.get_metric_history(run.info.run_id, "loss"), "no step metrics logged"
        assert any(key.startswith("system/") for key in run.data.metrics), "no system metrics logged"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
        assert {"model/config.json", "model/sids"} <= artifacts
    prompts = params.path(params.prompts.out_dir)
    assert by_step["sft"].data.tags["data.prompts.md5"] == dvc_md5(prompts)
    assert by_step["dpo"].data.tags["data.sft_model.md5"] == dvc_md5(params.path(params.sft.out_dir))
    assert by_step["dpo"].data.metrics["final.dpo_preference_accuracy"] > 0


def test_resume_after_a_kill_mid_epoch_continues_from_the_checkpoint(tmp_path, prepared_data):
    rows, batch = 400, 2
    params = prepared_workspace(tmp_path, prepared_data, {"sft.checkpoint_every_steps": 5, "sft.epochs": 1,
                                                        "sft.max_train_examples": rows, "sft.batch_size": batch,
                                                        "sft.max_eval_examples": 4, "sft.early_stopping_patience": 0})
    total_steps = rows // batch
    checkpoints = params.path(params.sft.checkpoint_dir)
    command = [sys.executable, "-m", "leadre.cli", "--params", str(params.root / "params.yaml"), "sft"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    # the completeness marker is written last: once there is one, kill at once
    while (not list(checkpoints.glob(f"checkpoint-*/{COMPLETE_MARKER}")) and first.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved = sorted(int(p.parent.name.split("-")[1]) for p in checkpoints.glob(f"checkpoint-*/{COMPLETE_MARKER}"))
    assert saved and saved[-1] < total_steps, f"killed too late to test resume (checkpoints {saved})"
    assert not params.path(params.sft.out_dir).exists()

    resumed = subprocess.run(command + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoints / f'checkpoint-{saved[-1]}'}" in resumed.stderr
    state = json.loads((checkpoints / f"checkpoint-{total_steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == total_steps
    logged = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged == sorted(logged) and logged[-1] <= total_steps
    assert (params.path(params.sft.out_dir) / "config.json").exists()


# 10 SFT steps and 4 DPO steps, a checkpoint every 5 (SFT) or 2 (DPO): seconds on the tiny model
SHORT_RUNS = {"sft.checkpoint_every_steps": 5, "sft.epochs": 1, "sft.max_train_examples": 80, "sft.batch_size": 8,
              "sft.max_eval_examples": 4, "sft.early_stopping_patience": 0,
              "dpo.checkpoint_every_steps": 2, "dpo.epochs": 1, "dpo.max_train_examples": 32, "dpo.batch_size": 8,
              "dpo.max_eval_examples": 8}


def checkpoint_steps(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*"))


def test_resume_skips_a_checkpoint_torn_by_a_kill_during_its_save(tmp_path, prepared_data, caplog):
    from leadre.train.sft import run_sft

    params = prepared_workspace(tmp_path, prepared_data, SHORT_RUNS)
    run_sft(params)
    checkpoints = params.path(params.sft.checkpoint_dir)
    assert checkpoint_steps(checkpoints) == [5, 10]
    # the state a kill during the save of checkpoint-10 leaves: its tokenizer and weights half written, the
    # optimizer and trainer state never reached
    torn = checkpoints / "checkpoint-10"
    for name in ("tokenizer.json", "model.safetensors"):
        data = (torn / name).read_bytes()
        (torn / name).write_bytes(data[:len(data) // 2])
    for name in ("optimizer.pt", "scheduler.pt", "trainer_state.json", COMPLETE_MARKER):
        (torn / name).unlink(missing_ok=True)

    with caplog.at_level("INFO", logger="leadre"):
        metrics = run_sft(params, resume=True)
    assert f"{torn} is incomplete" in caplog.text
    assert f"resuming from {checkpoints / 'checkpoint-5'}" in caplog.text
    state = json.loads((torn / "trainer_state.json").read_text())
    assert state["global_step"] == metrics["global_step"] == 10 and (torn / COMPLETE_MARKER).is_file()
    assert (params.path(params.sft.out_dir) / "model.safetensors").is_file()


def test_checkpoints_land_beside_params_yaml_whatever_the_working_directory(tmp_path, prepared_data, monkeypatch,
                                                                            caplog):
    from leadre.train.dpo import run_dpo
    from leadre.train.sft import run_sft

    params = prepared_workspace(tmp_path / "workspace", prepared_data, SHORT_RUNS)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_sft(params)
    run_dpo(params)
    for cfg in (params.sft, params.dpo):
        assert checkpoint_steps(params.path(cfg.checkpoint_dir)), f"no checkpoint in {params.path(cfg.checkpoint_dir)}"
        assert not (elsewhere / cfg.checkpoint_dir).exists()
    dpo_checkpoints = params.path(params.dpo.checkpoint_dir)
    last = dpo_checkpoints / f"checkpoint-{checkpoint_steps(dpo_checkpoints)[-1]}"
    with caplog.at_level("INFO", logger="leadre"):
        run_dpo(params, resume=True)
    assert f"resuming from {last}" in caplog.text


def test_a_hub_style_model_folder_gets_sid_tokens_and_lora(tmp_path, prepared_data):
    """Any causal-LM folder works as base_model: here a small Qwen2 written with save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from leadre.train.model import train_tokenizer
    from leadre.train.sft import run_sft

    folder = tmp_path / "my-qwen"
    tokenizer = train_tokenizer(["a small corpus of ad words for a test tokenizer"] * 50, 300)
    model = AutoModelForCausalLM.from_config(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, tie_word_embeddings=True))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    params = prepared_workspace(tmp_path / "ws", prepared_data, {"model.base_model": str(folder),
                                                             "sft.max_train_examples": 32, "sft.epochs": 1})
    vocab = sid_vocabulary(params.sids)
    loaded, loaded_tokenizer = load_pretrained(str(folder), vocab)
    old = model.get_input_embeddings().weight
    new = loaded.get_input_embeddings().weight
    assert new.shape[0] == len(tokenizer) + len(vocab) == len(loaded_tokenizer)
    # new rows start near the mean of the old ones, not as noise of arbitrary scale
    assert torch.allclose(new[len(tokenizer):].mean(0), old.mean(0), atol=0.05)

    metrics = run_sft(params)
    meta = json.loads((params.path(params.sft.out_dir) / "leadre_model.json").read_text())
    assert meta["lora_merged"] is True and meta["base_model"] == str(folder)
    merged, _ = load_trained(params.path(params.sft.out_dir))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert metrics["global_step"] > 0


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "nowhere", "no config.json"),
    (lambda root: _encoder_folder(root), "no causal-LM head"),
])
def test_base_model_errors_are_clear(tmp_path, make, message):
    with pytest.raises(ModelError, match=message):
        check_causal_lm(str(make(tmp_path)))


def test_cli_reports_a_missing_base_model_without_a_traceback(tmp_path):
    params = write_params(tmp_path, {"model.base_model": str(tmp_path / "missing-model")})
    result = subprocess.run([sys.executable, "-m", "leadre.cli", "--params", str(params.root / "params.yaml"), "sft"],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 1
    assert "missing-model" in result.stderr and "Traceback" not in result.stderr


def _encoder_folder(root: Path) -> Path:
    from transformers import DistilBertConfig

    folder = root / "distilbert"  # an encoder: transformers has no causal-LM head for it
    DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32).save_pretrained(folder)
    return folder



def test_training_log_outside_a_terminal_is_lines_not_dicts_bars_or_library_warnings(tmp_path, prepared_data):
    params = prepared_workspace(tmp_path, prepared_data, {**SHORT_RUNS, "sft.max_eval_examples": 8})
    command = [sys.executable, "-m", "leadre.cli", "--params", str(params.root / "params.yaml"), "sft"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "\r" not in output, "progress bars redraw with carriage returns"
    assert not [line for line in output.splitlines() if line.lstrip().startswith("{'")], output[-3000:]
    for line in ("sft step 5/10 loss", "sft eval at step 5: eval_loss", "sft trained 10 steps in"):
        assert line in output, output[-3000:]
    # the tiny model's head is tied: reloading the best checkpoint "misses" lm_head.weight, which is the embedding
    for noise in ("Warning", "pin_memory", "lm_head.weight", "gradient_checkpointing"):
        assert noise not in output, output[-3000:]
