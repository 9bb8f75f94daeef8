"""Training on CPU is reproducible: the same params, data and seed on the same machine give the same model.

Without this a figure from one run cannot be checked by another, and a gate decision could flip on a rerun.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.conftest import file_digests, prepared_workspace


def _weights_digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_same_params_and_seed_train_the_same_model(trained, prepared_data, tmp_path):
    """And write byte-identical outputs: DVC hashes the model folder and the metrics file, so a run id, wall time or
    path inside either would make `dvc repro` re-run DPO, evaluation, the gate and promotion after every SFT rerun."""
    from leadre.train.sft import run_sft

    params, first, _ = trained
    again = prepared_workspace(tmp_path, prepared_data)
    second = run_sft(again)
    for metric in ("train_loss", "eval_loss", "global_step"):
        assert second[metric] == first[metric], metric
    assert _weights_digest(again.path(again.sft.out_dir)) == _weights_digest(params.path(params.sft.out_dir))
    assert file_digests(again.path(again.sft.out_dir)) == file_digests(params.path(params.sft.out_dir))
    assert again.path(again.sft.metrics_file).read_text() == params.path(params.sft.metrics_file).read_text()


def test_another_seed_trains_another_model(trained, prepared_data, tmp_path):
    """The check above can fail: the seed reaches the weights (else 'reproducible' would mean 'seed ignored')."""
    from leadre.train.sft import run_sft

    _, first, _ = trained
    other = prepared_workspace(tmp_path, prepared_data, {"sft.seed": 7})
    assert run_sft(other)["train_loss"] != pytest.approx(first["train_loss"], abs=1e-9)
