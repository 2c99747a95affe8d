// The experiment page (one stable URL, the one that is shared): live loss curves, optimizer
// internals, curvature snapshots, the runs table, share / run again / cancel, exports.
//
// Loading: the experiment and all curves come in two requests (curves downsampled by the API),
// then the live stream is opened from the event id the experiment came with, so nothing that
// happens after the page's data was read is missed (points the page already has are skipped).
// Opened through a share link (`#share=`), the page is read-only: the controls that write are
// removed, and the API would refuse them anyway.

import { ApiError, credentials, del, download, get, post } from "./api.js";
import { CurvaturePanel } from "./curvature.js";
import { CurveChart } from "./curves.js";
import { byId, downloadText, el, formatTime, replace, startPage, statusBadge, toast, whenVisible } from "./dom.js";
import { openStream } from "./live.js";
import { LogPanels } from "./logs.js";
import { groupRuns } from "./optimizers.js";
import { isActive, renderRuns } from "./runs.js";
import { interpolate } from "./series.js";

const MAX_POINTS = 600; // per series: min/max-preserving, about one per pixel of a chart
const CURVES = [
  { metric: "train_loss", title: "Training loss", logY: true },
  { metric: "test_loss", title: "Test loss", logY: true, markers: true },
  { metric: "test_loss_avg", title: "Test loss of the averaged iterate", logY: true, markers: true },
  { metric: "test_accuracy", title: "Test accuracy", logY: false, markers: true },
];
const INTERNALS = [
  { metric: "damping", title: "Damping λ", logY: true },
  { metric: "alpha", title: "Step size α", logY: false },
  { metric: "mu", title: "Momentum μ", logY: false },
  { metric: "rho", title: "Reduction ratio ρ", logY: false },
  { metric: "update_norm", title: "Update norm ‖δ‖", logY: true },
];
const SYSTEM = [
  { metric: "cpu_percent", title: "Process CPU %", logY: false },
  { metric: "rss_mb", title: "Resident memory (MB)", logY: false },
  { metric: "gpu_memory_mb", title: "GPU memory (MB)", logY: false },
  { metric: "gpu_percent", title: "GPU utilisation %", logY: false },
];
const AXES = { step: "step", time: "training time (s)", examples: "examples seen" };
const EXAMPLES = "examples_seen";
const CURVE_METRICS = [...CURVES, ...INTERNALS, ...SYSTEM].map(({ metric }) => metric).concat(EXAMPLES);

const experimentId = decodeURIComponent(window.location.pathname.split("/").filter(Boolean).at(-1) ?? "");
const state = {
  experiment: null,
  groups: [],
  charts: new Map(), // metric → CurveChart
  axis: "step",
  examples: new Map(), // run id → {x: steps, y: examples seen}, to draw against examples
  latest: new Map(), // run id → {metric: newest value}
  curvature: null,
  logs: null, // LogPanels
  closeStream: null,
  refreshTimer: 0,
  zoomTimer: 0,
};

const apiPath = (suffix = "") => `/api/experiments/${encodeURIComponent(experimentId)}${suffix}`;

// ---- the x axis ------------------------------------------------------------------------------

/** The API's x for the current axis: examples seen are drawn from steps. */
const serverAxis = () => (state.axis === "time" ? "time" : "step");

/** Steps → examples seen of a run (by its `examples_seen` series); other axes unchanged. */
function fromServer(runId, xs) {
  if (state.axis !== "examples") return xs;
  const map = state.examples.get(runId);
  return map ? xs.map((step) => interpolate(map.x, map.y, step)) : [];
}

/** The API's x range for a zoomed range of the current axis. */
function serverRange([lo, hi]) {
  if (state.axis !== "examples") return [lo, hi];
  const map = state.examples.values().next().value;
  return map ? [interpolate(map.y, map.x, lo), interpolate(map.y, map.x, hi)] : [lo, hi];
}

function rememberExamples(runId, steps, values) {
  const map = state.examples.get(runId) ?? { x: [], y: [] };
  const last = map.x.at(-1) ?? -Infinity;
  steps.forEach((step, i) => {
    if (step > last) {
      map.x.push(step);
      map.y.push(values[i]);
    }
  });
  state.examples.set(runId, map);
}

// ---- curves ----------------------------------------------------------------------------------

function makeCharts(definitions, container) {
  for (const definition of definitions) {
    const node = el("div", { class: "chart", id: `chart-${definition.metric}` });
    const chart = new CurveChart(node, { ...definition, groups: state.groups, onZoom: (range) => zoom(chart, range) });
    chart.wrapper = el("div", { class: "hidden" }, node);
    container.append(chart.wrapper);
    state.charts.set(definition.metric, chart);
  }
}

