"""report.html as a reviewer reads it: the gate's verdict first, lift intervals, a narrow headline table with the
rest folded, what was run (params, data, commit, MLflow run), segments, integer counts, a readable HR@K plot; and,
in a real headless Chromium, a page that renders and fits 1280 px without scrolling sideways.

The summary is made by the evaluation's own scoring and bootstrap code from small seeded lists (no training), and
the provenance from a real MLflow run.
"""

from __future__ import annotations

import json

import html
import os
import re
import shutil
import subprocess
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from leadre.config import Params
from leadre.evaluate import CANDIDATE
from leadre.evaluate.gate import decide
from leadre.evaluate.report import HEADLINE, WIDTH_PX, hr_at_k_figure, run_provenance, write_reports
from leadre.evaluate.run import FUSION, EvalSet, lift_intervals, score_lists
from tests.conftest import write_params

USERS, ADS = 120, 60
BASELINES = ["popularity", "itemknn"]


def _eval_set(rng: np.random.Generator, params: Params) -> EvalSet:
    cutoff = pd.Timestamp("2026-10-25", tz="UTC")
    ads = pd.DataFrame({"ad_id": np.arange(ADS), "industry": rng.integers(0, 6, ADS),
                        "ecpm": rng.lognormal(3, 0.5, ADS),
                        # a third of the ads launched inside evaluate.new_ad_days of the cut-off: "new"
                        "created_at": cutoff - pd.to_timedelta(np.where(np.arange(ADS) % 3 == 0, 3, 90), unit="D")})
    history = rng.integers(0, 6, USERS)  # ad engagements before the cut-off; 0 or 1 makes a cold user
    engagements = pd.DataFrame({"user_id": np.repeat(np.arange(USERS), history),
                                "ad_id": rng.integers(0, ADS, history.sum())})
    return EvalSet(user_ids=np.arange(USERS), prompts=[[] for _ in range(USERS)],
                   relevant=[rng.choice(ADS, rng.integers(1, 4), replace=False) for _ in range(USERS)],
                   exclude=None, cutoff=cutoff, engagements=engagements, candidates=np.arange(ADS),
                   ads=ads.set_index("ad_id"))


def _summary(params: Params, champion: bool = False) -> dict[str, Any]:
    """An evaluation summary in run_evaluate's shape, scored by its own functions on seeded random lists."""
    rng = np.random.default_rng(7)
    data = _eval_set(rng, params)
    k = max(params.evaluate.ks)
    llms = [CANDIDATE, "sft", *(["champion"] if champion else [])]
    per_user: dict[str, pd.DataFrame] = {}
    methods = {}
    for name in [*llms, *BASELINES, FUSION]:
        # each user's relevant ads planted at a method-specific rate, so the methods differ
        hit_rate = {"itemknn": 0.6, CANDIDATE: 0.5, FUSION: 0.55}.get(name, 0.3)
        lists = np.stack([rng.permutation(ADS)[:k] for _ in range(USERS)])
        for row, relevant in zip(lists, data.relevant):
            if rng.random() < hit_rate:
                row[rng.integers(0, 10)] = relevant[0] if relevant[0] not in row else row[0]
        methods[name] = score_lists(params, data, lists, per_user, name)
    references = BASELINES + (["champion"] if champion else [])
    lifts = lift_intervals(params, per_user, [CANDIDATE, "sft", FUSION], references)
    return {"split": "test", "users": USERS, "cutoff": str(data.cutoff), "methods": methods,
            "champion_version": "3" if champion else None, "baselines": BASELINES, "lifts": lifts,
            "tradeoff": [{"value_weight": w, "diversity_penalty": 0.0, "ndcg@10": 0.1 - w / 50,
                          "mean_ecpm": 20 + 5 * w, "industry_diversity": 0.5} for w in (0.0, 1.0)]}


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Params, dict[str, Any], str, Path]:
    """(params, summary with its run record, page, folder) of one report written inside a real MLflow run, as
    `leadre evaluate` does."""
    from leadre.tracking import step_run

    root = tmp_path_factory.mktemp("report")
    params = write_params(root, {"evaluate.bootstrap.resamples": 200})
    summary = _summary(params)
    with step_run(params, "evaluate") as run:
        record = {"run_id": run.info.run_id, "provenance": run_provenance(params, run),
                  "seconds": dict.fromkeys(summary["methods"], 1.5)}
    out = params.path(params.evaluate.reports_dir)
    write_reports(params, summary, record, out)
    return params, {**summary, **record}, (out / "report.html").read_text(encoding="utf-8"), out


