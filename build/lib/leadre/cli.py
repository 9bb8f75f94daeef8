"""`leadre`: one command per pipeline step of the step table (leadre/steps.py), which DVC stages and Airflow tasks
run too, plus the tools that are no step (data generate/import, sids assign, recommend, rollback, serve).

Heavy libraries (Great Expectations, torch, MLflow) are imported inside the commands that need them, after the
params load, so `leadre --help`, DAG parsing and a params mistake stay fast.

Every failure is one line on stderr, `error: <what> (<fix>)`, and exit status 1 (75 for a `TransientError`: worth
another try); `--verbose` adds the traceback. Global options (`--params`, `-S`, `--verbose`) may come before or
after the subcommand.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup, TyperOption

from leadre.config import ConfigError, Params, load_params, parse_overrides
from leadre.errors import LeadreError, UserError, one_line
from leadre.runtime import quiet_library_bars

UNEXPECTED_HINT = "(run with --verbose for the traceback)"  # marks an error the platform did not raise on purpose


class _State:
    params_file: Path | None = None
    overrides: dict[str, Any] = {}
    verbose: bool = False


class LeadreGroup(TyperGroup):
    """The top-level command: global options anywhere on the line, and every failure as one line on stderr."""

    # `leadre --help` lists the commands in the order the data flows (set by build_app), not as Typer adds them
    # (commands first, then the groups: `data` would come last)
    command_order: tuple[str, ...] = ()

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(self, args))

    def list_commands(self, ctx: typer.Context) -> list[str]:
        rank = {name: i for i, name in enumerate(self.command_order)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(name, len(rank)))

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:  # an embedding caller handles exceptions itself
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            status = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (KeyboardInterrupt, typer.Abort):
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        except Exception as err:
            sys.exit(report_error(err))
        # non-standalone click returns the exit code of a typer.Exit, or the command's return value (None)
        sys.exit(status if isinstance(status, int) else 0)


def hoist_global_options(group: TyperGroup, args: list[str]) -> list[str]:
    """Move the group's own options (e.g. `-S k=v` in `leadre sft -S k=v`) in front of the subcommand, where click
    reads them. No subcommand may reuse their names (tests/code/test_cli.py checks)."""
    options = [p for p in group.params if isinstance(p, TyperOption) and p.name != "help"]
    takes_value = {name: not option.is_flag for option in options for name in (*option.opts, *option.secondary_opts)}
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if arg == "--":
            rest += args[i:]
            break
        if name in takes_value and takes_value[name] and "=" not in arg and i + 1 < len(args):
            hoisted += args[i:i + 2]  # `-S k=v`, `--params FILE`
            i += 2
            continue
        attached = arg[:2] in takes_value and len(arg) > 2 and not arg.startswith("--") and takes_value[arg[:2]]
        if name in takes_value or attached:  # a flag, `--set=k=v` or `-Sk=v`
            hoisted.append(arg)
        else:
            rest.append(arg)
        i += 1
    return hoisted + rest


def report_error(err: Exception) -> int:
    """Print `err` as one line on stderr (plus the traceback with --verbose) and return the exit status."""
    if type(err).__name__ == "NoArgsIsHelpError":  # typer's own test: the class is not public
        return err.exit_code  # the help is already printed
    if _State.verbose and not isinstance(err, typer.TyperException):
        traceback.print_exception(err)
    if isinstance(err, typer.TyperException):  # click's usage errors (typer vendors click)
        ctx = getattr(err, "ctx", None)
        see = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message, status = one_line(err.format_message()) + see, 1
    elif isinstance(err, LeadreError):
        message, status = one_line(str(err)), err.exit_code
    elif isinstance(err, FileNotFoundError):
        message, status = missing_input(err), 1
    else:  # not raised on purpose: say what it is, keep the traceback for --verbose
        message = f"{type(err).__name__}: {one_line(str(err))}"
        message += "" if _State.verbose else f" {UNEXPECTED_HINT}"
        status = 1
    typer.echo(f"error: {message}", err=True)
    return status


def missing_input(err: FileNotFoundError) -> str:
    """A missing file as `<path>: not found (run `leadre <step>` first)`; our own messages already carry the fix."""
    text = str(err)
    if err.filename is None and " " in text:
        return one_line(text)
    path = Path(err.filename if err.filename is not None else text)
    step = _producer(path)
    return f"{path}: not found" + (f" (run `leadre {step}` first)" if step else "")


def _producer(path: Path) -> str | None:
    """The command that writes `path`, when it lies in one of the steps' declared outputs."""
    from leadre.steps import STEPS, resolve

    try:
        params = current_params()
    except ConfigError:
        return None
    outputs = {params.data.generated_dir: "data generate", params.data.imported_dir: "data import DIR"}
    for step in STEPS.values():
        for output in step.outputs:
            resolved = resolve(output, lambda key: _attribute(params, key))
            if resolved is not None:
                outputs.setdefault(resolved, step.command_line)
    path = path.resolve()
    for output, command in outputs.items():
        if path.is_relative_to(params.path(output).resolve()):
            return command
    return None


