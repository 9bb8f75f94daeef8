"""`leadre`: one command per pipeline step. DVC stages and Airflow tasks call these same functions.

Heavy libraries (Great Expectations, torch, MLflow) are imported inside the commands that need them, so
`leadre --help` and DAG parsing stay fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from leadre.config import ConfigError, Params, load_params, parse_overrides

app = typer.Typer(help="LEADRE Platform: train, evaluate, promote and serve an LLM ad recommender.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Raw data → validated data.", no_args_is_help=True)
sids_app = typer.Typer(help="Semantic IDs: ad text → codebook tokens the LLM generates.", no_args_is_help=True)
prompts_app = typer.Typer(help="Intent-aware prompts, alignment tasks and DPO pairs.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(sids_app, name="sids")
app.add_typer(prompts_app, name="prompts")

F = TypeVar("F", bound=Callable[..., Any])


class _State:
    params_file: Path | None = None
    overrides: dict[str, Any] = {}


@app.callback()
def main(
    params: Annotated[Path | None, typer.Option("--params", help="params file (default: ./params.yaml or $LEADRE_PARAMS)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-S", help="override a param: -S world.scale=tiny")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter buries our messages
    _State.params_file = params
    try:
        _State.overrides = parse_overrides(set_ or [])
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--set") from None


def current_params() -> Params:
    return load_params(_State.params_file, _State.overrides)


def step(func: F) -> F:
    """Turn the platform's expected failures into one clear message and a non-zero exit, without a traceback."""
    from leadre.data.tables import DataError
    from leadre.registry.models import RegistryError
    from leadre.train.model import ModelError

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except (DataError, FileNotFoundError, ModelError, RegistryError) as err:  # bad or missing input: a message, not a traceback
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@data_app.command("generate")
@step
def data_generate(
    scale: Annotated[str | None, typer.Option(help="a preset from world.scales (default: world.scale)")] = None,
) -> None:
    """Generate the seeded ad world into data.generated_dir."""
    from leadre.data.generate import run_generate

    counts = run_generate(current_params(), scale=scale)
    typer.echo(f"generated {counts}")


@data_app.command("import")
@step
def data_import(
    source: Annotated[Path, typer.Argument(help="folder with users/ads/contents/queries/events as .csv or .parquet")],
    mapping: Annotated[Path | None, typer.Option(help="YAML: per table, a file name and contract→your column names")] = None,
) -> None:
    """Import your own logs into data.imported_dir (then `dvc add data/imported`)."""
    from leadre.data.importer import run_import

    counts = run_import(current_params(), source, mapping)
    typer.echo(f"imported {counts}")


@data_app.command("validate")
@step
def data_validate(
    source: Annotated[Path | None, typer.Option(help="folder to validate (default: data.source_dir)")] = None,
) -> None:
    """Validate with Great Expectations; write data.validated_dir only if every rule holds."""
    from leadre.data.validate import run_validate

    summary = run_validate(current_params(), source)
    rows = ", ".join(f"{name}={table['rows']}" for name, table in summary["tables"].items())
    expectations = sum(table.get("expectations", 0) for table in summary["tables"].values())
    typer.echo(f"validation passed: {expectations} expectations over {rows}")


@sids_app.command("build")
@step
def sids_build() -> None:
    """Embed ad texts, train residual codebooks, give every ad a unique S-ID; save codebooks, table and trie."""
    from leadre.sids.build import run_build_sids

    report = run_build_sids(current_params())
    typer.echo(f"semantic IDs built: {report['ads']} ads, collision rate before disambiguation "
               f"{report['collision_rate']:.2%}")


@sids_app.command("assign")
@step
def sids_assign() -> None:
    """Give ads that have no S-ID yet one from the frozen codebooks (new ads become recommendable at once)."""
    from leadre.sids.build import run_assign_sids

    report = run_assign_sids(current_params())
    typer.echo(f"assigned S-IDs to {report['assigned']} new ads")


@prompts_app.command("build")
@step
def prompts_build() -> None:
    """Build the SFT mixture (main + auxiliary tasks), the DPO pairs and the evaluation prompts."""
    from leadre.prompts.build import run_build_prompts

    card = run_build_prompts(current_params())
    typer.echo(f"prompts built: {card['counts']}")


