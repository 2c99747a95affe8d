// The curvature section: for one run and one snapshot step, heatmaps side by side of |F|, |F̃|,
// |F − F̃|, |F̃⁻¹|, |F̌⁻¹| and |F̂⁻¹| with the layer boundaries drawn and the per-block relative
// errors ‖F_ij − F̃_ij‖ / ‖F_ij‖ written on |F − F̃| (the K-FAC paper's Figures 2 and 3); a
// block-average view; linear or log colour; optionally one colour range per row. Below, the
// eigen-spectra of every layer's factors Ā and G at every snapshot of the run (spectra.js).
//
// The step slider follows new snapshots live while it sits on the newest one.
//
// What is fetched is what is drawn: every snapshot's small part (blocks, block averages, errors,
// spectra) once, for the spectra and the block view; the matrices (five of up to 512 × 512)
// only for the entries view, as base64 float32 (half the bytes of decimal JSON, no parsing).

import { get } from "./api.js";
import { byId, el, escapeHtml, formatNumber, replace, toast } from "./dom.js";
import { attachHover, cellLines } from "./heathover.js";
import { drawSpectra, layerLabels } from "./spectra.js";

const PANELS = [
  { key: "exact", title: "|F|  exact Fisher", row: 0 },
  { key: "kronecker", title: "|F̃|  Kronecker-factored", row: 0 },
  { key: "difference", title: "|F − F̃|", blockTitle: "‖F − F̃‖ / ‖F‖ per block", row: 0 },
  { key: "kronecker_inverse", title: "|F̃⁻¹|", row: 1 },
  { key: "block_diagonal_inverse", title: "|F̌⁻¹|  block-diagonal", row: 1 },
  { key: "block_tridiagonal_inverse", title: "|F̂⁻¹|  block-tridiagonal", row: 1 },
];
const PLOT_CONFIG = { responsive: true, displaylogo: false };
const CACHED_SNAPSHOTS = 4; // matrices are large (a few MB a snapshot): keep the last few
const NO_MATRICES = { names: "none" }; // a matrix name that does not exist: none is sent

// ---- matrices --------------------------------------------------------------------------------

/**
 * A matrix of the API's base64 encoding (`{dtype: "float32", shape, data}`) as the rows of
 * numbers a heatmap takes, NaN and infinities as null (as in the API's nested-list form).
 */
export function decodeMatrix({ dtype, shape: [rows, cols], data }) {
  if (dtype !== "float32") throw new Error(`unknown matrix dtype ${dtype}`);
  const values = new Float32Array(base64Bytes(data).buffer); // little-endian, as every browser's platform
  return Array.from({ length: rows }, (_, i) =>
    Array.from(values.subarray(i * cols, (i + 1) * cols), (value) => (Number.isFinite(value) ? value : null)),
  );
}

function base64Bytes(text) {
  if (Uint8Array.fromBase64) return Uint8Array.fromBase64(text); // native where there is one
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function magnitudes(matrix, log) {
  return matrix.map((row) =>
    row.map((value) => {
      if (value === null) return null;
      const magnitude = Math.abs(value);
      if (!log) return magnitude;
      return magnitude > 0 ? Math.log10(magnitude) : null;
    }),
  );
}

function difference(a, b) {
  return a.map((row, i) => row.map((value, j) => (value === null || b[i][j] === null ? null : value - b[i][j])));
}

function range(matrices) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const matrix of matrices) {
    for (const row of matrix) {
      for (const value of row) {
        if (value === null) continue;
        if (value < lo) lo = value;
        if (value > hi) hi = value;
      }
    }
  }
  return lo <= hi ? [lo, hi] : null;
}

/** The z matrix of a panel: its entries, or one value per pair of layers in the block view. */
function panelValues(snapshot, key, blockView) {
  if (blockView) {
    if (key === "difference") return snapshot.relative_errors?.kronecker_vs_exact ?? null;
    return snapshot.block_averages?.[key] ?? null;
  }
  if (key === "difference") {
    const { exact, kronecker } = snapshot.matrices;
    return exact && kronecker ? difference(exact, kronecker) : null;
  }
  return snapshot.matrices[key] ?? null;
}

