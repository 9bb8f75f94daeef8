"""Generate + validate at default, 100k and 1M users: wall time and peak memory per stage.

Each stage runs in a fresh process (so its peak RSS is its own) on a workspace under a temporary folder. The
baseline, run in the same benchmark on the same tables, is a Parquet read + write of the generated world: the
ratio says how much each stage costs beyond the I/O it cannot avoid. Budget (issue 2): at 1M users, generate +
validate within 5 minutes and each stage within 8 GiB on a 2-core machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BUDGET_SECONDS, BUDGET_BYTES = 300.0, 8 * 2**30
PROMPTS_TARGETS = {"1m": (60.0, 8 * 2**30)}  # issue 14: prompts for 1M users within 60 s and 8 GiB on 2 cores


def _run_stage(stage: str, params_file: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.stage", stage, str(params_file)], cwd=REPO,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{stage} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_scale(scale: str, root: Path, with_prompts: bool) -> list[dict]:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["world"]["scale"] = scale
    root.mkdir(parents=True, exist_ok=True)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    rows = [_run_stage("generate", params_file), _run_stage("io_floor", params_file),
            _run_stage("validate", params_file)]
    if with_prompts:
        rows += [_run_stage("prompts", params_file), _run_stage("naive_prompts", params_file)]
        manifest = json.loads((root / raw["prompts"]["out_dir"] / "card.json").read_text())
        rows[-2]["pairs"] = manifest["counts"].get("sft/train", 0)
    events = json.loads((root / raw["data"]["generated_dir"] / "manifest.json").read_text())["rows"]["events"]
    for row in rows:
        row.update(scale=scale, events=events)
    return rows


def report(rows: list[dict]) -> str:
    lines = ["| scale | events | stage | seconds | peak GiB | × io floor |", "|---|---:|---|---:|---:|---:|"]
    for scale in dict.fromkeys(r["scale"] for r in rows):
        group = [r for r in rows if r["scale"] == scale and r["stage"] in ("generate", "io_floor", "validate")]
        floor = next(r["seconds"] for r in group if r["stage"] == "io_floor")
        for r in group:
            lines.append(f"| {scale} | {r['events']:,} | {r['stage']} | {r['seconds']:.1f} | "
                         f"{r['peak_bytes'] / 2**30:.2f} | {r['seconds'] / floor:.2f} |")
        total = sum(r["seconds"] for r in group if r["stage"] != "io_floor")
        peak = max(r["peak_bytes"] for r in group if r["stage"] != "io_floor")
        verdict = "within" if total <= BUDGET_SECONDS and peak <= BUDGET_BYTES else "OVER"
        lines.append(f"| {scale} | | generate + validate | {total:.1f} | {peak / 2**30:.2f} | "
                     f"{verdict} budget ({BUDGET_SECONDS:.0f} s, {BUDGET_BYTES / 2**30:.0f} GiB) |")
    return "\n".join(lines)


def prompts_report(rows: list[dict]) -> str:
    lines = ["| scale | stage | seconds | peak GiB | s / 1k pairs | × naive Python | target |",
             "|---|---|---:|---:|---:|---:|---|"]
    for scale in dict.fromkeys(r["scale"] for r in rows if r["stage"] == "prompts"):
        ours = next(r for r in rows if r["scale"] == scale and r["stage"] == "prompts")
        naive = next(r for r in rows if r["scale"] == scale and r["stage"] == "naive_prompts")
        per_pair = ours["seconds"] / max(ours["pairs"], 1)
        target = ""
        if scale in PROMPTS_TARGETS:
            seconds, peak = PROMPTS_TARGETS[scale]
            met = ours["seconds"] <= seconds and ours["peak_bytes"] <= peak
            target = f"≤ {seconds:.0f} s and {peak / 2**30:.0f} GiB: {'met' if met else 'MISSED'}"
        lines.append(f"| {scale} | prompts build ({ours['pairs']:,} SFT train rows, all outputs) | "
                     f"{ours['seconds']:.1f} | {ours['peak_bytes'] / 2**30:.2f} | {1000 * per_pair:.3f} | "
                     f"{per_pair / naive['seconds_per_pair']:.3f} | {target} |")
        lines.append(f"| {scale} | naive per-pair Python (sample) | | | {1000 * naive['seconds_per_pair']:.3f} | 1.000 "
                     "| |")
    return "\n".join(lines)


def main(scales: list[str], prompt_scales: set[str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="leadre-bench-") as tmp:
        for scale in scales:
            rows += bench_scale(scale, Path(tmp) / scale, with_prompts=scale in prompt_scales)
            print(f"{scale}: done", flush=True)
    return rows
