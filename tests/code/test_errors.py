"""The error family: every error raised on purpose says whether retrying can help, from its class alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from leadre.config import ConfigError
from leadre.data.tables import DataError, Finding
from leadre.errors import LeadreError, TransientError, UserError, one_line
from leadre.registry.models import RegistryError
from leadre.serve.bundle import BundleError
from leadre.serve.store import StoreError
from leadre.sids.build import SidCollisionError
from leadre.train.model import ModelError
from tests.conftest import REPO, write_params


@pytest.mark.parametrize("error, old_base", [
    (ConfigError, ValueError), (DataError, ValueError), (ModelError, ValueError), (RegistryError, RuntimeError),
    (BundleError, ValueError), (StoreError, ValueError), (SidCollisionError, ValueError),
])
def test_domain_errors_are_user_errors_and_keep_their_old_base(error, old_base):
    # existing `except ValueError` / `except RuntimeError` clauses (ours and users') must still catch them
    assert issubclass(error, UserError) and issubclass(error, old_base)
    assert not issubclass(error, TransientError)


def test_transient_errors_ask_for_another_try():
    assert issubclass(TransientError, LeadreError) and not issubclass(TransientError, UserError)
    assert TransientError.exit_code != UserError.exit_code == 1


def test_the_error_module_stays_light():
    code = "import sys, leadre.errors; print(sorted(m for m in ('pandas', 'torch', 'mlflow', 'pydantic') " \
           "if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_one_line_joins_a_data_errors_findings():
    err = DataError([Finding(file="ads.parquet", rule="value > 0", table="ads", column="ecpm", count=1),
                     Finding(file="users.parquet", rule="unique", table="users", column="user_id", count=2)])
    assert "\n" in str(err)
    text = one_line(str(err))
    assert "\n" not in text and "; " in text
    assert "ads.parquet, column 'ecpm'" in text and "users.parquet, column 'user_id'" in text


def test_one_line_drops_a_parser_caret():
    assert one_line("bad: not valid YAML: mapping values\n  in x, line 1\n    a: b: c\n        ^") == \
        "bad: not valid YAML: mapping values; in x, line 1; a: b: c"


# ------------------------------------------------------------------------------------------------ airflow: retry or not

@pytest.fixture
def airflow_task(monkeypatch):
    """run_local_step outside a DAG run: Airflow's task context stands in as the dict a task would see."""
    import airflow.sdk

    from leadre.config import PARAMS_ENV

    monkeypatch.delenv(PARAMS_ENV, raising=False)
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: {"params": {}, "run_id": "test-run"})


def test_a_user_error_fails_the_airflow_task_without_retries(tmp_path, airflow_task):
    from airflow.sdk.exceptions import AirflowFailException

    from leadre.orchestration.dag_support import run_local_step

    write_params(tmp_path)  # an empty workspace: validate finds no tables (a DataError)
    with pytest.raises(AirflowFailException, match="(?s)validate: .*table file exists"):
        run_local_step("validate", tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("sft: [", encoding="utf-8")  # a ConfigError
    with pytest.raises(AirflowFailException, match="not valid YAML"):
        run_local_step("validate", tmp_path / "params.yaml")


def test_any_other_error_is_left_to_airflow_retries(tmp_path, airflow_task):
    from leadre.orchestration.dag_support import run_local_step

    write_params(tmp_path)  # no evaluation summary yet: a plain FileNotFoundError, which Airflow retries
    with pytest.raises(FileNotFoundError):
        run_local_step("gate", tmp_path / "params.yaml")


def test_the_one_process_retrain_reports_a_user_error_as_the_cli_does(tmp_path):
    (tmp_path / "params.yaml").write_text("sft: [", encoding="utf-8")
    result = subprocess.run([sys.executable, str(REPO / "pipelines" / "retrain.py"), "--params", "params.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: validate: params.yaml: not valid YAML")
