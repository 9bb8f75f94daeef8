"""The `leadre` command as a user runs it: exit codes and messages, in a separate process."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from leadre import cli
from leadre.evaluate import RUN_RECORD
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


def test_bad_override_exits_1_naming_the_key(tmp_path):
    write_params(tmp_path)
    result = _leadre(tmp_path, "data", "generate", "--set", "world.scal=tiny")
    assert result.returncode == 1
    assert result.stderr == "error: override: unknown key 'world.scal' — did you mean 'world.scale'?\n"


def test_help_is_fast_because_steps_import_lazily(tmp_path):
    # Airflow parses DAGs and users run --help constantly; neither should pay for GX, torch or MLflow imports.
    code = "import sys, leadre.cli; print(sorted(m for m in ('great_expectations', 'torch', 'mlflow') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_help_lists_the_pipeline_in_the_order_the_data_flows_then_the_tools():
    from leadre.steps import STEPS

    result = CliRunner().invoke(cli.app, ["--help"], prog_name="leadre", terminal_width=100)
    pipeline_panel, tools_panel = result.stdout.split("Pipeline steps, in the order")[1].split("Serving and tools")
    listed = [line.split()[1] for line in pipeline_panel.splitlines() if line.startswith("│ ") and line[2:3].isalpha()]
    assert listed[:3] == ["data", "sids", "prompts"]
    assert listed == list(dict.fromkeys(step.command[0] for step in STEPS.values()))
    assert "status" in tools_panel and "serve" in tools_panel and " sft " not in tools_panel


def test_help_imports_no_pandas_or_pyarrow():
    # the command table is built from leadre.steps at import: it must not drag in a step's (data) libraries
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "leadre.cli", "--help"], capture_output=True,
                            text=True, check=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "Pipeline steps" in result.stdout
    assert not imported & {"pandas", "pyarrow", "numpy", "torch", "mlflow", "great_expectations"}, sorted(imported)


# ------------------------------------------------------------------------------------------------ every error one line

def _subcommands(command=None, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable subcommand of `leadre`, from the Typer app itself: a new command is covered without a test edit."""
    command = command or typer.main.get_command(cli.app)
    if not hasattr(command, "commands"):
        return [path]
    return [leaf for name, sub in sorted(command.commands.items()) for leaf in _subcommands(sub, (*path, name))]


def _command(path: tuple[str, ...]):
    command = typer.main.get_command(cli.app)
    for name in path:
        command = command.commands[name]
    return command


def _invocation(path: tuple[str, ...]) -> list[str]:
    """The subcommand with a placeholder for each required argument (a folder that does not exist)."""
    required = [p for p in _command(path).params if p.param_type_name == "argument" and p.required]
    return [*path, *("no-such-folder" for _ in required)]


SUBCOMMANDS = _subcommands()
# the empty workspace is not an error for these: they make their own input, or have nothing to do yet
SUCCEED_WITHOUT_INPUTS = {
    ("data", "generate"): "generates the world it needs",
    ("serve",): "serves the fallback until a champion exists (and would not return)",
    ("status",): "a report: says what is not there yet",
}


def _invoke(cwd: Path, *args: str):
    previous = Path.cwd()
    os.chdir(cwd)  # relative inputs (the placeholder folder, ./params.yaml) resolve in the workspace
    try:
        return CliRunner().invoke(cli.app, list(args), prog_name="leadre")
    finally:
        os.chdir(previous)


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()  # log records may come first (MLflow logs its own)
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr
    for needle in needles:
        assert needle in result.stderr


def test_the_walk_finds_every_subcommand():
    assert {("data", "generate"), ("data", "import"), ("data", "validate"), ("sids", "build"), ("sids", "assign"),
            ("prompts", "build"), ("sft",), ("dpo",), ("recommend",), ("evaluate",), ("gate",), ("promote",),
            ("rollback",), ("nearline",), ("serve",)} <= set(SUBCOMMANDS)
    assert set(SUCCEED_WITHOUT_INPUTS) <= set(SUBCOMMANDS)


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=" ".join)
def test_a_bad_override_after_the_subcommand_is_one_line_with_the_reason(tmp_path, path):
    write_params(tmp_path)
    result = _invoke(tmp_path, *_invocation(path), "-S", "sft.epochs=two")
    _assert_one_line_error(result, "sft.epochs", "valid number", "'two'")


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=" ".join)
def test_a_params_file_that_is_not_yaml_is_one_line(tmp_path, path):
    (tmp_path / "params.yaml").write_text("world: {scale: tiny\nsft: [", encoding="utf-8")
    result = _invoke(tmp_path, "--params", "params.yaml", *_invocation(path))
    _assert_one_line_error(result, "params.yaml: not valid YAML")


@pytest.mark.parametrize("path", [p for p in SUBCOMMANDS if p not in SUCCEED_WITHOUT_INPUTS], ids=" ".join)
def test_a_missing_input_is_one_line(tmp_path, path):
    write_params(tmp_path)
    result = _invoke(tmp_path, "--params", "params.yaml", *_invocation(path))
    _assert_one_line_error(result)


