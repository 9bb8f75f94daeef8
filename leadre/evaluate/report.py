"""The evaluation report: DVC plot data (CSV), PNG plots and one self-contained HTML page a reviewer can open.

The HTML says in words which method leads on the primary metric and where a baseline is ahead of the candidate,
so a reader does not have to find it in the table.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd

from leadre.config import Params
from leadre.evaluate import CANDIDATE

HR_CURVE = "hr_at_k.csv"
TRADEOFF = "tradeoff.csv"


def write_reports(params: Params, summary: dict[str, Any], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker or a pod
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    methods = summary["methods"]
    ks = params.evaluate.ks
    curve = pd.DataFrame([{"method": name, "k": k, "hr": values[f"hr@{k}"], "ndcg": values[f"ndcg@{k}"]}
                          for name, values in methods.items() for k in ks])
    curve.to_csv(out_dir / HR_CURVE, index=False)
    tradeoff = pd.DataFrame(summary["tradeoff"])
    tradeoff.to_csv(out_dir / TRADEOFF, index=False)

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, group in curve.groupby("method", sort=False):
        axis.plot(group["k"], group["hr"], marker="o", label=name)
    axis.set(xlabel="K", ylabel="HitRate@K", title=f"HitRate@K on the {summary['split']} split")
    axis.legend()
    figure.savefig(out_dir / "hr_at_k.png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    if not tradeoff.empty:
        figure, axis = plt.subplots(figsize=(6, 4))
        for penalty, group in tradeoff.groupby("diversity_penalty"):
            axis.plot(group["mean_ecpm"], group["ndcg@10"], marker="o", label=f"diversity penalty {penalty:g}")
            for _, row in group.iterrows():
                axis.annotate(f"λ={row['value_weight']:g}", (row["mean_ecpm"], row["ndcg@10"]), fontsize=7)
        axis.set(xlabel="mean eCPM of recommended ads", ylabel="NDCG@10", title="Relevance vs business value")
        axis.legend()
        figure.savefig(out_dir / "tradeoff.png", dpi=100, bbox_inches="tight")
        plt.close(figure)
    (out_dir / "report.html").write_text(_html(params, summary, out_dir), encoding="utf-8")


def findings(params: Params, methods: dict[str, dict[str, float]], candidate: str = CANDIDATE) -> list[str]:
    """Plain sentences: who leads on the primary metric, and every baseline that beats the candidate on a metric."""
    primary = params.gate.primary_metric
    ranked = sorted(methods, key=lambda name: methods[name][primary], reverse=True)
    lines = [f"On {primary}, the order is: " + ", ".join(f"{n} {methods[n][primary]:.4f}" for n in ranked) + "."]
    watched = [primary, "hr@10", "hr@20", "mrr", "coverage", "industry_diversity", "mean_ecpm"]
    for name, values in methods.items():
        if name == candidate:
            continue
        ahead = [f"{metric} ({values[metric]:.4f} vs {methods[candidate][metric]:.4f})" for metric in watched
                 if metric in values and values[metric] > methods[candidate][metric]]
        if ahead:
            lines.append(f"{name} is ahead of the candidate on " + ", ".join(ahead) + ".")
    return lines


def lift_verdict(lift: dict[str, float]) -> str:
    """A lift interval in words: a difference inside the noise is a tie."""
    if any(lift[end] != lift[end] for end in ("lift", "low", "high")):  # NaN: undefined
        return "undefined"
    if lift["low"] > 0:
        return "ahead"
    if lift["high"] < 0:
        return "behind"
    return "tie"


def _lift_table(summary: dict[str, Any]) -> str:
    lifts = summary.get("lifts") or {}
    if not lifts:
        return ""
    references = sorted({ref for by_ref in lifts.values() for ref in by_ref})
    metrics = ("ndcg@10", "hr@10")
    confidence = next(iter(next(iter(next(iter(lifts.values())).values())).values()))["confidence"]
    header = "".join(f"<th>{html.escape(f'{metric} vs {ref}')}</th>" for ref in references for metric in metrics)
    rows = []
    for method, by_ref in lifts.items():
        cells = []
        for ref in references:
            for metric in metrics:
                lift = by_ref.get(ref, {}).get(metric)
                cells.append("<td></td>" if lift is None else
                             f"<td>{1 + lift['lift']:.3f}× [{1 + lift['low']:.3f}, {1 + lift['high']:.3f}] "
                             f"{lift_verdict(lift)}</td>")
        rows.append(f"<tr><td>{html.escape(method)}</td>{''.join(cells)}</tr>")
    return (f"<h2>Lift over each reference ({confidence:.0%} paired bootstrap interval over users)</h2>"
            f"<p>Ratio of means and its interval; \"tie\" when the interval holds 1×.</p>"
            f"<table><tr><th>method</th>{header}</tr>{''.join(rows)}</table>")


def _image(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'


def _html(params: Params, summary: dict[str, Any], out_dir: Path) -> str:
    methods = summary["methods"]
    columns = [c for c in next(iter(methods.values())) if "." not in c] + \
              sorted({c for v in methods.values() for c in v if "." in c})
    header = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *columns])
    body = "".join("<tr><td>" + html.escape(name) + "</td>" + "".join(
        f"<td>{values.get(c, float('nan')):.4f}</td>" for c in columns) + "</tr>" for name, values in methods.items())
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in findings(params, methods))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>LEADRE evaluation</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>LEADRE offline evaluation</h1>
<p>Split <b>{html.escape(summary['split'])}</b>, cut-off {html.escape(summary['cutoff'])}, {summary['users']} users;
same candidates (live ads) and exclusions for every method. Champion version:
{html.escape(str(summary['champion_version']))}.</p>
<h2>Findings</h2><ul>{notes}</ul>
{_lift_table(summary)}
<h2>Metrics</h2><table><tr>{header}</tr>{body}</table>
<h2>Plots</h2>{_image(out_dir / 'hr_at_k.png')}{_image(out_dir / 'tradeoff.png')}
</body></html>
"""
