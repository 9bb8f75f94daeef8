"""`python -m bench [--scales default,100k,1m]`: run the benchmarks and print a table (also saved as JSON)."""

from __future__ import annotations

import argparse

from bench import data, save_results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--scales", default="default,100k,1m", help="world scales from params.yaml")
    parser.add_argument("--prompt-scales", default="100k,1m", help="scales that also build prompts")
    args = parser.parse_args()
    rows = data.main(args.scales.split(","), set(args.prompt_scales.split(",")))
    print("Data: generate and validate\n")
    print(data.report(rows))
    if any(r["stage"] == "prompts" for r in rows):
        print("\nPrompts (synthetic S-IDs; S-ID build: python -m bench.sids)\n")
        print(data.prompts_report(rows))
    print(f"\nsaved {save_results('data', rows)}")


if __name__ == "__main__":
    main()
