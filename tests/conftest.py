"""Shared fixtures: a tiny generated world (made once per session) and per-test workspaces with their own params."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from leadre.config import Params, load_params
from leadre.data.generate import run_generate

REPO = Path(__file__).resolve().parents[1]


def write_params(root: Path, overrides: dict | None = None) -> Params:
    """A params.yaml in `root`, from the repository's, at the tiny scale; paths resolve inside `root`."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["world"]["scale"] = "tiny"
    raw["validation"]["data_docs"] = False
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_params(root / "params.yaml")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The tiny world, generated once; tests copy it rather than change it."""
    params = write_params(tmp_path_factory.mktemp("tiny_world"))
    run_generate(params)
    return params.path(params.data.generated_dir)


@pytest.fixture
def workspace(tmp_path, tiny_world) -> Params:
    """Params rooted in tmp_path, with the tiny world already in data.generated_dir."""
    params = write_params(tmp_path)
    shutil.copytree(tiny_world, params.path(params.data.generated_dir))
    return params
