"""`python -m bench.faults [--keep] [--only NAME,...]`: kill, corrupt and hostile-input scenarios, end to end.

A tiny world in a temporary folder is taken through the real `leadre` CLI (subprocesses, as DVC and Airflow run it)
up to a served champion; then each scenario breaks something (SIGKILL mid-write, a corrupted file, a hostile input)
and reports what it actually observed. "Data lost" means an earlier good result (a step's output folder, the
imported or validated data, the served snapshot, the champion alias) was damaged, removed or replaced by bad data;
every row must say "no". A row is UNEXPECTED when the platform did not answer as the scenario expects (a one-line
error, a refusal, a 431, ...). Exit status 1 when any row lost data or was unexpected. About 4 minutes on 2 idle
cores; raw rows are kept in bench/results/faults-*.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from bench import save_results
from leadre.cli import UNEXPECTED_HINT
from leadre.config import Params, _set_dotted, load_params

REPO = Path(__file__).resolve().parents[1]

# The tiny world, with every knob that costs time turned down: the scenarios test failure handling, not quality.
SETTINGS = {
    "world.scale": "tiny", "validation.data_docs": False, "sids.kmeans_iterations": 5,
    "model.tiny": {"vocab_size": 600, "hidden_size": 32, "layers": 2, "heads": 2, "kv_heads": 1,
                   "intermediate_size": 64, "max_position_embeddings": 1024, "tokenizer_corpus_rows": 1000},
    "model.cpu_threads": 1,
    "sft.max_train_examples": 64, "sft.max_eval_examples": 8, "sft.epochs": 1, "sft.batch_size": 8,
    "sft.learning_rate": 0.01, "sft.logging_steps": 4,
    "tracking.system_metrics_seconds": 1, "tracking.log_models": False,
    # the SFT model is the candidate: DPO adds minutes and no new way to fail
    "evaluate.candidate_dir": "artifacts/models/sft", "evaluate.compare_dirs": {}, "evaluate.max_users": 20,
    "evaluate.value_weights": [0.0], "evaluate.diversity_penalties": [0.0],
    "evaluate.bootstrap": {"resamples": 100, "confidence": 0.95, "seed": 0},
    "evaluate.baselines.sasrec.epochs": 1, "decode.beam_width": 10,
    # a gate any candidate passes, so there is a champion to promote, roll back and corrupt: the gate decides on the
    # low end of a lift interval, which reaches -1 (-100%) when the tiny model scores nothing on a resample of 20 users
    "gate.min_relative_lift": -2.0, "gate.guardrails": {},
    "nearline.max_users": 20,
}
SETUP = (("data", "generate"), ("data", "validate"), ("sids", "build"), ("prompts", "build"), ("sft",),
         ("evaluate",), ("gate",), ("promote",), ("nearline",))


@dataclass
class Row:
    scenario: str
    expected: str
    observed: str
    ok: bool
    data_lost: bool
    seconds: float = 0.0


class Workspace:
    """A params.yaml at `root` and the `leadre` CLI run as a user runs it, in a separate process."""

    def __init__(self, root: Path):
        self.root = root
        raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        for dotted, value in SETTINGS.items():
            _set_dotted(raw, dotted, value)
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        self.params: Params = load_params(root / "params.yaml")
        (root / "logs").mkdir(exist_ok=True)
        self.calls = 0

    def path(self, relative: Path | str) -> Path:
        return self.params.path(relative)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.pop("MLFLOW_TRACKING_URI", None)  # this process's registry look-ups set it; the CLI reads params
        env.pop("LEADRE_PARAMS", None)
        return env

    def _command(self, args: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "leadre.cli", "--params", str(self.root / "params.yaml"), *args]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self._command(args), cwd=self.root, env=self._env(), capture_output=True, text=True,
                              timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        self.calls += 1
        log = (self.root / "logs" / f"{self.calls:02d}-{'-'.join(a for a in args if a.isidentifier())}.log").open("w")
        return subprocess.Popen(self._command(args), cwd=self.root, env=self._env(), stdout=log, stderr=log)

    def champion(self) -> str | None:
        from leadre.registry.models import CHAMPION, alias_version

        found = alias_version(self.params, CHAMPION)
        return str(found.version) if found else None


# ------------------------------------------------------------------------------------------------ observing

def fingerprint(path: Path) -> str | None:
    """A hash of every file's name and bytes under `path` (None when it is missing)."""
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
        digest.update(str(file.relative_to(path.parent)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def state(before: str | None, after: str | None) -> str:
    return "unchanged" if before == after else "missing" if after is None else "changed"


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> tuple[bool, str]:
    """(the CLI failed as a user error should: exit 1, one `error:` line last, no traceback, naming each of
    `needles`; what it printed)."""
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    shown = lines if result.returncode or not result.stdout.strip() else result.stdout.splitlines()
    said = errors[-1] if errors else (shown[-1] if shown else "(nothing printed)")
    ok = (result.returncode == 1 and errors == lines[-1:] and "Traceback" not in result.stderr
          and UNEXPECTED_HINT not in said and all(needle.lower() in said.lower() for needle in needles))
    return ok, f"exit {result.returncode}: {said}"


def kill_when(ws: Workspace, args: tuple[str, ...], moment: Callable[[], bool], timeout: float = 600) -> str:
    """Start the command and SIGKILL it as soon as `moment()` holds; say what happened."""
    process = ws.start(*args)
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if moment() or time.monotonic() > deadline:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return "killed mid-write" if time.monotonic() <= deadline else "killed at the timeout"
        time.sleep(0.005)
    return f"finished (exit {process.returncode}) before the kill point"


def writing_into(target: Path) -> Callable[[], bool]:
    """True once a file lands in a new `.NAME.tmp-*` folder beside `target` (leadre.io.atomic_dir's staging)."""
    known = set(target.parent.glob(f".{target.name}.tmp-*"))

    def moment() -> bool:
        return any(folder not in known and any(p.is_file() for p in folder.rglob("*"))
                   for folder in target.parent.glob(f".{target.name}.tmp-*"))
    return moment


def rel(ws: Workspace, path: Path) -> str:
    return str(path.relative_to(ws.root))


# ------------------------------------------------------------------------------------------------ scenarios

def killed_step(ws: Workspace, args: tuple[str, ...], output: Path) -> Row:
    before = fingerprint(output)
    how = kill_when(ws, args, writing_into(output))
    after = fingerprint(output)
    leftovers = [p for p in output.parent.glob(f".{output.name}.*")]
    observed = f"{how}; {rel(ws, output)} {state(before, after)}"
    if leftovers:
        observed += f" ({len(leftovers)} staging folder(s) left beside it)"
    return Row(f"SIGKILL during {' '.join(args)}", f"{rel(ws, output)} as before", observed,
               ok=how == "killed mid-write" and before == after, data_lost=before != after)


def kill_validate(ws: Workspace) -> Row:
    return killed_step(ws, ("data", "validate"), ws.path(ws.params.data.validated_dir))


def kill_sids(ws: Workspace) -> Row:
    return killed_step(ws, ("sids", "build"), ws.path(ws.params.sids.out_dir))


def kill_prompts(ws: Workspace) -> Row:
    return killed_step(ws, ("prompts", "build"), ws.path(ws.params.prompts.out_dir))


def kill_sft_checkpoint(ws: Workspace) -> Row:
    """SIGKILL while the trainer writes a checkpoint; then `sft --resume` must continue from a complete one."""
    from leadre.train.checkpointing import is_complete

    out, checkpoints = ws.path(ws.params.sft.out_dir), ws.path(ws.params.sft.checkpoint_dir)
    before = fingerprint(out)
    known = {p for p in checkpoints.glob("*")}

    def saving() -> bool:  # a new checkpoint folder that the trainer has not marked complete yet
        return any(p.is_dir() and p not in known and any(p.iterdir()) and not is_complete(p)
                   for p in checkpoints.glob("*"))

    how = kill_when(ws, ("-S", "sft.checkpoint_every_steps=1", "sft"), saving)
    after = fingerprint(out)
    torn = sorted(p.name for p in checkpoints.glob("checkpoint-*") if not is_complete(p))
    resumed = ws.run("-S", "sft.checkpoint_every_steps=1", "sft", "--resume")
    said = (resumed.stderr.splitlines() or ["(nothing)"])[-1]
    left = sorted(p.name for p in checkpoints.glob("checkpoint-*") if not is_complete(p))
    observed = (f"{how.replace('mid-write', 'mid-save')}; {rel(ws, out)} {state(before, after)}; "
                f"torn checkpoints: {', '.join(torn) or 'none'}; resume: exit {resumed.returncode}"
                + ("" if resumed.returncode == 0 else f" ({said})")
                + f"; torn after resume: {', '.join(left) or 'none'}")
    return Row("SIGKILL during sft checkpoint save", f"{rel(ws, out)} as before; --resume skips a torn checkpoint "
               "and finishes", observed, ok=how == "killed mid-write" and before == after and not left
               and resumed.returncode == 0, data_lost=before != after)


def _hostile_tables(ws: Workspace, name: str, table: str, change: Callable) -> Path:
    """A copy of the generated world with one table changed by `change(frame)`."""
    import pandas as pd

    folder = ws.root / "hostile" / name
    shutil.copytree(ws.path(ws.params.data.generated_dir), folder)
    frame = pd.read_parquet(folder / f"{table}.parquet")
    change(frame)
    frame.to_parquet(folder / f"{table}.parquet", index=False)
    return folder


def _rejected_by_validate(ws: Workspace, scenario: str, folder: Path, needle: str) -> Row:
    validated = ws.path(ws.params.data.validated_dir)
    before = fingerprint(validated)
    ok, observed = one_line_error(ws.run("data", "validate", "--source", str(folder)), needle)
    after = fingerprint(validated)
    return Row(scenario, f"exit 1, one line naming {needle!r}; {rel(ws, validated)} as before", observed,
               ok=ok and before == after, data_lost=before != after)


def inf_ecpm(ws: Workspace) -> Row:
    def change(ads):
        ads.loc[0, "ecpm"] = float("inf")
    return _rejected_by_validate(ws, "inf eCPM in ads", _hostile_tables(ws, "inf_ecpm", "ads", change), "ecpm")


def event_in_1970(ws: Workspace) -> Row:
    import pandas as pd

    def change(events):
        events.loc[0, "ts"] = pd.Timestamp("1970-01-01", tz="UTC")
    return _rejected_by_validate(ws, "event in 1970", _hostile_tables(ws, "epoch", "events", change), "ts")


def control_characters(ws: Workspace) -> Row:
    def change(ads):
        ads.loc[0, "title"] = "Summer sale\x00\x1b[2J\x07 50% off"
    return _rejected_by_validate(ws, "control characters in a title",
                                 _hostile_tables(ws, "control", "ads", change), "title")


def _csv_world(ws: Workspace, name: str) -> Path:
    """The generated world as CSV files (what a user's export looks like)."""
    import pandas as pd

    folder = ws.root / "hostile" / name
    folder.mkdir(parents=True)
    for table in sorted(ws.path(ws.params.data.generated_dir).glob("*.parquet")):
        pd.read_parquet(table).to_csv(folder / f"{table.stem}.csv", index=False)
    return folder


def _rejected_by_import(ws: Workspace, scenario: str, folder: Path, needles: tuple[str, ...], *extra: str) -> Row:
    imported = ws.path(ws.params.data.imported_dir)
    before = fingerprint(imported)
    ok, observed = one_line_error(ws.run("data", "import", str(folder), *extra), *needles)
    after = fingerprint(imported)
    return Row(scenario, f"exit 1, one line naming {' and '.join(map(repr, needles))}; {rel(ws, imported)} as "
               "before", observed, ok=ok and before == after, data_lost=before != after)


def mapping_is_a_list(ws: Workspace) -> Row:
    folder = _csv_world(ws, "mapping_list")
    mapping = folder / "mapping.yaml"
    mapping.write_text("- users\n- ads\n", encoding="utf-8")
    return _rejected_by_import(ws, "mapping.yaml as a list", folder, ("mapping.yaml",), "--mapping", str(mapping))


def duplicated_csv_header(ws: Workspace) -> Row:
    """users.csv with `age` twice (two exports pasted side by side): which one is the age?"""
    import pandas as pd

    folder = _csv_world(ws, "duplicated_header")
    users = pd.read_csv(folder / "users.csv")
    users["age_again"] = users["age"].fillna(0) + 1
    users.to_csv(folder / "users.csv", index=False, header=[*users.columns[:-1], "age"])
    return _rejected_by_import(ws, "duplicated CSV header", folder, ("duplicate", "age"))


def id_3e0(ws: Workspace) -> Row:
    folder = _csv_world(ws, "id_3e0")
    users = folder / "users.csv"
    header, first, rest = users.read_text(encoding="utf-8").split("\n", 2)
    users.write_text("\n".join([header, "3e0," + first.split(",", 1)[1], rest]), encoding="utf-8")
    return _rejected_by_import(ws, 'id "3e0"', folder, ("user_id",))


def nan_gate_threshold(ws: Workspace) -> Row:
    decision = ws.path(ws.params.gate.decision_file)
    before, champion = fingerprint(decision), ws.champion()
    ok, observed = one_line_error(ws.run("-S", "gate.min_relative_lift=nan", "gate"), "gate.min_relative_lift")
    after = fingerprint(decision)
    return Row("NaN gate threshold via -S", "exit 1, one line naming gate.min_relative_lift; gate.json and "
               "champion as before", observed, ok=ok and before == after and ws.champion() == champion,
               data_lost=before != after)


def edited_gate_then_promote(ws: Workspace) -> Row:
    champion = ws.champion()
    failed = ws.run("-S", "gate.min_relative_lift=10", "gate")  # a gate no model passes registers a challenger
    decision_file = ws.path(ws.params.gate.decision_file)
    decision = json.loads(decision_file.read_text(encoding="utf-8"))
    if failed.returncode != 0 or decision["passed"]:
        return Row("gate.json edited to passed=true, then promote", "a failed gate", f"gate: exit "
                   f"{failed.returncode}, passed={decision['passed']}", ok=False, data_lost=False)
    decision["passed"] = True
    decision_file.write_text(json.dumps(decision), encoding="utf-8")
    promoted = ws.run("promote")
    said = (promoted.stdout.strip().splitlines() or promoted.stderr.strip().splitlines() or ["(nothing)"])[-1]
    after = ws.champion()
    # promotion reads the registry's verdict (the gate's tag on the version), never the editable file: "not
    # promoted" (exit 0, a decision) or a refusal (exit 1, one line) both keep the champion
    clean = promoted.returncode == 0 or one_line_error(promoted)[0]
    return Row("gate.json edited to passed=true, then promote", f"not promoted; champion stays v{champion}",
               f"exit {promoted.returncode}: {said}; champion v{after}", ok=clean and after == champion,
               data_lost=after != champion)


def rollback_then_promote(ws: Workspace) -> Row:
    steps = [ws.run("gate"), ws.run("promote")]
    promoted = ws.champion()
    steps.append(ws.run("rollback"))
    rolled_back = ws.champion()
    if any(s.returncode for s in steps) or rolled_back == promoted:
        return Row("rollback, then promote", "a promoted, then rolled-back champion",
                   "; ".join(f"exit {s.returncode}" for s in steps) + f"; champion v{rolled_back}", ok=False,
                   data_lost=rolled_back is None)
    again = ws.run("promote")  # a pipeline re-run after the rollback
    after = ws.champion()
    clean, said = one_line_error(again)
    clean = clean or again.returncode == 0  # "not promoted" is a decision, a refusal an error: either keeps it
    return Row("rollback, then promote", f"champion stays v{rolled_back} (v{promoted} was rolled back)",
               f"{said}; champion v{after}", ok=clean and after == rolled_back, data_lost=after != rolled_back)


def corrupt_champion_then_nearline(ws: Workspace) -> Row:
    from mlflow.tracking import MlflowClient

    from leadre.serve.service import store_url
    from leadre.serve.store import open_store

    champion = ws.champion()
    uri = MlflowClient().get_model_version_download_uri(ws.params.registry.model_name, champion)
    weights = sorted(Path(uri.removeprefix("file://")).rglob("*.safetensors"))
    for file in weights:
        file.write_bytes(b"\0garbage" * 64)
    store = open_store(store_url(ws.params))
    before = store.snapshot_info()
    ads = ws.path(ws.params.serve.ads_file)
    ads_before = fingerprint(ads)
    ok, observed = one_line_error(ws.run("nearline"), "")
    after = store.snapshot_info()
    store.close()
    lost = after != before or fingerprint(ads) != ads_before
    return Row("corrupt champion weights, then nearline", "exit 1, one line; served snapshot and ads as before",
               f"{observed} ({len(weights)} weight file(s) corrupted); snapshot "
               f"{'unchanged' if after == before else 'changed'}", ok=ok and bool(weights) and not lost,
               data_lost=lost)


def huge_request_header(ws: Workspace) -> Row:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ws.start("serve", "--port", str(port))
    try:
        if not _wait_healthy(port, server):
            return Row("1 MB request header to leadre serve", "431", "the server did not start", False, False)
        status = _status_of_huge_request(port)
        alive = _wait_healthy(port, server, seconds=5)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return Row("1 MB request header to leadre serve", "431; the server keeps answering",
               f"{status}; {'still answers' if alive else 'no longer answers'}", ok=status == "431" and alive,
               data_lost=False)


def _wait_healthy(port: int, server: subprocess.Popen, seconds: float = 90) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            time.sleep(0.2)
    return False


def _status_of_huge_request(port: int) -> str:
    request = (b"GET /v1/recommendations/1 HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 1_000_000
               + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        try:
            conn.sendall(request)
        except OSError:
            pass  # the server may answer and close before reading it all
        try:
            head = conn.recv(64)
        except OSError as err:
            return f"no answer ({type(err).__name__})"
    parts = head.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 and head.startswith(b"HTTP/") else "no answer (connection closed)"


SCENARIOS: dict[str, Callable[[Workspace], Row]] = {
    "kill_validate": kill_validate, "kill_sids": kill_sids, "kill_prompts": kill_prompts,
    "inf_ecpm": inf_ecpm, "event_1970": event_in_1970, "control_chars": control_characters,
    "mapping_list": mapping_is_a_list, "duplicated_header": duplicated_csv_header, "id_3e0": id_3e0,
    "nan_gate": nan_gate_threshold, "edited_gate": edited_gate_then_promote, "rollback": rollback_then_promote,
    "huge_header": huge_request_header,  # before the corruption: the server follows the champion
    "corrupt_champion": corrupt_champion_then_nearline, "kill_sft": kill_sft_checkpoint,
}


# ------------------------------------------------------------------------------------------------ main

def setup(ws: Workspace) -> None:
    """The pipeline up to a served champion (plus a clean CSV import), each step timed; stops at a failure."""
    for args in SETUP:
        started = time.perf_counter()
        result = ws.run(*args)
        print(f"  setup: leadre {' '.join(args)}: exit {result.returncode} ({time.perf_counter() - started:.0f} s)",
              flush=True)
        if result.returncode != 0:
            raise SystemExit(f"setup failed at `leadre {' '.join(args)}`:\n{result.stderr[-3000:]}")
    result = ws.run("data", "import", str(_csv_world(ws, "clean")))  # the imports' "before": a good import
    if result.returncode != 0:
        raise SystemExit(f"setup failed: the tiny world as CSV does not import:\n{result.stderr[-3000:]}")


def table(rows: list[Row]) -> str:
    lines = ["| scenario | expected | observed | data lost |", "|---|---|---|---|"]
    for row in rows:
        mark = "" if row.ok else "UNEXPECTED: "
        lines.append(f"| {row.scenario} | {row.expected} | {mark}{row.observed} | {'YES' if row.data_lost else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace (its path is printed)")
    parser.add_argument("--only", help=f"comma-separated scenarios (default: all): {', '.join(SCENARIOS)}")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    root = Path(tempfile.mkdtemp(prefix="leadre-faults-"))
    started = time.perf_counter()
    try:
        ws = Workspace(root)
        print(f"workspace {root}", flush=True)
        setup(ws)
        rows = []
        for name in chosen:
            began = time.perf_counter()
            try:
                row = SCENARIOS[name](ws)
            except Exception as err:  # a scenario that cannot run is a finding too, not the end of the table
                row = Row(name, "runs", f"bench error: {type(err).__name__}: {err}", ok=False, data_lost=False)
            row.seconds = time.perf_counter() - began
            print(f"  {row.scenario}: {'ok' if row.ok else 'UNEXPECTED'} ({row.seconds:.0f} s)", flush=True)
            rows.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nFaults ({time.perf_counter() - started:.0f} s in all)\n")
    print(table(rows))
    print(f"\nsaved {save_results('faults', [asdict(r) for r in rows])}")
    if any(r.data_lost or not r.ok for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
