"""Outputs depend only on the code, params and data: two clones in different folders produce the same bytes.

DVC decides what to re-run, push and pull by the hashes in dvc.lock; an absolute path, a wall time or a value that
varies with how texts were batched inside an output makes every clone (and every run) look like new data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import yaml

from tests.conftest import file_digests
from tests.pipeline.test_dvc import _run, copy_repository

DATA_STAGES = ("generate", "validate", "sids", "prompts")


def _copy_repository(root: Path) -> Path:
    copy_repository(root, {"validation.data_docs": False})
    return root


def _metrics_files(root: Path) -> set[str]:
    """Uncached metrics files may hold the run's wall time; every other output must not."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    files = set()
    for stage in DATA_STAGES:
        for entry in stages[stage].get("metrics", []):
            name = entry if isinstance(entry, str) else next(iter(entry))
            section, key = name.removeprefix("${").removesuffix("}").split(".")
            files.add(params[section][key])
    return files


def _out_hashes(root: Path) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    skipped = _metrics_files(root)
    return {f"{stage}: {out['path']}": out["md5"] for stage in DATA_STAGES for out in lock[stage].get("outs", [])
            if out["path"] not in skipped}


def test_two_clones_in_different_folders_produce_identical_outputs(tmp_path: Path):
    first = _copy_repository((tmp_path / "a").resolve())
    second = _copy_repository((tmp_path / "somewhere" / "else" / "b").resolve())
    for clone in (first, second):
        _run(clone, "dvc", "repro", "prompts")
    hashes_first, hashes_second = _out_hashes(first), _out_hashes(second)
    assert set(hashes_first) == set(hashes_second) and len(hashes_first) >= 5
    differing = [out for out in hashes_first if hashes_first[out] != hashes_second[out]]
    # name the files that differ, not just the folder, so a failure says where the non-determinism is
    files = {out: [name for name, digest in file_digests(first / out.split(": ")[1]).items()
                   if file_digests(second / out.split(": ")[1]).get(name) != digest] for out in differing}
    assert not differing, f"outputs differ between two clones: {files}"
    assert str(first) not in (first / "data/validated/manifest.json").read_text()


def test_an_ads_embedding_does_not_depend_on_the_texts_encoded_beside_it():
    """The embedding cache holds vectors encoded in whatever batches earlier runs formed; only if a text's vector is
    a function of the text alone does a warm cache give the bytes a cold run gives."""
    from leadre.sids.encoder import encode_texts, resolve_encoder_dir

    folder = resolve_encoder_dir("builtin:minilm")
    texts = [f"Ad {i}. " + "A phone plan with plenty of data and calls. " * (1 + i % 4) + "Industry: telecom/mobile"
             for i in range(24)]
    together = encode_texts(folder, texts, batch_size=16)
    alone = np.stack([encode_texts(folder, [text], batch_size=16)[0] for text in texts[:6]])
    reversed_small_batches = encode_texts(folder, texts[::-1], batch_size=3)[::-1]
    assert together.tobytes()[: alone.nbytes] == alone.tobytes()
    assert together.tobytes() == reversed_small_batches.tobytes()


def test_validating_the_same_data_twice_writes_the_same_tracked_outputs_data_docs_included(workspace):
    """Great Expectations' data docs carry each run's id and time: a report to read, not an output DVC hashes (the
    clone test above turns them off, so it cannot see this)."""
    from leadre.config import load_params
    from leadre.data.validate import run_validate
    from leadre.orchestration.dag_support import step_files

    params = load_params(workspace.root / "params.yaml", {"validation.data_docs": True})
    params_file = params.root / "params.yaml"
    outs = [Path(out) for out in step_files("validate", yaml.safe_load(params_file.read_text()), params_file)]
    digests = []
    for _ in range(2):
        run_validate(params)
        digests.append({str(out.relative_to(params.root)): file_digests(out) if out.is_dir()
                        else hashlib.md5(out.read_bytes()).hexdigest() for out in outs})
    assert (params.path(params.validation.reports_dir) / "data_docs").is_dir()  # the docs are still written
    assert [out for out in digests[0] if digests[0][out] != digests[1][out]] == []