/** Lines along the layer boundaries (heatmap cell i spans i − ½ … i + ½). */
function boundaryShapes(edges, size) {
  const line = { color: "rgba(255, 255, 255, 0.85)", width: 1 };
  return edges.flatMap((edge) => [
    { type: "line", x0: edge - 0.5, x1: edge - 0.5, y0: -0.5, y1: size - 0.5, line },
    { type: "line", y0: edge - 0.5, y1: edge - 0.5, x0: -0.5, x1: size - 0.5, line },
  ]);
}

/** The relative error of each pair of layer blocks, written at the block's centre. */
function errorAnnotations(errors, centres) {
  if (!errors) return [];
  return errors.flatMap((row, i) =>
    row.map((value, j) => ({
      x: centres[j],
      y: centres[i],
      text: value === null ? "–" : value.toFixed(2),
      showarrow: false,
      font: { color: "#fff", size: 11 },
      bgcolor: "rgba(0, 0, 0, 0.45)",
    })),
  );
}

// ---- the panel -------------------------------------------------------------------------------

export class CurvaturePanel {
  constructor(runs) {
    this.runs = runs;
    this.lists = new Map(); // run id → [{id, step}] by step
    this.cache = new Map(); // snapshot id → snapshot with its matrices, the last few fetched
    this.summaries = new Map(); // snapshot id → snapshot without matrices, kept for good
    this.runId = null;
    this.index = 0;
    this.current = null; // the snapshot on screen
    this.currentView = "full"; // the view it was fetched for (the block view has no matrices)
    this.view = "full";
    this.scale = "log";
    this.sharedRange = false;
    this.requested = 0; // snapshot loads are numbered; one is drawn unless a later one was
    this.drawn = 0;

    this.select = byId("snapshot-run");
    this.slider = byId("snapshot-slider");
    this.select.addEventListener("change", () => this.chooseRun(this.select.value));
    this.slider.addEventListener("input", () => {
      this.index = Number(this.slider.value);
      this.show();
    });
    this.segmented("heat-view", "view", () => this.show()); // the entries need the matrices
    this.segmented("heat-scale", "scale", () => this.draw());
    byId("shared-range").addEventListener("change", (event) => {
      this.sharedRange = event.target.checked;
      this.draw();
    });
    replace(byId("heatmaps"), ...PANELS.map((panel) => el("div", { class: "heatmap", id: `heat-${panel.key}` })));
  }

  segmented(id, property, changed) {
    const group = byId(id);
    group.addEventListener("click", (event) => {
      const button = event.target.closest("button");
      if (!button) return;
      for (const other of group.querySelectorAll("button")) other.setAttribute("aria-pressed", String(other === button));
      this[property] = button.dataset[property];
      changed();
    });
  }

  /**
   * Say what is loading (null: nothing): the section keeps its size (the heatmaps are square
   * boxes from the start) and is marked busy, so a few MB in flight never read as a blank.
   */
  loading(text) {
    const panel = byId("curvature-panel");
    panel.setAttribute("aria-busy", String(Boolean(text)));
    byId("curvature-loading").textContent = text ?? "";
    byId("curvature-loading").classList.toggle("hidden", !text);
  }

  /** Load every run's snapshot list and show the most interesting run (K-FAC first). */
  async load() {
    this.loading("Loading the list of curvature snapshots…");
    let lists;
    try {
      lists = await Promise.all(this.runs.map((run) => get(`/api/runs/${encodeURIComponent(run.id)}/snapshots`)));
    } catch (error) {
      this.loading(null);
      throw error;
    }
    this.runs.forEach((run, i) => this.lists.set(run.id, lists[i].map(({ id, step }) => ({ id, step }))));
    this.fillRunSelect();
    const withSnapshots = this.runs.filter((run) => this.lists.get(run.id).length);
    const preferred = withSnapshots.find((run) => run.optimizer?.name?.startsWith("kfac")) ?? withSnapshots[0] ?? this.runs[0];
    if (preferred) await this.chooseRun(preferred.id);
  }

  fillRunSelect() {
    replace(
      this.select,
      ...this.runs.map((run) => {
        const count = this.lists.get(run.id)?.length ?? 0;
        return el("option", { value: run.id, selected: run.id === this.runId }, `${run.label} (${count} snapshot${count === 1 ? "" : "s"})`);
      }),
    );
  }

  async chooseRun(runId) {
    this.runId = runId;
    this.select.value = runId;
    this.index = Math.max(0, this.list().length - 1);
    this.updateSlider();
    await Promise.all([this.show(), this.loadSpectra()]);
  }

