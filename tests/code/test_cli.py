"""The `leadre` command as a user runs it: exit codes and messages, in a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import write_params

LEADRE = str(Path(sys.executable).with_name("leadre"))


def _leadre(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEADRE_PARAMS": str(cwd / "params.yaml")}
    return subprocess.run([LEADRE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_generate_then_validate(tmp_path):
    write_params(tmp_path)
    generated = _leadre(tmp_path, "data", "generate")
    assert generated.returncode == 0, generated.stderr
    assert "'users': 400" in generated.stdout
    validated = _leadre(tmp_path, "data", "validate")
    assert validated.returncode == 0, validated.stderr
    assert "validation passed" in validated.stdout
    assert (tmp_path / "data" / "validated" / "manifest.json").exists()


def test_bad_data_exits_non_zero_with_the_rule(tmp_path, tiny_world):
    write_params(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_world.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "users.parquet").write_bytes(b"")
    result = _leadre(tmp_path, "data", "validate", "--source", str(bad))
    assert result.returncode == 1
    assert "users.parquet: rule 'file is not empty' broken" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "validated").exists()


def test_bad_override_exits_2_naming_the_key(tmp_path):
    write_params(tmp_path)
    result = _leadre(tmp_path, "--set", "world.scal=tiny", "data", "generate")
    assert result.returncode == 2
    assert "unknown key 'scal'" in result.stderr


def test_help_is_fast_because_steps_import_lazily(tmp_path):
    # Airflow parses DAGs and users run --help constantly; neither should pay for GX, torch or MLflow imports.
    code = "import sys, leadre.cli; print(sorted(m for m in ('great_expectations', 'torch', 'mlflow') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