@app.command("sft")
@step
def sft(
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last checkpoint in sft.checkpoint_dir")] = False,
) -> None:
    """Supervised fine-tuning (TRL SFTTrainer) on the main + auxiliary tasks; the model goes to sft.out_dir."""
    from leadre.train.sft import run_sft

    metrics = run_sft(current_params(), resume=resume)
    typer.echo("sft done: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


@app.command("dpo")
@step
def dpo(
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last checkpoint in dpo.checkpoint_dir")] = False,
) -> None:
    """Preference alignment (TRL DPOTrainer) from the SFT model towards higher-eCPM ads; model to dpo.out_dir."""
    from leadre.train.dpo import run_dpo

    metrics = run_dpo(current_params(), resume=resume)
    typer.echo("dpo done: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


@app.command("generate")
@step
def generate(
    model: Annotated[Path | None, typer.Option(help="model bundle folder (default: evaluate.candidate_dir)")] = None,
    split: Annotated[str, typer.Option(help="prompts split whose users to recommend for")] = "test",
    users: Annotated[int, typer.Option(help="how many users (the first N by id)")] = 10,
    k: Annotated[int, typer.Option(help="ads per user")] = 10,
    out: Annotated[Path | None, typer.Option(help="write user_id, ad_ids, scores as Parquet")] = None,
) -> None:
    """Trie-constrained beam search: each user's top-K live ads from a trained model, with scores."""
    from leadre.generate.cli import run_generate

    rows = run_generate(current_params(), model, split, users, k, out)
    for row in rows[: min(len(rows), 5)]:
        typer.echo(f"user {row['user_id']}: " + ", ".join(f"{a} ({s:.2f})" for a, s in zip(row["ad_ids"], row["scores"])))


@app.command("evaluate")
@step
def evaluate() -> None:
    """Offline evaluation: candidate, champion and baselines on the time split; metrics, plots and report."""
    from leadre.evaluate.run import run_evaluate

    summary = run_evaluate(current_params())
    primary = current_params().gate.primary_metric
    typer.echo(f"evaluated {summary['users']} users: " + ", ".join(
        f"{name} {primary}={values[primary]:.4f}" for name, values in summary["methods"].items()))


@app.command("gate")
@step
def gate(
    xcom: Annotated[Path | None, typer.Option(help="also write the decision JSON here (a Kubernetes pod's "
                                                   "/airflow/xcom/return.json)")] = None,
) -> None:
    """Decide whether the candidate may replace the champion; register it as the challenger; write the decision."""
    from leadre.evaluate.gate import run_gate
    from leadre.io import write_json

    decision = run_gate(current_params())
    if xcom is not None:
        write_json(xcom, decision)
    verdict = "PASSED" if decision["passed"] else "FAILED"
    typer.echo(f"gate {verdict} against {decision['reference']} (challenger version "
               f"{decision['challenger_version']}):\n  " + "\n  ".join(decision["reasons"]))


@app.command("promote")
@step
def promote() -> None:
    """Point the registry's `champion` alias at the challenger, if its gate passed."""
    from leadre.registry.promote import run_promote

    result = run_promote(current_params())
    if result["promoted"]:
        typer.echo(f"champion is now version {result['champion']} (was {result['previous']})")
    else:
        typer.echo(f"not promoted: the gate failed; champion stays {result['champion']}")


@app.command("rollback")
@step
def rollback() -> None:
    """Point `champion` back at the version it replaced."""
    from leadre.registry.promote import run_rollback

    result = run_rollback(current_params())
    typer.echo(f"champion rolled back from version {result['rolled_back_from']} to {result['champion']}")


@app.command("nearline")
@step
def nearline() -> None:
    """Near-line refresh: the champion's top-N live ads for every active user, published to the candidate store."""
    from leadre.serve.nearline import run_nearline

    summary = run_nearline(current_params())
    if "skipped" in summary:
        typer.echo(f"near-line skipped: {summary['skipped']}")
        return
    typer.echo(f"near-line: {summary['users']} users from model version {summary['model_version']} "
               f"({summary['users_per_second']:.1f} users/s), snapshot {summary['snapshot_id']}")


@app.command("serve")
@step
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default: serve.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: serve.port)")] = None,
) -> None:
    """The online recommendation API (FastAPI): answers from the candidate store, follows the champion alias."""
    from leadre.serve.service import run_serve

    run_serve(current_params(), host, port)


if __name__ == "__main__":
    sys.exit(app())