def _table(page: str, table_id: str) -> str:
    found = re.search(rf"<table id={table_id}>(.*?)</table>", page, re.S)
    assert found, f"no table {table_id}"
    return found.group(1)


def test_the_gate_verdict_and_its_reasons_come_first(reported):
    params, summary, page, _ = reported
    decision = decide(summary["methods"], summary["lifts"], params.gate, summary["baselines"])
    verdict = "passes" if decision.passed else "does not pass"
    gate_at = page.index("<section id=gate")
    assert gate_at < page.index("Findings") < page.index("Lift over each reference") < page.index("Headline")
    assert f"Gate: the candidate {verdict}" in page
    assert decision.reasons and all(html.escape(reason) in page for reason in decision.reasons)
    assert f"the best baseline, {decision.reference} (no champion yet)" in page
    assert "Champion version" not in page and "None" not in page
    assert "no champion yet" in page


def test_a_champion_is_the_reference_when_there_is_one(tmp_path):
    params = write_params(tmp_path, {"evaluate.bootstrap.resamples": 100})
    summary = _summary(params, champion=True)
    write_reports(params, summary, {}, tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "champion version 3" in page and "Compared with the champion (version 3)" in page
    assert "ndcg@10 vs champion" in page


def test_a_gate_that_cannot_decide_says_why_instead_of_failing_the_report(tmp_path):
    params = write_params(tmp_path, {"gate.guardrails": {"no_such_metric": 0.1}})
    write_reports(params, _summary(params), {}, tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "Gate: cannot decide" in page and "no_such_metric" in page


def test_lift_intervals_are_shown_for_every_reference(reported):
    _, summary, page, _ = reported
    for method, by_reference in summary["lifts"].items():
        for reference, by_metric in by_reference.items():
            lift = by_metric["ndcg@10"]
            assert f"ndcg@10 vs {reference}" in page
            assert f"{1 + lift['lift']:.3f}× [{1 + lift['low']:.3f}, {1 + lift['high']:.3f}]" in page


def test_headline_table_has_at_most_eight_columns_and_the_rest_is_folded(reported):
    _, summary, page, _ = reported
    headline = _table(page, "headline")
    header = re.findall(r"<th>(.*?)</th>", headline.split("</tr>")[0])
    assert 6 <= len(header) <= 8 and header[0] == "method" and set(header[1:]) <= set(HEADLINE)
    folded = page[page.index("<details id=all-metrics>"):]
    folded = folded[:folded.index("</details>")]
    every_metric = {metric for values in summary["methods"].values() for metric in values}
    assert all(f"<td>{html.escape(metric)}</td>" in folded for metric in every_metric)


def test_counts_print_as_integers_and_segments_have_their_own_tables(reported):
    _, summary, page, _ = reported
    values = summary["methods"][CANDIDATE]
    new_ad_users = values["new_ads.users"]
    assert new_ad_users == int(new_ad_users) > 0
    assert f"new ads ({int(new_ad_users)} users)" in page
    cold = round(values["cold_users.share"] * USERS)
    assert f"cold users ({cold} of {USERS})" in page
    assert not re.search(r">\d+\.0000<", page.replace(">0.0000<", "")), "a count printed as a float"
    assert "<h3>Cold and warm users</h3>" in page and "<h3>New and old ads</h3>" in page


def test_what_was_run_names_the_params_data_commit_and_mlflow_run(reported):
    params, summary, page, _ = reported
    provenance = summary["provenance"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance["commit"] == commit and commit in page
    assert provenance["run_id"] == summary["run_id"] and summary["run_id"] in page
    assert provenance["data_snapshot"] == params.data.snapshot_time.isoformat() in page
    assert str(params.root.resolve()) not in json.dumps(provenance)  # a DVC output: the same in every clone
    assert html.escape(params.model.base_model) in page and "All params (params.yaml with overrides)" in page
    assert f"resamples: {params.evaluate.bootstrap.resamples}" in page  # the full params, folded
    prior = params.decode.prior  # how the lists were ranked, not only what trained them
    assert f"+ {prior.now_weight:g}·log p_now (half-life {prior.half_life_days:g} d) − {prior.train_weight:g}·log p_train" in page
    sids = params.sids  # and what the model's answers are made of: S-IDs of another quantiser are another model
    assert f"{sids.method}, {sids.levels} levels × {sids.codebook_size} codes + a disambiguation token" in page
    fusion = params.fusion  # and how the fusion row merged its channels
    assert (f"{fusion.method} of the candidate ({fusion.llm_weight:g}) and {fusion.channel} "
            f"({fusion.channel_weight:g})") in page


def test_hr_at_k_plot_has_one_line_per_method_on_the_ks_scored(reported):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params, summary, _, out = reported
    curve = pd.read_csv(out / "hr_at_k.csv")
    figure = hr_at_k_figure(curve, params.evaluate.ks, "test")
    axis = figure.axes[0]
    assert [line.get_label() for line in axis.get_lines()] == list(summary["methods"])
    assert list(axis.get_xticks()) == list(params.evaluate.ks)
    assert [tick.get_text() for tick in axis.get_xticklabels()] == [str(k) for k in params.evaluate.ks]
    styles = {(line.get_linestyle(), line.get_marker()) for line in axis.get_lines()}
    assert len(styles) == len(summary["methods"]), "two methods drawn alike would hide each other when they tie"
    plt.close(figure)


# ------------------------------------------------------------------------------------------------ in a browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# Loads the report in a 1280 px wide frame of the same origin, unfolds every <details> (a folded table must fit too)
# and writes the layout width into the page, which --dump-dom prints: the report itself carries no test code.
PROBE = f"""<!doctype html><html><body style="margin:0">
<iframe id=report src="report.html" style="width:{WIDTH_PX}px;height:900px;border:0"></iframe>
<pre id=out>not loaded</pre><script>
report.onload = () => {{
  report.contentDocument.querySelectorAll("details").forEach(folded => {{ folded.open = true; }});
  const page = report.contentDocument.documentElement;
  document.getElementById("out").textContent = "scrollWidth=" + page.scrollWidth + " scrollHeight=" + page.scrollHeight;
}};
</script></body></html>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = "no chromium on PATH: install Debian's package (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _run_chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=180)


@pytest.fixture
def served(reported):
    """The report folder over HTTP on a loopback port (the probe frame must share the report's origin)."""
    _, _, _, out = reported
    (out / "probe.html").write_text(PROBE, encoding="utf-8")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # the test's output is Chromium's, not an access log
        pass


def test_report_renders_in_headless_chromium_and_fits_1280_px(served, tmp_path):
    from PIL import Image

    probe = _run_chromium("--window-size=1400,1000", "--virtual-time-budget=15000", "--dump-dom",
                          f"{served}/probe.html")
    found = re.search(r"scrollWidth=(\d+) scrollHeight=(\d+)", probe.stdout)
    assert found, f"the report did not load in Chromium: {probe.stdout[-2000:]} {probe.stderr[-2000:]}"
    width, height = map(int, found.groups())
    assert width <= WIDTH_PX, f"the page is {width} px wide: it scrolls sideways at {WIDTH_PX} px"
    assert height > 1500  # every section rendered, plots included

    shot = tmp_path / "report.png"
    taken = _run_chromium(f"--window-size={WIDTH_PX},{min(height, 4000)}", f"--screenshot={shot}",
                          f"{served}/report.html")
    assert shot.exists(), taken.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size[0] == WIDTH_PX
    grey = np.asarray(image.convert("L"))
    assert (grey < 200).mean() > 0.02, "the screenshot is (nearly) blank"
    colours = len(image.getcolors(maxcolors=1 << 20) or [])
    assert colours > 50, f"only {colours} colours: no plots or verdict colours rendered"