  list() {
    return this.lists.get(this.runId) ?? [];
  }

  /** Move the step slider by `delta` snapshots (the arrow keys), within the run's list. */
  move(delta) {
    const index = Math.min(this.list().length - 1, Math.max(0, this.index + delta));
    if (index === this.index || index < 0) return;
    this.index = index;
    this.show();
  }

  updateSlider() {
    const list = this.list();
    this.slider.max = String(Math.max(0, list.length - 1));
    this.slider.value = String(this.index);
    this.slider.disabled = list.length < 2;
    byId("snapshot-step").textContent = list.length ? `step ${list[this.index].step}` : "no snapshot yet";
  }

  /** A snapshot event from the live stream: list it, and follow it if the slider is at the end. */
  async added({ run_id: runId, snapshot_id: id, step }) {
    const list = this.lists.get(runId);
    if (!list || list.some((s) => s.id === id)) return;
    const following = runId === this.runId && this.index === list.length - 1;
    list.push({ id, step });
    list.sort((a, b) => a.step - b.step);
    this.fillRunSelect();
    if (runId !== this.runId) {
      if (!this.list().length) await this.chooseRun(runId); // nothing shown yet: show this one
      return;
    }
    if (following || list.length === 1) this.index = list.length - 1;
    this.updateSlider();
    await Promise.all([following || list.length === 1 ? this.show() : null, this.loadSpectra()]);
  }

  /** What the current view draws of snapshot `id`: with its matrices only for the entries. */
  async snapshot(id) {
    if (this.view === "blocks") return this.summary(id); // block averages are in the summary
    if (!this.cache.has(id)) {
      const snapshot = await get(`/api/snapshots/${id}`, { encoding: "base64" });
      for (const [name, matrix] of Object.entries(snapshot.matrices)) snapshot.matrices[name] = decodeMatrix(matrix);
      this.cache.set(id, snapshot);
      if (this.cache.size > CACHED_SNAPSHOTS) this.cache.delete(this.cache.keys().next().value);
    }
    return this.cache.get(id);
  }

  async summary(id) {
    if (!this.summaries.has(id)) this.summaries.set(id, await get(`/api/snapshots/${id}`, NO_MATRICES));
    return this.summaries.get(id);
  }

  async show() {
    this.updateSlider();
    const entry = this.list()[this.index];
    byId("heatmaps").classList.toggle("hidden", !entry);
    if (!entry) {
      this.current = null;
      this.loading(null);
      byId("curvature-note").textContent = "No curvature snapshot yet: runs with a snapshot interval record one every N steps.";
      return;
    }
    const ticket = ++this.requested;
    const view = this.view;
    const start = performance.now();
    const heavy = view === "full" && !this.cache.has(entry.id);
    this.loading(`Loading the snapshot of step ${entry.step}${heavy ? " (the matrices: a few MB)" : ""}…`);
    try {
      const snapshot = await this.snapshot(entry.id);
      if (ticket < this.drawn) return; // a later choice is on screen already
      this.drawn = ticket;
      this.current = snapshot;
      this.currentView = view;
      this.draw();
      performance.measure("kfac:snapshot-drawn", { start }); // read by the performance test
      if (ticket === this.requested) this.loading(null);
    } catch (error) {
      this.loading(null);
      toast(`Snapshot: ${error.message}`, "error");
    }
  }

