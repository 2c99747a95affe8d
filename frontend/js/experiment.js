// The experiment page (one stable URL, the one that is shared): notes and tags (organise.js),
// the comparison table and sensitivity charts, live loss curves, optimizer internals, curvature snapshots, the runs
// table, share / run again / cancel, exports. The parts live in their own modules
// (comparison.js, curvespanel.js, liveupdates.js, curvature.js, sharing.js, exports.js); this
// one loads the data and wires them together.
//
// Loading: the experiment, its comparison and all curves come in three requests sent at once
// (curves downsampled by the API), then the live stream is opened from the event id the
// experiment came with, so nothing that happens after the page's data was read is missed
// (points the page already has are skipped). Opened through a share link (`#share=`), the page
// is read-only: the controls that write are removed, and the API would refuse them anyway.

import { ApiError, credentials, download, get, post } from "./api.js";
import { ComparisonPanel } from "./comparison.js";
import { CurvaturePanel } from "./curvature.js";
import { CurvesPanel } from "./curvespanel.js";
import { byId, formatTime, plotlyLoaded, replace, shortcuts, showNotice, startPage, statusBadge, toast, whenVisible } from "./dom.js";
import { offerReport, setupExports } from "./exports.js";
import { openStream } from "./live.js";
import { applyBatch, showStreamState } from "./liveupdates.js";
import { LogPanels } from "./logs.js";
import { isActive, renderRuns } from "./runs.js";
import { setupManage } from "./manage.js";
import { renderOrganised, setupOrganise } from "./organise.js";
import { setupReadOnly, setupSharing } from "./sharing.js";

const INTERNALS = [
  { metric: "damping", title: "Damping λ", logY: true },
  { metric: "alpha", title: "Step size α", logY: false },
  { metric: "mu", title: "Momentum μ", logY: false },
  { metric: "rho", title: "Reduction ratio ρ", logY: false },
  { metric: "update_norm", title: "Update norm ‖δ‖", logY: true },
  // data-parallel runs (spec.processes > 1); every rank's own time is in step_time_rank{r}
  { metric: "step_time_slowest_rank", title: "Slowest rank's step time (s)", logY: true },
  { metric: "communication_seconds", title: "Communication time per step (s)", logY: true },
];
const SYSTEM = [
  { metric: "cpu_percent", title: "Process CPU %", logY: false },
  { metric: "rss_mb", title: "Resident memory (MB)", logY: false },
  { metric: "gpu_memory_mb", title: "GPU memory (MB)", logY: false },
  { metric: "gpu_percent", title: "GPU utilisation %", logY: false },
];

const experimentId = decodeURIComponent(window.location.pathname.split("/").filter(Boolean).at(-1) ?? "");
const apiPath = (suffix = "") => `/api/experiments/${encodeURIComponent(experimentId)}${suffix}`;

const page = {
  experiment: null,
  curves: new CurvesPanel({
    panel: byId("curves-panel"),
    extra: [
      { definitions: INTERNALS, container: byId("internal-charts"), panel: byId("internals-panel") },
      { definitions: SYSTEM, container: byId("system-charts"), panel: byId("system-panel") },
    ],
    groups: [],
    load: (params) => get(apiPath("/metrics"), params),
  }),
  comparison: new ComparisonPanel({
    container: byId("comparison-panel"),
    load: (params) => get(apiPath("/comparison"), params),
    onGroups: (groups) => page.curves.setGroups(groups),
  }),
  curvature: null,
  logs: null, // LogPanels
  closeStream: null,
  refreshTimer: 0,
  runById: (id) => page.experiment.runs.find((run) => run.id === id),
};

// ---- the experiment and its runs -------------------------------------------------------------

function renderHeader() {
  const experiment = page.experiment;
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
  const groups = page.comparison.comparison?.groups ?? [];
  renderRuns(byId("runs"), page.experiment.runs, groups, {
    latest: (run, name) => page.curves.latest.get(run.id)?.[name],
    onCancel: credentials.shared ? null : cancelRun,
    onExport: (run) => act(() => download(`/api/runs/${encodeURIComponent(run.id)}/export`, `run-${run.id}.csv`, { format: "csv" })),
  });
  document.getElementById("cancel-all")?.toggleAttribute("disabled", !page.experiment.runs.some(isActive));
}

/** Re-read the experiment (status, device, final metrics) and its comparison after its runs
 * changed state. */
