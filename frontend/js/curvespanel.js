// The loss-curve section of a page (the experiment page, the side-by-side comparison): one
// CurveChart per metric, their x axis, zoom with finer data, log y, smoothing, the band's kind,
// and live points. The data comes from `load(params)`, which answers like
// GET /api/experiments/{id}/metrics (`{runs: [{run_id, series}]}`), whatever its source.

import { AXES, EXAMPLES, XAxis } from "./axes.js";
import { CurveChart } from "./curves.js";
import { byId, el, plotlyLoaded, replace, toast } from "./dom.js";

const MAX_POINTS = 600; // per series: min/max-preserving, about one per pixel of a chart

/** The loss (and accuracy) charts of every page with curves. */
const CURVES = [
  { metric: "train_loss", title: "Training loss", logY: true },
  { metric: "test_loss", title: "Test loss", logY: true, markers: true },
  { metric: "test_loss_avg", title: "Test loss of the averaged iterate", logY: true, markers: true },
  { metric: "test_accuracy", title: "Test accuracy", logY: false, markers: true },
];

/** The loss-curve panel's content: its title, the toolbar, the charts' grid, what they mean. */
function panelContent() {
  const axes = Object.entries({ step: "step", time: "wall time", examples: "examples" }).map(([axis, text], i) =>
    el("button", { type: "button", dataset: { axis }, "aria-pressed": String(i === 0) }, text),
  );
  return [
    el("div", { class: "panel-head" }, el("h2", {}, "Loss curves")),
    el(
      "div",
      { class: "toolbar" },
      el("span", {}, "x axis ", el("span", { class: "segmented", id: "x-axis", role: "group", "aria-label": "x axis" }, ...axes)),
      el("label", {}, el("input", { type: "checkbox", id: "log-y", checked: true }), " log y"),
      el(
        "label",
        {},
        "smoothing ",
        el("input", { type: "range", id: "smoothing", min: "0", max: "0.99", step: "0.01", value: "0" }),
        el("span", { id: "smoothing-value", class: "mono" }, "0"),
      ),
      el(
        "label",
        {},
        "band ",
        el("select", { id: "band" }, el("option", { value: "minmax" }, "min–max of seeds"), el("option", { value: "sd" }, "mean ± 1 sd")),
      ),
    ),
    el("div", { class: "chart-grid", id: "curve-charts" }),
    el(
      "p",
      { class: "legend-note" },
      "Colours and labels as in the comparison table; runs that differ only in seed are drawn as their mean with a band, ",
      "both only over the steps every seed reached; a dotted line goes on where fewer seeds have points (hover: how many). ",
      "Drag to zoom: finer data is fetched for the visible range; double-click to zoom out.",
    ),
  ];
}

export class CurvesPanel {
  /**
   * Fills `panel` (the loss curves: CURVES) and adds `extra` sections: `[{definitions:
   * [{metric, title, logY, markers}], container, panel}]`, a section's `panel` hidden while
   * none of its charts has data. `groups` as CurveChart takes them.
   */
  constructor({ panel, extra = [], groups, load }) {
    replace(panel, ...panelContent());
    const sections = [{ definitions: CURVES, container: byId("curve-charts") }, ...extra];
    this.sections = sections;
    this.load = load;
    this.axis = new XAxis();
    this.charts = new Map(); // metric → CurveChart
    this.latest = new Map(); // run id → {metric: newest value}
    this.zoomTimer = 0;
    for (const { definitions, container } of sections) {
      for (const definition of definitions) {
        const node = el("div", { class: "chart", id: `chart-${definition.metric}` });
        const chart = new CurveChart(node, { ...definition, groups, onZoom: (range) => this.zoom(chart, range) });
        chart.wrapper = el("div", { class: "hidden" }, node);
        container.append(chart.wrapper);
        this.charts.set(definition.metric, chart);
      }
    }
  }

  /** Every metric the charts draw, and what drawing against examples seen needs. */
  get metrics() {
    return [...this.charts.keys(), EXAMPLES];
  }

  setGroups(groups) {
    for (const chart of this.charts.values()) chart.setGroups(groups);
  }