  draw() {
    const snapshot = this.current;
    if (!snapshot) return;
    const blockView = this.currentView === "blocks";
    const log = this.scale === "log";
    const signed = PANELS.map((panel) => panelValues(snapshot, panel.key, blockView));
    const values = signed.map((raw) => raw && magnitudes(raw, log));
    // A shared colour range spans the panels of one row, save the relative errors (no unit).
    const rangeGroup = (panel) => (blockView && panel.blockTitle ? "errors" : panel.row);
    const groupRanges = new Map(
      PANELS.map((panel) => [rangeGroup(panel), range(values.filter((z, i) => z && rangeGroup(PANELS[i]) === rangeGroup(panel)))]),
    );
    this.hoverValues = signed; // what the hover reads, for the snapshot and view on screen
    const layers = snapshot.blocks.length;
    const size = blockView ? layers : snapshot.matrices.exact?.length ?? 0;
    const edges = blockView ? [...Array(layers).keys()].slice(1) : snapshot.blocks.slice(1).map(([start]) => start);
    const centres = blockView ? [...Array(layers).keys()] : snapshot.blocks.map(([start, stop]) => (start + stop - 1) / 2);
    const names = layerLabels(snapshot).map((name) => escapeHtml(name));
    const ticks = { tickvals: centres, ticktext: names.length === layers ? names : centres.map((_, i) => String(i)), ticks: "" };
    const errors = snapshot.relative_errors?.kronecker_vs_exact;
    PANELS.forEach((panel, i) => {
      const node = byId(`heat-${panel.key}`);
      const z = values[i];
      const shared = this.sharedRange && groupRanges.get(rangeGroup(panel));
      const trace = {
        type: "heatmap",
        z: z ?? [[]],
        colorscale: "Viridis",
        zmin: shared ? shared[0] : undefined,
        zmax: shared ? shared[1] : undefined,
        zauto: !shared,
        colorbar: { thickness: 10, title: { text: log ? "log₁₀" : "", side: "right" }, exponentformat: "power" },
        hoverinfo: "none", // heathover.js says more, for the one cell under the mouse
      };
      const title = blockView && panel.blockTitle ? panel.blockTitle : blockView ? `${panel.title.split("  ")[0]} block averages` : panel.title;
      const layout = {
        title: { text: escapeHtml(title), font: { size: 13 }, x: 0.02 },
        margin: { l: 36, r: 8, t: 32, b: 28 },
        // automargin: room for the layer labels ("fc2 250→125") beside the matrix
        xaxis: { constrain: "domain", showgrid: false, zeroline: false, automargin: true, ...ticks },
        yaxis: { autorange: "reversed", scaleanchor: "x", constrain: "domain", showgrid: false, zeroline: false, automargin: true, ...ticks },
        shapes: boundaryShapes(edges, size),
        annotations: panel.key === "difference" ? errorAnnotations(errors, centres) : [],
        uirevision: `${this.runId}-${this.view}`,
      };
      if (!z) layout.annotations = [{ text: "not recorded", showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }];
      Plotly.react(node, [trace], layout, { ...PLOT_CONFIG, toImageButtonOptions: { filename: panel.key } });
      const what = blockView && panel.blockTitle ? "relative error" : blockView ? "block average" : "value";
      attachHover(node, (row, col) => cellLines(this.current, this.hoverValues[i], this.currentView === "blocks", row, col, what));
    });
    const extras = snapshot.extras ?? {};
    // What one cell of the heatmaps is: in the block view a whole pair of layers (sᵢ × sⱼ
    // entries, s the layers' probe parameters), in the entries view `pool` × `pool` entries
    // when the matrices were pooled to fit (see backend/store/snapshots.py).
    const sizes = (snapshot.parameter_blocks ?? []).map(([start, stop]) => stop - start);
    const cells = blockView
      ? ` Block view: each cell averages one pair of layers' block of the matrix, sᵢ × sⱼ entries for layers of s = ${sizes.join(", ")} probe parameters.`
      : snapshot.pool > 1
        ? ` Matrices are shown averaged over ${snapshot.pool} × ${snapshot.pool} parameter cells.`
        : "";
    byId("heatmap-note").textContent =
      `Step ${snapshot.step}: ${layers} layers (${layerLabels(snapshot).join(", ")}), ${snapshot.parameter_blocks.at(-1)?.[1] ?? "?"} probe parameters, ` +
      `${extras.examples ?? "?"} examples, ${extras.fisher ?? "true"} Fisher, damping λ = ${formatNumber(extras.damping)} in the inverses. ` +
      `White lines separate layers; numbers on |F − F̃| are the per-block relative errors.${cells}`;
    byId("curvature-note").textContent = "";
    byId("heatmaps").dataset.step = String(snapshot.step); // which step is on screen
  }

  // ---- spectra -----------------------------------------------------------------------------

  /** The spectra of every snapshot of the run (from their summaries). */
  async loadSpectra() {
    const runId = this.runId;
    await Promise.all(this.list().map((s) => this.summary(s.id)));
    if (runId === this.runId) this.drawSpectra();
  }

  drawSpectra() {
    drawSpectra(byId("spectra"), this.list().map((entry) => ({ step: entry.step, summary: this.summaries.get(entry.id) ?? {} })), this.runId);
  }
}