def _attribute(params: Params, dotted: str) -> Any:
    node: Any = params
    for key in dotted.split("."):
        node = getattr(node, key, None)
    return node


def _print_version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"leadre {version('leadre')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("leadre (not installed)")
        raise typer.Exit()


def main(
    params: Annotated[Path | None, typer.Option("--params", help="params file (default: ./params.yaml or $LEADRE_PARAMS)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-S", help="override a param: -S world.scale=tiny")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logs; tracebacks with errors")] = False,
    _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                           help="print the version and exit")] = False,
) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO chatter buries our messages
    quiet_library_bars()
    _State.params_file = params
    _State.verbose = verbose
    try:
        _State.overrides = parse_overrides(set_ or [])
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--set") from None


def current_params() -> Params:
    return load_params(_State.params_file, _State.overrides)


def _step(name: str):
    """The step's function from the step table (leadre/steps.py), imported only now."""
    from leadre.steps import step_function

    return step_function(name)


# ------------------------------------------------------------------------------------------------ tools (not steps)

def data_generate(
    scale: Annotated[str | None, typer.Option(help="a preset from world.scales (default: world.scale)")] = None,
) -> None:
    """Generate the seeded ad world into data.generated_dir."""
    params = current_params()
    from leadre.data.generate import run_generate

    counts = run_generate(params, scale=scale)
    typer.echo(f"generated {counts}")


def data_import(
    source: Annotated[Path, typer.Argument(help="folder with users/ads/contents/queries/events as .csv or .parquet")],
    mapping: Annotated[Path | None, typer.Option(help="YAML: per table, a file name and contract→your column names")] = None,
    format_: Annotated[str, typer.Option("--format", help="contract: our tables as CSV/Parquet; recbole: RecBole "
                                                          "atomic files (NAME.inter, .item, .user)")] = "contract",
) -> None:
    """Import your own logs into data.imported_dir (then `dvc add data/imported`)."""
    params = current_params()
    from leadre.data.importer import FORMATS, run_import

    if format_ not in FORMATS:
        raise typer.BadParameter(f"{format_!r} is not one of {', '.join(FORMATS)}", param_hint="--format")
    counts = run_import(params, source, mapping, format=format_)
    typer.echo(f"imported {counts}")


def sids_assign() -> None:
    """Give ads that have no S-ID yet one from the frozen codebooks (new ads become recommendable at once)."""
    params = current_params()
    from leadre.sids.build import run_assign_sids

    report = run_assign_sids(params)
    typer.echo(f"assigned S-IDs to {report['assigned']} new ads")


def recommend(
    model: Annotated[Path | None, typer.Option(help="model bundle folder (default: evaluate.candidate_dir)")] = None,
    split: Annotated[str, typer.Option(help="prompts split whose users to recommend for")] = "test",
    users: Annotated[int, typer.Option(help="how many users (the first N by id)")] = 10,
    k: Annotated[int, typer.Option(help="ads per user")] = 10,
    out: Annotated[Path | None, typer.Option(help="write user_id, ad_ids, scores as Parquet")] = None,
) -> None:
    """Trie-constrained beam search: each user's top-K live ads from a trained model, with scores."""
    params = current_params()
    from leadre.decode.cli import run_recommend

    rows = run_recommend(params, model, split, users, k, out)
    for row in rows[: min(len(rows), 5)]:
        typer.echo(f"user {row['user_id']}: " + ", ".join(f"{a} ({s:.2f})" for a, s in zip(row["ad_ids"], row["scores"])))