  /** Fetch `metrics` of every run on the current axis (all of it, or the x range `range`). */
  async fetch(metrics = this.metrics, range = null) {
    const params = { names: metrics, x: this.axis.server(), max_points: MAX_POINTS };
    if (range) [params.x_min, params.x_max] = this.axis.serverRange(range);
    const data = await this.load(params);
    for (const { run_id: runId, series } of data.runs) {
      const examples = series[EXAMPLES];
      if (examples && this.axis.server() === "step" && !range) this.axis.setExamples(runId, examples);
      if (!range) {
        const latest = this.latest.get(runId) ?? {};
        for (const [name, s] of Object.entries(series)) if (s.y.length) latest[name] = s.y.at(-1);
        this.latest.set(runId, latest);
      }
    }
    return data;
  }

  draw(data, charts = [...this.charts.values()]) {
    for (const chart of charts) {
      const byRun = {};
      for (const { run_id: runId, series } of data.runs) {
        const s = series[chart.metric];
        if (s) byRun[runId] = { x: this.axis.fromServer(runId, s.x), y: s.y };
      }
      chart.setData(byRun);
    }
    this.updateVisibility();
  }

  /** Fetch (or take the answer of a fetch already under way) and draw every chart. */
  async loadAll(curves = this.fetch()) {
    const [data] = await Promise.all([curves, plotlyLoaded()]);
    this.draw(data);
  }

  /** Show the charts that have data (accuracy only for classifiers, internals only for K-FAC). */
  updateVisibility() {
    for (const chart of this.charts.values()) {
      const hidden = !chart.hasData();
      if (chart.wrapper.classList.contains("hidden") !== hidden) {
        chart.wrapper.classList.toggle("hidden", hidden);
        if (!hidden) chart.resize(); // it was drawn while hidden, at no size
      }
    }
    for (const { definitions, panel } of this.sections) {
      if (!panel) continue;
      panel.classList.toggle("hidden", !definitions.some(({ metric }) => this.charts.get(metric).hasData()));
    }
  }

  /** The user zoomed a chart: fetch that metric again, finer, for the visible range. */
  zoom(chart, range) {
    clearTimeout(this.zoomTimer);
    this.zoomTimer = setTimeout(async () => {
      try {
        this.draw(await this.fetch([chart.metric], range), [chart]);
      } catch (error) {
        toast(`Zoom: ${error.message}`, "error");
      }
    }, 200);
  }

  /** Live points of a run (an event's `series`: {NAME: {step, wall_time, value}}). */
  append(runId, eventSeries) {
    const examples = eventSeries[EXAMPLES];
    if (examples) this.axis.rememberExamples(runId, examples.step, examples.value);
    const latest = this.latest.get(runId) ?? {};
    for (const [name, series] of Object.entries(eventSeries)) {
      latest[name] = series.value.at(-1);
      const chart = this.charts.get(name);
      if (!chart) continue;
      const xs = this.axis.name === "time" ? series.wall_time : this.axis.fromServer(runId, series.step);
      chart.append(runId, xs, series.value);
    }
    this.latest.set(runId, latest);
  }

  /** Draw what `append` added (charts out of sight wait until they are seen). */
  flush() {
    for (const chart of this.charts.values()) chart.flush();
    this.updateVisibility();
  }

  /** The toolbar's controls (the same ids on every page that has curves). */
  setupControls() {
    const axisGroup = byId("x-axis");
    axisGroup.addEventListener("click", async (event) => {
      const button = event.target.closest("button");
      if (!button || button.dataset.axis === this.axis.name) return;
      for (const other of axisGroup.querySelectorAll("button")) other.setAttribute("aria-pressed", String(other === button));
      this.axis.name = button.dataset.axis;
      for (const chart of this.charts.values()) chart.setXTitle(AXES[this.axis.name]);
      try {
        await this.loadAll();
      } catch (error) {
        toast(error.message, "error");
      }
    });
    byId("log-y").addEventListener("change", (event) => {
      for (const chart of this.charts.values()) if (chart.defaultLogY) chart.setLogY(event.target.checked);
    });
    const slider = byId("smoothing");
    slider.addEventListener("input", () => {
      const weight = Number(slider.value);
      byId("smoothing-value").textContent = weight.toFixed(2);
      for (const chart of this.charts.values()) chart.setSmoothing(weight);
    });
    byId("band").addEventListener("change", (event) => {
      for (const chart of this.charts.values()) chart.setBand(event.target.value);
    });
  }
}