function scheduleRefresh() {
  clearTimeout(page.refreshTimer);
  page.refreshTimer = setTimeout(async () => {
    try {
      const [fresh] = await Promise.all([get(apiPath()), page.comparison.refresh()]);
      for (const run of fresh.runs) Object.assign(page.runById(run.id) ?? {}, run);
      page.experiment.status = fresh.status;
      renderHeader();
      renderTable();
      if (!fresh.runs.some(isActive)) finishStream();
    } catch (error) {
      toast(error.message, "error");
    }
  }, 300);
}

function finishStream() {
  page.closeStream?.();
  page.closeStream = null;
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
  setupSharing(apiPath, act);
  setupManage(apiPath, act, page, renderHeader);
  setupOrganise(apiPath, act, page);
  // Run again: the form, filled with this experiment's spec, to edit before launching.
  byId("clone").addEventListener("click", () => window.location.assign(`/new?from=${encodeURIComponent(experimentId)}`));
  byId("cancel-all").addEventListener("click", () => {
    if (!window.confirm("Cancel every unfinished run of this experiment?")) return;
    act(async () => {
      const fresh = await post(apiPath("/cancel"));
      for (const run of fresh.runs) Object.assign(page.runById(run.id) ?? {}, run);
      renderTable();
    });
  });
}

// ---- start -----------------------------------------------------------------------------------

async function main() {
  // Neither the curves nor the comparison depend on the experiment's answer: the three
  // requests go out at once, while plotly.js still loads. (A failure is reported where each
  // is awaited.)
  const curves = page.curves.fetch().finally(() => performance.mark("kfac:data-ready"));
  curves.catch(() => {});
  const comparison = page.comparison.load(page.comparison.params());
  comparison.catch(() => {});
  plotlyLoaded().then(() => performance.mark("kfac:plotly-ready"), () => {});
  page.curves.setupControls();
  if (credentials.shared) setupReadOnly();
  else setupOwnerControls();
  shortcuts({
    ...(credentials.shared ? {} : { n: () => window.location.assign("/new") }),
    ArrowLeft: () => page.curvature?.move(-1),
    ArrowRight: () => page.curvature?.move(1),
  });
  setupExports(page, act);

  let experiment;
  try {
    experiment = await get(apiPath());
  } catch (error) {
    const title = error.status === 404 ? "No such experiment" : credentials.shared ? "This link no longer opens the experiment" : "Cannot open this experiment";
    showNotice(title, error.message);
    return;
  }
  page.experiment = experiment;
  // The owner's controls that change the experiment start from its answer: usable from now on.
  for (const control of document.querySelectorAll("[data-needs-experiment]")) control.disabled = false;
  renderHeader();
  renderOrganised(experiment, !credentials.shared);
  try {
    await page.comparison.refresh(comparison);
    performance.mark("kfac:table-drawn");
  } catch (error) {
    page.comparison.showError(error);
  }
  renderTable();
  page.curvature = new CurvaturePanel(experiment.runs);
  page.logs = new LogPanels(byId("run-logs"), experiment.runs);

  await page.curves.loadAll(curves);
  renderTable();
  performance.mark("kfac:curves-drawn");
  // The curves, the comparison and the experiment are read at once, each answer with its own
  // cursor: the stream starts at the earliest, so that what happened between the reads (points
  // after the experiment's, a run's end after the curves') is replayed, not in none of them (a
  // replayed status re-reads the comparison). Replaying what an answer already holds changes
  // nothing: points at or before a run's last, a status, a log line or a snapshot already shown
  // are skipped or set again.
  const { last_event_id: drawnUpTo } = await curves;
  const tabulatedUpTo = (await comparison.catch(() => null))?.last_event_id ?? drawnUpTo;
  if (experiment.runs.some(isActive)) {
    const handlers = { onRuns: () => (renderHeader(), renderTable()), onStatus: scheduleRefresh };
    page.closeStream = openStream(experimentId, Math.min(drawnUpTo, tabulatedUpTo, experiment.last_event_id), {
      onBatch: (batch) => applyBatch(page, batch, handlers),
      onState: showStreamState,
    });
  } else {
    // Every run had finished by the experiment's read: what was written after the curves' or
    // the comparison's read is read again, complete now.
    const stale = [];
    if (experiment.last_event_id > drawnUpTo) stale.push(page.curves.loadAll());
    if (experiment.last_event_id > tabulatedUpTo) stale.push(page.comparison.refresh());
    if (stale.length) {
      await Promise.all(stale);
      renderTable();
    }
    showStreamState("finished");
  }
  // The curvature section is below the fold and costs megabytes of matrices: only once seen.
  whenVisible(byId("curvature-panel"), () => page.curvature.load().catch((error) => toast(error.message, "error")));
  await offerReport(apiPath, act, `kfac-lab-${experimentId}.html`);
}

startPage(main);