def rollback() -> None:
    """Point `champion` back at the version it replaced."""
    params = current_params()
    from leadre.registry.promote import run_rollback

    result = run_rollback(params)
    typer.echo(f"champion rolled back from version {result['rolled_back_from']} to {result['champion']}")


def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default: serve.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: serve.port)")] = None,
) -> None:
    """The online recommendation API (FastAPI): answers from the candidate store, follows the champion alias."""
    params = current_params()
    from leadre.serve.service import run_serve

    run_serve(params, host, port)


def status() -> None:
    """Where the last retrain left things: gate decision, report, MLflow run, what is served, the next command."""
    params = current_params()
    from leadre.serve.status import status_lines

    typer.echo("\n".join(status_lines(params)))


TOOLS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("data", "generate"), data_generate), (("data", "import"), data_import), (("sids", "assign"), sids_assign),
    (("recommend",), recommend), (("rollback",), rollback), (("serve",), serve), (("status",), status),
)


# ------------------------------------------------------------------------------------------------ steps
# A step's command here adds its own options and a readable summary line; its help is the step table's doc. A step
# without one gets `_plain_step_command`: no options, the summary as JSON.

def data_validate(
    source: Annotated[Path | None, typer.Option(help="folder to validate (default: data.source_dir)")] = None,
) -> None:
    params = current_params()
    summary = _step("validate")(params, source)
    rows = ", ".join(f"{name}={table['rows']}" for name, table in summary["tables"].items())
    expectations = sum(table.get("expectations", 0) for table in summary["tables"].values())
    typer.echo(f"validation passed: {expectations} expectations over {rows}")


ShardOption = Annotated[str | None, typer.Option(
    "--shard", metavar="I/N", help="run only shard I of N (from 0; users or ads by a stable hash of the id) and "
                                   "leave its part for --merge")]
MergeOption = Annotated[int | None, typer.Option("--merge", metavar="N", help="join the parts of the N shards "
                                                                              "into the step's output")]


def _run_step(name: str, shard: str | None = None, merge: int | None = None) -> Any:
    """The step whole, one shard of it (whose summary is echoed here: it is no finished output) or its merge."""
    from leadre.steps import call_step

    summary = call_step(name, current_params(), shard, merge)
    if shard is not None:
        typer.echo(f"{name} shard {shard}: {json.dumps(summary, default=str)}")
    return summary


def sids_build(shard: ShardOption = None, merge: MergeOption = None) -> None:
    report = _run_step("sids", shard, merge)
    if shard is not None:
        return
    typer.echo(f"semantic IDs built: {report['ads']} ads, collision rate before disambiguation "
               f"{report['collision_rate']:.2%}")


def prompts_build(shard: ShardOption = None, merge: MergeOption = None) -> None:
    card = _run_step("prompts", shard, merge)
    if shard is not None:
        return
    typer.echo(f"prompts built: {card['counts']}")


def sft(
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last checkpoint in sft.checkpoint_dir")] = False,
) -> None:
    params = current_params()
    metrics = _step("sft")(params, resume=resume)
    typer.echo("sft done: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


def dpo(
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last checkpoint in dpo.checkpoint_dir")] = False,
) -> None:
    params = current_params()
    metrics = _step("dpo")(params, resume=resume)
    typer.echo("dpo done: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


def evaluate() -> None:
    params = current_params()
    summary = _step("evaluate")(params)
    primary = params.gate.primary_metric
    typer.echo(f"evaluated {summary['users']} users: " + ", ".join(
        f"{name} {primary}={values[primary]:.4f}" for name, values in summary["methods"].items()))


NO_REGISTER_HELP = ("leave the registry alone: no new version, no alias moved (implied in a `dvc exp run` and for a "
                    "prompts.features ablation)")


def gate(
    xcom: Annotated[Path | None, typer.Option(help="also write the decision JSON here (a Kubernetes pod's "
                                                   "/airflow/xcom/return.json)")] = None,
    no_register: Annotated[bool, typer.Option("--no-register", help=NO_REGISTER_HELP)] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the decision only: nothing registered, logged "
                                                            "to MLflow or written")] = False,
) -> None:
    params = current_params()
    decision = _step("gate")(params, register=not no_register, dry_run=dry_run)
    if xcom is not None:
        from leadre.io import write_json

        write_json(xcom, decision)
    verdict = "PASSED" if decision["passed"] else "FAILED"
    registered = (f"challenger version {decision['challenger_version']}" if decision["challenger_version"]
                  else f"not registered: {decision['registry_skipped']}")
    typer.echo(f"gate {verdict} against {decision['reference']} ({registered}):\n  " + "\n  ".join(decision["reasons"]))