/** Show the charts that have data (accuracy only for classifiers, internals only for K-FAC). */
function updateVisibility() {
  for (const chart of state.charts.values()) {
    const hidden = !chart.hasData();
    if (chart.wrapper.classList.contains("hidden") !== hidden) {
      chart.wrapper.classList.toggle("hidden", hidden);
      if (!hidden) chart.resize(); // it was drawn while hidden, at no size
    }
  }
  for (const [charts, panel] of [[INTERNALS, "internals-panel"], [SYSTEM, "system-panel"]]) {
    byId(panel).classList.toggle("hidden", !charts.some(({ metric }) => state.charts.get(metric).hasData()));
  }
}

/** Fetch `metrics` of every run on the current axis (all of it, or the x range `range`). */
async function fetchCurves(metrics, range = null) {
  const params = { names: metrics, x: serverAxis(), max_points: MAX_POINTS };
  if (range) [params.x_min, params.x_max] = serverRange(range);
  const data = await get(apiPath("/metrics"), params);
  for (const { run_id: runId, series } of data.runs) {
    const examples = series[EXAMPLES];
    if (examples && serverAxis() === "step" && !range) state.examples.set(runId, { x: examples.x, y: examples.y });
    if (!range) {
      const latest = state.latest.get(runId) ?? {};
      for (const [name, s] of Object.entries(series)) if (s.y.length) latest[name] = s.y.at(-1);
      state.latest.set(runId, latest);
    }
  }
  return data;
}

function drawCurves(data, charts) {
  for (const chart of charts) {
    const byRun = {};
    for (const { run_id: runId, series } of data.runs) {
      const s = series[chart.metric];
      if (s) byRun[runId] = { x: fromServer(runId, s.x), y: s.y };
    }
    chart.setData(byRun);
  }
  updateVisibility();
}

/** Fetch (or take the answer of a fetch already under way) and draw every chart. */
async function loadAllCurves(curves = fetchCurves(CURVE_METRICS)) {
  const [data] = await Promise.all([curves, plotlyLoaded()]);
  drawCurves(data, [...state.charts.values()]);
}

/** The user zoomed a chart: fetch that metric again, finer, for the visible range. */
function zoom(chart, range) {
  clearTimeout(state.zoomTimer);
  state.zoomTimer = setTimeout(async () => {
    try {
      drawCurves(await fetchCurves([chart.metric], range), [chart]);
    } catch (error) {
      toast(`Zoom: ${error.message}`, "error");
    }
  }, 200);
}

function setupCurveControls() {
  const axisGroup = byId("x-axis");
  axisGroup.addEventListener("click", async (event) => {
    const button = event.target.closest("button");
    if (!button || button.dataset.axis === state.axis) return;
    for (const other of axisGroup.querySelectorAll("button")) other.setAttribute("aria-pressed", String(other === button));
    state.axis = button.dataset.axis;
    for (const chart of state.charts.values()) chart.setXTitle(AXES[state.axis]);
    try {
      await loadAllCurves();
    } catch (error) {
      toast(error.message, "error");
    }
  });
  byId("log-y").addEventListener("change", (event) => {
    for (const { metric, logY } of CURVES) if (logY) state.charts.get(metric).setLogY(event.target.checked);
  });
  const slider = byId("smoothing");
  slider.addEventListener("input", () => {
    const weight = Number(slider.value);
    byId("smoothing-value").textContent = weight.toFixed(2);
    for (const chart of state.charts.values()) chart.setSmoothing(weight);
  });
}

// ---- the experiment and its runs -------------------------------------------------------------

function renderHeader() {
  const experiment = state.experiment;
  document.title = `${experiment.name} · kfac-lab`;
  byId("experiment-name").textContent = experiment.name;
  const base = experiment.spec?.runs?.[0] ?? {};
  const model = base.model ? `${base.model.name}${base.model.width_scale && base.model.width_scale !== 1 ? ` ×${base.model.width_scale}` : ""}` : null;
  const dataset = typeof base.dataset === "string" ? base.dataset : base.dataset?.name;
  replace(
    byId("experiment-meta"),
    statusBadge(experiment.status),
    " ",
    [experiment.preset ? `preset ${experiment.preset}` : "custom", model, dataset, `${experiment.runs.length} runs`, `created ${formatTime(experiment.created_at)}`]
      .filter(Boolean)
      .join(" · "),
  );
  byId("experiment-description").textContent = experiment.description ?? "";
  // A tracked experiment's runs come from scripts: it has no spec that the lab could run.
  byId("export-spec").toggleAttribute("hidden", experiment.spec?.kind === "tracked");
}

