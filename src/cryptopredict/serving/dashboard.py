"""The dashboard page: the latest prediction per coin with its uncertainty, and the monitor's rolling
accuracy per coin and the model's drift when the monitor provides them ("not available" otherwise).
Plotly draws the chart from a bundle the app serves itself (``/static/plotly.min.js``; no CDN), and the
page refreshes its data from ``/dashboard/data``."""

from __future__ import annotations

import functools
import html
import json

from cryptopredict.serving.schemas import DashboardData

PLOTLY_PATH = "/static/plotly.min.js"
DATA_PATH = "/dashboard/data"


@functools.cache
def plotly_js() -> bytes:
    """The plotly.js bundle shipped with the plotly package."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cryptopredict — latest predictions</title>
<link rel="icon" href="data:,">
<style>
 body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
 table {{ border-collapse: collapse; margin-top: 1em; }}
 th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
 th:first-child, td:first-child {{ text-align: left; }}
 .na {{ color: #999; }} .err {{ color: #b00; }}
</style>
<script src="{plotly}"></script></head>
<body>
<h1>Latest predictions</h1>
<p id="meta"></p>
<p id="error" class="err"></p>
<div id="prediction-chart" style="width: 100%; max-width: 1000px; height: 420px;"></div>
<table id="coin-table"><thead><tr><th>coin</th><th>signal</th><th>P(sell)</th><th>P(hold)</th><th>P(buy)</th>
<th>confidence</th><th>σ (horizon)</th><th>interval</th><th>epistemic</th><th>aleatoric</th><th>position</th>
<th>rolling accuracy</th><th>resolved</th></tr></thead><tbody></tbody></table>
<p id="monitor"></p>
<p id="drift"></p>
<script>
const REFRESH_MS = {refresh_ms};
function fmt(x, d) {{ return (x === null || x === undefined) ? null : Number(x).toFixed(d); }}
function cell(text, cls) {{ const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }}
function na(x, d) {{ const v = fmt(x, d); return v === null ? cell("not available", "na") : cell(v); }}
function render(data) {{
  const coins = data.coins;
  const ok = coins.filter(c => c.prediction);
  const x = ok.map(c => c.symbol);
  const traces = ["SELL", "HOLD", "BUY"].map((k, i) => ({{
    type: "bar", name: k, x: x, y: ok.map(c => c.prediction.probabilities[k]),
    marker: {{color: ["#d62728", "#7f7f7f", "#2ca02c"][i]}},
    customdata: ok.map(c => [c.prediction.uncertainty.epistemic, c.prediction.uncertainty.aleatoric]),
    hovertemplate: "%{{x}} " + k + ": %{{y:.3f}}<br>epistemic %{{customdata[0]:.4f}}, aleatoric %{{customdata[1]:.3f}}<extra></extra>"
  }}));
  traces.push({{type: "scatter", mode: "markers", name: "confidence", x: x, y: ok.map(c => c.prediction.confidence),
    error_y: {{type: "data", array: ok.map(c => Math.sqrt(c.prediction.uncertainty.epistemic)), visible: true}},
    marker: {{color: "#1f77b4", size: 10, symbol: "diamond"}}}});
  Plotly.react("prediction-chart", traces, {{barmode: "stack", yaxis: {{title: "probability", range: [0, 1.05]}},
    title: "class probabilities and calibrated confidence (error bar: √ epistemic)", legend: {{orientation: "h"}}}},
    {{displaylogo: false, responsive: true}});
  const tbody = document.querySelector("#coin-table tbody");
  tbody.replaceChildren();
  for (const c of coins) {{
    const tr = document.createElement("tr"); tr.className = "coin-row"; tr.dataset.symbol = c.symbol;
    tr.appendChild(cell(c.symbol));
    const p = c.prediction;
    if (p) {{
      tr.appendChild(cell(p.signal));
      for (const k of ["SELL", "HOLD", "BUY"]) tr.appendChild(cell(fmt(p.probabilities[k], 3)));
      tr.appendChild(cell(fmt(p.confidence, 3))); tr.appendChild(cell(fmt(p.predicted_volatility, 4)));
      tr.appendChild(cell("[" + fmt(p.interval.low, 4) + ", " + fmt(p.interval.high, 4) + "] @" + p.interval.level));
      tr.appendChild(cell(fmt(p.uncertainty.epistemic, 5))); tr.appendChild(cell(fmt(p.uncertainty.aleatoric, 3)));
      tr.appendChild(cell(fmt(p.position_size, 3)));
    }} else {{
      const td = cell(c.error || "no prediction", "err"); td.colSpan = 10; tr.appendChild(td);
    }}
    tr.appendChild(na(c.rolling_accuracy, 3)); tr.appendChild(na(c.resolved, 0));
    tbody.appendChild(tr);
  }}
  document.getElementById("meta").textContent = "model " + (data.model_version || "none") + ", latest bar " +
    (data.as_of || "none") + (data.data_age_hours === null ? "" : ", data age " + data.data_age_hours.toFixed(1) + " h");
  document.getElementById("error").textContent = data.error || "";
  document.getElementById("monitor").textContent = "monitor: " + data.monitor +
    (data.accuracy_window_hours ? " (rolling accuracy over " + data.accuracy_window_hours + " h)" : "") +
    (data.monitor_notes.length ? "; " + data.monitor_notes.join("; ") : "");
  const names = {{prediction_max_psi: "prediction drift (max PSI)", feature_max_psi: "feature drift (max PSI)",
                 feature_share_drifted: "share of drifted features"}};
  document.getElementById("drift").textContent = "drift: " + Object.keys(names).map(k =>
    names[k] + " " + ((data.drift[k] === null || data.drift[k] === undefined) ? "not available"
                                                                                 : Number(data.drift[k]).toFixed(3))).join(", ");
}}
async function refresh() {{
  try {{ const r = await fetch("{data_path}", {{cache: "no-store"}}); if (r.ok) render(await r.json()); }}
  catch (e) {{ document.getElementById("error").textContent = "refresh failed: " + e; }}
}}
render({initial});
setInterval(refresh, REFRESH_MS);
</script>
</body></html>
"""


def render_dashboard(data: DashboardData, refresh_seconds: int) -> str:
    """The page, with the current data embedded (the chart draws without waiting for a refresh)."""
    initial = json.dumps(data.model_dump(mode="json")).replace("</", "<\\/")
    return _PAGE.format(plotly=html.escape(PLOTLY_PATH), data_path=html.escape(DATA_PATH),
                        refresh_ms=int(refresh_seconds * 1000), initial=initial)
