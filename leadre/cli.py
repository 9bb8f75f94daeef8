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
import yaml

from leadre.config import ConfigError, Params, load_params

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
    _State.overrides = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        _State.overrides[key] = yaml.safe_load(value)


def current_params() -> Params:
    return load_params(_State.params_file, _State.overrides)


def step(func: F) -> F:
    """Turn the platform's expected failures into one clear message and a non-zero exit, without a traceback."""
    from leadre.data.tables import DataError

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        except (DataError, FileNotFoundError) as err:  # bad or missing input: a message, not a traceback
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


if __name__ == "__main__":
    sys.exit(app())
