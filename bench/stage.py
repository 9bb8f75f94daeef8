"""Run one pipeline stage in this process and print its wall time and peak memory as JSON (used by bench.data)."""

from __future__ import annotations

import json
import resource
import sys
import time

from leadre.config import load_params


def io_floor(params) -> None:
    """The baseline: read the generated tables and write them back, the I/O any stage pays at least."""
    from leadre.data.tables import read_manifest, read_tables, write_tables

    source = params.path(params.data.generated_dir)
    write_tables(read_tables(source), params.path("bench_io_copy"), read_manifest(source))


def main(stage: str, params_file: str) -> None:
    params = load_params(params_file)
    started = time.perf_counter()
    if stage == "generate":
        from leadre.data.generate import run_generate
        run_generate(params)
    elif stage == "validate":
        from leadre.data.validate import run_validate
        run_validate(params)
    elif stage == "io_floor":
        io_floor(params)
    elif stage == "prompts":
        from bench.prompts import write_synthetic_sids
        from leadre.prompts.build import run_build_prompts
        write_synthetic_sids(params)
        started = time.perf_counter()  # the S-ID table is set-up, not part of the measured stage
        run_build_prompts(params)
    elif stage == "naive_prompts":
        from bench.prompts import naive_render_seconds_per_pair
        started = time.perf_counter()
        seconds_per_pair = naive_render_seconds_per_pair(params)
        print(json.dumps({"stage": stage, "seconds_per_pair": seconds_per_pair, "seconds": seconds_per_pair,
                          "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
        return
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({"stage": stage, "seconds": seconds, "peak_bytes": peak}))


if __name__ == "__main__":
    main(*sys.argv[1:])