def promote(
    force: Annotated[bool, typer.Option("--force", help="promote even a version that was rolled back (recorded on "
                                                        "the version)")] = False,
    no_register: Annotated[bool, typer.Option("--no-register", help=NO_REGISTER_HELP)] = False,
) -> None:
    params = current_params()
    run_promote = _step("promote")
    if force and "force" not in inspect.signature(run_promote).parameters:
        raise UserError("promote --force: this version of leadre.registry.promote cannot force a promotion")
    result = run_promote(params, **({"force": True} if force else {}), register=not no_register)
    if result["promoted"]:
        typer.echo(f"champion is now version {result['champion']} (was {result['previous']})")
    elif result.get("skipped"):
        typer.echo(f"not promoted: {result['skipped']}; champion stays {result['champion']}")
    else:
        typer.echo(f"not promoted: the gate failed; champion stays {result['champion']}")


def nearline(shard: ShardOption = None, merge: MergeOption = None) -> None:
    summary = _run_step("nearline", shard, merge)
    if shard is not None:
        return
    ranker = (f"model version {summary['model_version']}" if summary["model_version"] is not None
              else f"the labelled fallback {summary['source']} (no champion yet)")
    # a merge generated nothing itself: it names its shards instead of a rate
    rate = f"{summary['shards']} shards" if "shards" in summary else f"{summary['users_per_second']:.1f} users/s"
    typer.echo(f"near-line: {summary['users']} users from {ranker} ({rate}), snapshot {summary['snapshot_id']}")


STEP_COMMANDS: dict[str, Any] = {
    "validate": data_validate, "sids": sids_build, "prompts": prompts_build, "sft": sft, "dpo": dpo,
    "evaluate": evaluate, "gate": gate, "promote": promote, "nearline": nearline,
}


def _plain_step_command(name: str):
    def command() -> None:
        params = current_params()
        summary = _step(name)(params)
        typer.echo(f"{name}: {json.dumps(summary, default=str)}")

    return command


PIPELINE_PANEL, TOOLS_PANEL = "Pipeline steps, in the order the data flows", "Serving and tools"
GROUP_HELP = {
    "data": "Raw data → validated data.",
    "sids": "Semantic IDs: ad text → codebook tokens the LLM generates.",
    "prompts": "Intent-aware prompts, alignment tasks and DPO pairs.",
}


def build_app() -> typer.Typer:
    """The `leadre` command: every step of the step table at its command, plus the tools that are no step."""
    from leadre.steps import STEPS

    root = typer.Typer(cls=LeadreGroup, help="LEADRE Platform: train, evaluate, promote and serve an LLM ad "
                       "recommender.", no_args_is_help=True, pretty_exceptions_enable=False)
    root.callback()(main)
    # the pipeline's commands in step-table order under one panel, the tools after them under another
    pipeline = tuple(dict.fromkeys(step.command[0] for step in STEPS.values()))
    LeadreGroup.command_order = tuple(dict.fromkeys(pipeline + tuple(command[0] for command, _ in TOOLS)))

    def panel(name: str) -> str:
        return PIPELINE_PANEL if name in pipeline else TOOLS_PANEL

    groups: dict[str, typer.Typer] = {}
    for group, text in GROUP_HELP.items():
        groups[group] = typer.Typer(help=text, no_args_is_help=True)
        root.add_typer(groups[group], name=group, rich_help_panel=panel(group))

    def register(command: tuple[str, ...], function: Any, help: str | None = None) -> None:
        if len(command) == 1:
            root.command(command[0], help=help, rich_help_panel=panel(command[0]))(function)
            return
        group, name = command
        if group not in groups:
            groups[group] = typer.Typer(help=GROUP_HELP.get(group), no_args_is_help=True)
            root.add_typer(groups[group], name=group, rich_help_panel=panel(group))
        groups[group].command(name, help=help)(function)

    for step in STEPS.values():
        register(step.command, STEP_COMMANDS.get(step.name) or _plain_step_command(step.name), help=step.doc)
    for command, function in TOOLS:
        register(command, function)
    return root


app = build_app()


if __name__ == "__main__":
    sys.exit(app())
