"""The evaluation report: DVC plot data (CSV), PNG plots and one self-contained HTML page a reviewer can sign off on.

The page reads top to bottom as a review does: the gate's verdict and its reasons, what was run (params, data,
commit, MLflow run), the lift intervals, a headline table (the full one folded), segments, plots. The findings say
in words which method leads on the primary metric and where a baseline is ahead of the candidate.

The verdict is the one `leadre gate` will reach: the gate decides from this evaluation's summary and `gate` params
alone (`leadre.evaluate.gate.decide`), so the report runs the same function on the same summary when it is
written. `leadre gate` records the decision (reports/gate.json, the registry's tags); if `gate` params change after
the evaluation, that record is the one to trust, and the page says which params it used.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import pandas as pd

from leadre.config import FusionParams, Params
from leadre.evaluate import CANDIDATE

HR_CURVE = "hr_at_k.csv"
TRADEOFF = "tradeoff.csv"
# the headline table: the gate's metrics and what a reviewer weighs against them; the rest is folded
HEADLINE = ("ndcg@10", "hr@10", "hr@20", "mrr", "coverage", "industry_diversity", "mean_ecpm")
PERCENT = ("validity", "coverage")  # shares of lists / of the catalogue, printed as percentages
WIDTH_PX = 1280  # the page fits a laptop screen without scrolling sideways (tests/model/test_report.py checks it)


def write_reports(params: Params, summary: dict[str, Any], record: dict[str, Any], out_dir: Path) -> None:
    """The plot data, PNGs and report.html of an evaluation: its `summary` and its run `record` (run.json's)."""
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

    figure = hr_at_k_figure(curve, ks, summary["split"])
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
    (out_dir / "report.html").write_text(_html(params, {**summary, **record}, out_dir), encoding="utf-8")


_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def hr_at_k_figure(curve: pd.DataFrame, ks: list[int], split: str):
    """HitRate@K, one line per method: the candidate drawn bold, the others told apart by line style and marker
    as well as colour (methods that tie would otherwise hide each other), K on an axis of exactly the Ks scored."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4))
    for i, (name, group) in enumerate(curve.groupby("method", sort=False)):
        lead = name == CANDIDATE
        axis.plot(group["k"], group["hr"], label=name, linestyle=_STYLES[i % len(_STYLES)],
                  marker=_MARKERS[i % len(_MARKERS)], linewidth=2.5 if lead else 1.5, zorder=3 if lead else 2,
                  alpha=1.0 if lead else 0.85)
    axis.set_xticks(list(ks), [str(k) for k in ks])
    axis.set(xlabel="K (list length)", ylabel="HitRate@K", title=f"HitRate@K on the {split} split")
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


def findings(params: Params, methods: dict[str, dict[str, float]], candidate: str = CANDIDATE) -> list[str]:
    """Plain sentences: who leads on the primary metric, and every baseline that beats the candidate on a metric."""
    primary = params.gate.primary_metric
    ranked = sorted(methods, key=lambda name: methods[name][primary], reverse=True)
    lines = [f"On {primary}, the order is: " + ", ".join(f"{n} {fmt(primary, methods[n][primary])}"
                                                          for n in ranked) + "."]
    watched = [primary, "hr@10", "hr@20", "mrr", "coverage", "industry_diversity", "mean_ecpm"]
    for name, values in methods.items():
        if name == candidate:
            continue
        ahead = [f"{metric} ({fmt(metric, values[metric])} vs {fmt(metric, methods[candidate][metric])})"
                 for metric in watched
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


def _lift_table(params: Params, summary: dict[str, Any]) -> str:
    """One table per metric (the gate's primary first), a row per method and a column per reference: as narrow
    as the number of references, however many metrics the intervals cover."""
    lifts = summary.get("lifts") or {}
    if not lifts:
        return ""
    references = sorted({ref for by_ref in lifts.values() for ref in by_ref})
    metrics = sorted({metric for by_ref in lifts.values() for by_metric in by_ref.values() for metric in by_metric},
                     key=lambda metric: (metric != params.gate.primary_metric, metric))
    confidence = next(iter(next(iter(next(iter(lifts.values())).values())).values()))["confidence"]
    tables = []
    for metric in metrics:
        header = "".join(f"<th>{html.escape(f'{metric} vs {ref}')}</th>" for ref in references)
        rows = []
        for method, by_ref in lifts.items():
            cells = []
            for ref in references:
                lift = by_ref.get(ref, {}).get(metric)
                cells.append("<td></td>" if lift is None else
                             f"<td>{1 + lift['lift']:.3f}× [{1 + lift['low']:.3f}, {1 + lift['high']:.3f}] "
                             f"{lift_verdict(lift)}</td>")
            rows.append(f"<tr><td>{html.escape(method)}</td>{''.join(cells)}</tr>")
        tables.append(f"<table class=lifts><tr><th>method</th>{header}</tr>{''.join(rows)}</table>")
    return (f"<h2>Lift over each reference ({confidence:.0%} paired bootstrap interval over users)</h2>"
            f"<p>Ratio of means and its interval; \"tie\" when the interval holds 1×.</p>" + "".join(tables))


def _image(path: Path) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'


def fmt(metric: str, value: Any) -> str:
    """A metric as a reader wants it: counts as integers, shares as percentages, eCPM in currency units."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if metric == "users" or metric.endswith(".users"):
        return f"{int(round(value)):d}"
    if metric.endswith(".share") or metric in PERCENT:
        return f"{value:.1%}"
    if metric == "mean_ecpm":
        return f"{value:.2f}"
    return f"{value:.4f}"


def run_provenance(params: Params, run: Any) -> dict[str, Any]:
    """What a reviewer needs to find and reproduce this evaluation: its MLflow run, the code and the data versions."""
    from leadre.tracking import USER_TRACKING_URI

    tags = dict(run.data.tags)
    try:
        snapshot = params.data.snapshot_time.isoformat()
    except Exception as err:  # the report still says what it can; the data's snapshot is one field of many
        snapshot = f"unknown ({err})"
    # the store as configured, not resolved against this clone's folder: the report names the store a reader opens
    store = USER_TRACKING_URI or params.tracking.tracking_uri
    return {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": store,
            "retrain_id": tags.get("leadre.retrain_id", ""), "commit": tags.get("mlflow.source.git.commit", ""),
            "dirty": tags.get("git.dirty", ""), "data_snapshot": snapshot, "data_source": str(params.data.source_dir),
            "inputs": {key[len("data."):-len(".md5")]: value for key, value in sorted(tags.items())
                       if key.startswith("data.") and key.endswith(".md5")}}


def _row(cells: list[str], head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{cell}</{tag}>" for cell in cells) + "</tr>"


def _gate_section(params: Params, summary: dict[str, Any]) -> str:
    from dataclasses import asdict

    from leadre.evaluate.gate import decide

    gate = params.gate
    used = (f"gate params used: primary metric {html.escape(gate.primary_metric)}, low end of its lift interval "
            f"above {gate.min_relative_lift:+.2%}, guardrails "
            + (", ".join(f"{html.escape(m)} at most −{d:.0%}" for m, d in gate.guardrails.items()) or "none"))
    record = (f"<p class=note>The verdict <code>leadre gate</code> reaches from this evaluation ({used}). "
              f"<code>leadre gate</code> records it in {html.escape(str(gate.decision_file))} and the model "
              "registry; that record wins if the gate params changed since.</p>")
    try:
        decision = asdict(decide(summary["methods"], summary.get("lifts", {}), gate, summary.get("baselines", ())))
    except ValueError as err:
        return (f'<section id=gate class="verdict fail"><h2>Gate: cannot decide</h2>'
                f"<p>{html.escape(str(err))}</p>{record}</section>")
    passed = decision["passed"]
    reference = (f"the champion (version {html.escape(str(summary.get('champion_version')))})"
                 if decision["reference_kind"] == "champion" else
                 f"the best baseline, {html.escape(decision['reference'])} (no champion yet)")
    reasons = "".join(f"<li>{html.escape(reason)}</li>" for reason in decision["reasons"])
    guards = "".join(_row([html.escape(metric), fmt(metric, g["candidate"]), fmt(metric, g["reference"]),
                           "—" if math.isnan(g["relative_change"]) else f"{g['relative_change']:+.1%}",
                           f"−{g['max_drop']:.0%}",
                           "ok" if math.isfinite(g["relative_change"]) and g["relative_change"] >= -g["max_drop"]
                           else "<b>fails</b>"])
                     for metric, g in decision["guardrails"].items())
    guard_table = (f"<table><tr><th>guardrail</th><th>candidate</th><th>{html.escape(decision['reference'])}</th>"
                   f"<th>change</th><th>allowed</th><th></th></tr>{guards}</table>" if guards else "")
    title = "passes: may be promoted" if passed else "does not pass: will not be promoted"
    return (f'<section id=gate class="verdict {"pass" if passed else "fail"}">'
            f"<h2>Gate: the candidate {title}</h2><p>Compared with {reference}.</p>"
            f"<ul>{reasons}</ul>{guard_table}{record}</section>")


def _champion_line(summary: dict[str, Any]) -> str:
    version = summary.get("champion_version")
    if version is None:
        return "no champion yet: the gate compares the candidate with the best baseline"
    return f"champion version {html.escape(str(version))}, scored here as the <i>champion</i> row"


def _fusion_line(fusion: FusionParams) -> str:
    how = (f"LLM temperature {fusion.temperature:g}" if fusion.method == "mixture"
           else f"rank constant {fusion.rank_constant:g}")
    return (f"{fusion.method} of the candidate ({fusion.llm_weight:g}) and {html.escape(fusion.channel)} "
            f"({fusion.channel_weight:g}), {how}, each list read to {fusion.depth}")


def _what_was_run(params: Params, summary: dict[str, Any]) -> str:
    run = summary.get("provenance") or {}
    ev, dec, sft, dpo, sids = params.evaluate, params.decode, params.sft, params.dpo, params.sids
    rows = [
        ("model", f"{html.escape(params.model.base_model)}; SFT {sft.epochs:g} epochs at lr {sft.learning_rate:g}; "
                  f"DPO {dpo.epochs:g} epochs, β {dpo.beta:g}"),
        ("semantic IDs", f"{sids.method}, {sids.levels} levels × {sids.codebook_size} codes + a disambiguation token "
                         f"(up to {sids.max_collisions}); encoder {html.escape(sids.encoder)} in {sids.encoder_dtype}"),
        ("decoding", f"beam width {dec.beam_width}; popularity-shift prior: + {dec.prior.now_weight:g}·log p_now "
                     f"(half-life {dec.prior.half_life_days:g} d) − {dec.prior.train_weight:g}·log p_train; "
                     f"value weight λ {dec.value_weight:g}, diversity penalty {dec.diversity_penalty:g}"),
        ("fusion", _fusion_line(params.fusion)),
        ("evaluation", f"{html.escape(ev.protocol)} protocol, {html.escape(summary['split'])} split, cut-off "
                       f"{html.escape(summary['cutoff'])}, {fmt('users', summary['users'])} users"
                       + (f" (a sample of at most {ev.max_users})" if ev.max_users else "")
                       + f"; bootstrap {ev.bootstrap.resamples} resamples at {ev.bootstrap.confidence:.0%}"),
        ("champion", _champion_line(summary)),
        ("data", f"snapshot {html.escape(str(run.get('data_snapshot', '?')))}, source "
                 f"{html.escape(str(run.get('data_source', params.data.source_dir)))}"
                 + "".join(f"; {html.escape(name)} md5 <code>{html.escape(md5)}</code>"
                           for name, md5 in (run.get("inputs") or {}).items())),
        ("code", (f"commit <code>{html.escape(run['commit'])}</code>"
                  + (" with uncommitted changes" if run.get("dirty") == "true" else ""))
                 if run.get("commit") else "not a git checkout"),
        ("MLflow", _mlflow_link(run) if run.get("run_id") else "no run recorded"),
    ]
    full = html.escape(_params_yaml(params))
    return ("<h2>What was run</h2><table class=facts>" + "".join(_row([name, value]) for name, value in rows)
            + f"</table><details><summary>All params (params.yaml with overrides)</summary><pre>{full}</pre></details>")


def _mlflow_link(run: dict[str, Any]) -> str:
    uri, exp, run_id = run.get("tracking_uri", ""), run.get("experiment_id", ""), run["run_id"]
    where = f"run <code>{html.escape(run_id)}</code> in experiment {html.escape(str(exp))}"
    if run.get("retrain_id"):
        where += f" (retrain <code>{html.escape(run['retrain_id'])}</code>)"
    if uri.startswith(("http://", "https://")):
        url = f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
        return f'<a href="{html.escape(url)}">{where}</a>'
    return (f"{where} at <code>{html.escape(uri)}</code>; open with <code>mlflow ui --backend-store-uri "
            f"{html.escape(uri)}</code>, then /#/experiments/{html.escape(str(exp))}/runs/{html.escape(run_id)}")


def _params_yaml(params: Params) -> str:
    import yaml

    return yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False, width=110)


def _headline_table(params: Params, methods: dict[str, dict[str, float]]) -> str:
    primary = params.gate.primary_metric
    columns = [primary, *[c for c in HEADLINE if c != primary]][:len(HEADLINE)]
    head = _row(["method", *map(html.escape, columns)], head=True)
    body = "".join(_row([html.escape(name), *[fmt(c, values.get(c)) for c in columns]]) for name, values in
                   methods.items())
    return f"<h2>Headline metrics</h2><table id=headline>{head}{body}</table>"


def _all_metrics(summary: dict[str, Any]) -> str:
    """Every metric, one row each and one column per method (narrow however many metrics there are), folded."""
    methods, seconds = summary["methods"], summary.get("seconds") or {}
    names = list(methods)
    metrics = list(dict.fromkeys(c for values in methods.values() for c in values))
    rows = [_row(["metric", *map(html.escape, names)], head=True)]
    rows += [_row([html.escape(metric), *[fmt(metric, methods[n].get(metric)) for n in names]]) for metric in metrics]
    if seconds:
        rows.append(_row(["seconds to generate or fit",
                          *[f"{seconds[n]:.1f}" if n in seconds else "—" for n in names]]))
    return (f"<details id=all-metrics><summary>All {len(metrics)} metrics of every method</summary>"
            f"<table>{''.join(rows)}</table></details>")


def _segments(params: Params, summary: dict[str, Any]) -> str:
    """Who the candidate serves well: cold and warm users, new and old ads, each a small table."""
    methods, users = summary["methods"], summary["users"]
    ev = params.evaluate
    any_values = next(iter(methods.values()))

    def table(title: str, about: str, groups: list[tuple[str, str]]) -> str:
        head = ("<tr><th rowspan=2>method</th>" + "".join(f"<th colspan=2>{label}</th>" for _, label in groups)
                + "</tr><tr>" + "<th>hr@10</th><th>ndcg@10</th>" * len(groups) + "</tr>")
        body = "".join(_row([html.escape(name), *[fmt(m, values.get(f"{group}.{m}")) for group, _ in groups
                                                  for m in ("hr@10", "ndcg@10")]]) for name, values in
                       methods.items())
        return f"<h3>{title}</h3><p class=note>{about}</p><table class=segment>{head}{body}</table>"

    def count_of_share(group: str) -> str:
        share = any_values.get(f"{group}.share")
        return "?" if share is None else f"{int(round(share * users)):d} of {fmt('users', users)}"

    users_table = table(
        "Cold and warm users",
        f"Cold: {ev.cold_user_max_engagements} or fewer ad engagements before the cut-off.",
        [("cold_users", f"cold users ({count_of_share('cold_users')})"),
         ("warm_users", f"warm users ({count_of_share('warm_users')})")])
    ads_table = table(
        "New and old ads",
        f"New: launched at most {ev.new_ad_days} days before the cut-off. Each column scores the same lists against "
        "only the relevant ads of that kind, over the users who engaged with one.",
        [("new_ads", f"new ads ({fmt('users', any_values.get('new_ads.users'))} users)"),
         ("old_ads", f"old ads ({fmt('users', any_values.get('old_ads.users'))} users)")])
    return f"<h2>Segments</h2>{users_table}{ads_table}"


_CSS = f"""body{{font-family:sans-serif;margin:1.5em auto;max-width:{WIDTH_PX - 80}px;padding:0 1em;color:#222}}
table{{border-collapse:collapse;font-size:13px;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:3px 7px;
text-align:right}}td:first-child,th:first-child{{text-align:left}}th{{background:#f4f4f4}}
table.facts td{{text-align:left;vertical-align:top}}table.facts td:first-child{{font-weight:bold;white-space:nowrap}}
.verdict{{border-left:6px solid;padding:.3em 1em;margin:1em 0}}.pass{{border-color:#2a7;background:#eefaf2}}
.fail{{border-color:#c33;background:#fdf0f0}}.verdict h2{{margin:.4em 0}}.note{{color:#555;font-size:13px}}
pre{{white-space:pre-wrap;font-size:12px;background:#f8f8f8;padding:.5em}}code{{overflow-wrap:anywhere}}
img{{max-width:100%;height:auto}}details{{margin:.8em 0}}summary{{cursor:pointer;font-weight:bold}}"""


def _html(params: Params, summary: dict[str, Any], out_dir: Path) -> str:
    methods = summary["methods"]
    notes = "".join(f"<li>{html.escape(line)}</li>" for line in findings(params, methods))
    return f"""<!doctype html><html lang=en><head><meta charset="utf-8"><title>LEADRE evaluation</title>
<meta name=viewport content="width=device-width"><style>{_CSS}</style></head>
<body><h1>LEADRE offline evaluation</h1>
<p>Split <b>{html.escape(summary['split'])}</b>, cut-off {html.escape(summary['cutoff'])},
{fmt('users', summary['users'])} users; same candidates (live ads) and exclusions for every method;
{_champion_line(summary)}.</p>
{_gate_section(params, summary)}
<h2>Findings</h2><ul>{notes}</ul>
{_lift_table(params, summary)}
{_headline_table(params, methods)}
{_all_metrics(summary)}
{_segments(params, summary)}
{_what_was_run(params, summary)}
<h2>Plots</h2>{_image(out_dir / 'hr_at_k.png')}{_image(out_dir / 'tradeoff.png')}
</body></html>
"""