function renderTable() {
  renderRuns(byId("runs"), state.experiment.runs, state.groups, {
    latest: (run, name) => state.latest.get(run.id)?.[name],
    onCancel: credentials.shared ? null : cancelRun,
    onExport: (run) => act(() => download(`/api/runs/${encodeURIComponent(run.id)}/export`, `run-${run.id}.csv`, { format: "csv" })),
  });
  document.getElementById("cancel-all")?.toggleAttribute("disabled", !state.experiment.runs.some(isActive));
}

/** Re-read the experiment (status, device, final metrics) after its runs changed state. */
function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(async () => {
    try {
      const fresh = await get(apiPath());
      for (const run of fresh.runs) Object.assign(runById(run.id) ?? {}, run);
      state.experiment.status = fresh.status;
      renderHeader();
      renderTable();
      if (!fresh.runs.some(isActive)) finishStream();
    } catch (error) {
      toast(error.message, "error");
    }
  }, 300);
}

function runById(id) {
  return state.experiment.runs.find((run) => run.id === id);
}

// ---- live ------------------------------------------------------------------------------------

/** Apply a frame's worth of events; its cost is recorded as the User Timing measure
 * "kfac:live-update" (the performance test reads it). */
function applyBatch(batch) {
  const start = performance.now();
  let runsChanged = false;
  for (const { kind, data } of batch) {
    const run = runById(data.run_id);
    if (!run) continue;
    if (kind === "metrics") {
      const examples = data.series[EXAMPLES];
      if (examples) rememberExamples(run.id, examples.step, examples.value);
      const latest = state.latest.get(run.id) ?? {};
      for (const [name, series] of Object.entries(data.series)) {
        latest[name] = series.value.at(-1);
        run.step = Math.max(run.step, series.step.at(-1));
        const chart = state.charts.get(name);
        if (!chart) continue;
        const xs = state.axis === "time" ? series.wall_time : fromServer(run.id, series.step);
        chart.append(run.id, xs, series.value);
      }
      state.latest.set(run.id, latest);
      runsChanged = true;
    } else if (kind === "status") {
      Object.assign(run, { status: data.status, step: data.step, error: data.error });
      state.experiment.status = data.experiment_status ?? state.experiment.status;
      runsChanged = true;
      scheduleRefresh();
    } else if (kind === "snapshot") {
      state.curvature.added(data).catch((error) => toast(error.message, "error"));
    } else if (kind === "logs") {
      state.logs.added(data);
    }
  }
  for (const chart of state.charts.values()) chart.flush();
  updateVisibility();
  if (runsChanged) {
    renderHeader();
    renderTable();
  }
  performance.measure("kfac:live-update", { start });
}

function showStreamState(name, reason) {
  byId("live-dot").classList.toggle("on", name === "live");
  byId("live-text").textContent = { live: "live", reconnecting: "reconnecting…", closed: reason ?? "not live", finished: "finished" }[name];
}

function finishStream() {
  state.closeStream?.();
  state.closeStream = null;
  showStreamState("finished");
}

// ---- actions ---------------------------------------------------------------------------------

async function act(action) {
  try {
    await action();
  } catch (error) {
    toast(error instanceof ApiError ? error.message : String(error), "error");
  }
}

function cancelRun(run) {
  act(async () => {
    const updated = await post(`/api/runs/${encodeURIComponent(run.id)}/cancel`);
    Object.assign(run, updated);
    renderTable();
  });
}

function setupOwnerControls() {
  byId("share").addEventListener("click", () =>
    act(async () => {
      const link = await post(apiPath("/share"));
      byId("share-url").value = link.url;
      byId("share-box").classList.remove("hidden");
      await copyShareLink();
    }),
  );
  byId("copy-share").addEventListener("click", copyShareLink);
  byId("revoke-share").addEventListener("click", () =>
    act(async () => {
      const { revoked } = await del(apiPath("/share"));
      byId("share-box").classList.add("hidden");
      toast(`${revoked} link${revoked === 1 ? "" : "s"} revoked: they no longer open this page.`);
    }),
  );
  byId("clone").addEventListener("click", () =>
    act(async () => {
      const clone = await post(apiPath("/clone"));
      window.location.assign(`/experiments/${encodeURIComponent(clone.id)}`);
    }),
  );
  byId("cancel-all").addEventListener("click", () => {
    if (!window.confirm("Cancel every unfinished run of this experiment?")) return;
    act(async () => {
      const fresh = await post(apiPath("/cancel"));
      for (const run of fresh.runs) Object.assign(runById(run.id) ?? {}, run);
      renderTable();
    });
  });
}