def test_no_subcommand_reuses_a_global_option_name():
    # global options are moved in front of the subcommand wherever they appear, so a clash would steal its option
    top = typer.main.get_command(cli.app)
    global_names = {n for p in top.params for n in (*p.opts, *p.secondary_opts)} - {"--help"}
    for path in SUBCOMMANDS:
        own = {n for p in _command(path).params for n in (*p.opts, *p.secondary_opts)}
        assert not own & global_names, path


def test_a_usage_error_is_one_line_naming_the_help(tmp_path):
    write_params(tmp_path)
    result = _invoke(tmp_path, "sft", "--no-such-option")
    _assert_one_line_error(result, "No such option: --no-such-option", "`leadre sft --help`")


def test_version(tmp_path):
    result = _leadre(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.startswith("leadre ")


def test_an_unexpected_error_is_one_line_and_the_traceback_needs_verbose(tmp_path):
    write_params(tmp_path)
    quiet = _leadre(tmp_path, "data", "generate", "--scale", "nope")
    assert quiet.returncode == 1
    assert quiet.stderr.splitlines() == [
        "error: ValueError: unknown scale 'nope'; params.yaml defines ['100k', '1m', 'default', 'tiny'] "
        "(run with --verbose for the traceback)"]
    loud = _leadre(tmp_path, "data", "generate", "--scale", "nope", "--verbose")
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr and loud.stderr.splitlines()[-1].startswith("error: ValueError: unknown scale")


def test_a_missing_file_names_the_step_that_writes_it(tmp_path):
    write_params(tmp_path)
    result = _invoke(tmp_path, "--params", "params.yaml", "gate")
    _assert_one_line_error(result, f"{tmp_path / 'reports' / 'evaluation' / 'summary.json'}: not found "
                                   "(run `leadre evaluate` first)")


def test_promote_force_reaches_the_registry_or_says_it_cannot(tmp_path):
    from leadre.registry.promote import run_promote

    write_params(tmp_path)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "gate.json").write_text('{"passed": false, "reasons": ["test"], '
                                                     '"challenger_version": null}')
    result = _invoke(tmp_path, "--params", "params.yaml", "promote", "--force")
    if "force" in inspect.signature(run_promote).parameters:  # the registry decides; the CLI only passes it on
        assert "No such option" not in result.stderr and "cannot force" not in result.stderr
    else:
        _assert_one_line_error(result, "promote --force")


# ------------------------------------------------------------------------------------------------ `leadre status`


def test_status_after_a_failed_first_gate_says_what_happened_where_to_look_and_what_next(tmp_path, monkeypatch):
    """What `make run` ends with on a fresh clone whose gate failed: the decision and its reason, the report, the
    retrain's MLflow run, the labelled fallback being served, and the next command (with the doc to read)."""
    from leadre.io import write_json
    from leadre.serve.service import store_url
    from leadre.serve.status import GATE_FAILED_DOC
    from leadre.serve.store import fallback_label, open_store
    from leadre.tracking import RETRAIN_ENV, step_run

    params = write_params(tmp_path)
    reason = "ndcg@10 0.0900 vs the itemknn's 0.0950: lift -5.26%; not above the +0.00% required"
    write_json(params.path(params.gate.decision_file), {"passed": False, "reference": "itemknn",
                                                        "reference_kind": "baseline", "challenger_version": "1",
                                                        "reasons": [reason]})
    monkeypatch.setenv(RETRAIN_ENV, "make-test")
    with step_run(params, "evaluate") as run:
        evaluate_run, parent = run.info.run_id, run.data.tags["mlflow.parentRunId"]
        experiment = run.info.experiment_id
    reports = params.path(params.evaluate.reports_dir)
    write_json(reports / RUN_RECORD, {"run_id": evaluate_run})
    (reports / "report.html").write_text("<html></html>", encoding="utf-8")
    store = open_store(store_url(params))
    store.write_snapshot([(7, [1001, 1002], [1.0, 0.5])], fallback_label("itemknn"))
    store.close()

    result = _invoke(tmp_path, "--params", "params.yaml", "status")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["gate      FAILED against the itemknn baseline: the candidate is version 1",
                         f"          {reason}"]
    assert "report    reports/evaluation/report.html" in lines
    assert f"MLflow    retrain make-test: http://127.0.0.1:5000/#/experiments/{experiment}/runs/{parent}" in lines
    assert any(line.startswith("serving   the labelled fallback: the itemknn baseline's lists (1 users")
               for line in lines), lines
    assert lines[-2].startswith("next      leadre serve") and GATE_FAILED_DOC in lines[-1]
    heading = GATE_FAILED_DOC.split('"')[1]
    assert f"## {heading}" in (Path(cli.__file__).parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")


def test_status_of_an_empty_workspace_creates_no_registry_or_store(tmp_path):
    write_params(tmp_path)
    result = _invoke(tmp_path, "--params", "params.yaml", "status")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("gate      no decision yet")
    assert result.stdout.splitlines()[-1] == "next      make run"
    assert not (tmp_path / "mlruns.db").exists() and not (tmp_path / "data" / "serving" / "candidates.sqlite").exists()