async function copyShareLink() {
  const input = byId("share-url");
  try {
    await navigator.clipboard.writeText(input.value);
    toast("Read-only link copied to the clipboard.");
  } catch {
    input.select();
    toast("Link created: copy it from the box (Ctrl-C).");
  }
}

function csvCell(value) {
  if (typeof value === "number") return String(value);
  const text = String(value ?? "");
  const safe = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text; // no formulas in spreadsheets
  return `"${safe.replaceAll('"', '""')}"`;
}

/** The curves as drawn (raw, not smoothed; zoomed charts: their visible range) in one CSV. */
function exportCsv() {
  const lines = [["metric", "run_id", "run", "optimizer", "seed", AXES[state.axis], "value"].map(csvCell).join(",")];
  for (const chart of state.charts.values()) {
    for (const [runId, series] of chart.data) {
      const run = runById(runId);
      series.x.forEach((x, i) => {
        lines.push([chart.metric, runId, run?.label, run?.optimizer?.name, run?.seed, x, series.y[i]].map(csvCell).join(","));
      });
    }
  }
  downloadText(`${state.experiment.name.replace(/[^\w.-]+/g, "_")}-curves.csv`, `${lines.join("\n")}\n`);
}

function setupExports() {
  byId("export-csv").addEventListener("click", exportCsv);
  byId("export-spec").addEventListener("click", () =>
    downloadText(`${state.experiment.name.replace(/[^\w.-]+/g, "_")}-spec.json`, `${JSON.stringify(state.experiment.spec, null, 2)}\n`),
  );
  byId("export-png").addEventListener("click", () =>
    act(() => {
      const chart = state.charts.get("train_loss");
      chart.flush(true); // with the live points it held back while out of sight
      return Plotly.downloadImage(chart.node, { format: "png", width: 1200, height: 600, filename: "training-loss" });
    }),
  );
}

/** Offer the self-contained HTML report if this API has one (fetched, then saved). */
async function offerReport() {
  const openapi = await get("/openapi.json");
  const path = "/api/experiments/{experiment_id}/report";
  if (!openapi.paths?.[path]) return;
  const button = byId("report");
  button.addEventListener("click", () => act(() => download(apiPath("/report"), `kfac-lab-${experimentId}.html`)));
  button.classList.remove("hidden");
}

// ---- start -----------------------------------------------------------------------------------

/** plotly.js (4.8 MB) loads in parallel with the experiment's data; drawing waits for it. */
function plotlyLoaded() {
  if (window.Plotly) return Promise.resolve();
  const script = byId("plotly-js");
  return new Promise((resolve, reject) => {
    script.addEventListener("load", resolve);
    script.addEventListener("error", () => reject(new Error("plotly.js could not be loaded")));
  });
}

function setupReadOnly() {
  for (const node of document.querySelectorAll(".owner-only")) node.remove();
  byId("readonly-note").classList.remove("hidden");
  byId("mode").textContent = "read-only link";
}

async function main() {
  // The curves do not depend on the experiment's answer: both requests go out at once, while
  // plotly.js still loads. (A failure is reported where the curves are awaited.)
  const curves = fetchCurves(CURVE_METRICS).finally(() => performance.mark("kfac:data-ready"));
  curves.catch(() => {});
  plotlyLoaded().then(() => performance.mark("kfac:plotly-ready"), () => {});
  if (credentials.shared) setupReadOnly();
  else setupOwnerControls();
  setupCurveControls();
  setupExports();

  let experiment;
  try {
    experiment = await get(apiPath());
  } catch (error) {
    byId("experiment-name").textContent = error.status === 404 ? "No such experiment" : "Cannot open this experiment";
    byId("experiment-meta").textContent = error.message;
    showStreamState("closed", "not live");
    return;
  }
  state.experiment = experiment;
  state.groups = groupRuns(experiment.runs);
  renderHeader();
  renderTable();
  makeCharts(CURVES, byId("curve-charts"));
  makeCharts(INTERNALS, byId("internal-charts"));
  makeCharts(SYSTEM, byId("system-charts"));
  state.curvature = new CurvaturePanel(experiment.runs);
  state.logs = new LogPanels(byId("run-logs"), experiment.runs);

  await loadAllCurves(curves);
  renderTable();
  performance.mark("kfac:curves-drawn");
  if (experiment.runs.some(isActive)) {
    state.closeStream = openStream(experimentId, experiment.last_event_id, { onBatch: applyBatch, onState: showStreamState });
  } else {
    showStreamState("finished");
  }
  // The curvature section is below the fold and costs megabytes of matrices: only once seen.
  whenVisible(byId("curvature-panel"), () => state.curvature.load().catch((error) => toast(error.message, "error")));
  await offerReport();
}

startPage(main);
