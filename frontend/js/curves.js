// A live line chart of one metric over the runs of an experiment (training loss, test loss,
// λ, ...): a trace per optimizer configuration, or for a configuration run with several seeds
// their mean and a band (min–max or ±1 sd), in the colour the comparison endpoint gave it.
//
// The mean and the band are drawn only over the steps that every seed of the group reached;
// where fewer seeds have points (a slower seed, one still queued) the mean goes on as a dotted
// line whose hover says how many seeds it stands for, so a line is never "the mean of 2 seeds"
// while it is one seed alone.
//
// The chart keeps each run's points (in the units of the current x axis). Live points are
// appended with `append` and drawn at the next `flush`, which extends the traces with
// Plotly.extendTraces when the curves only grew, and restyles just the changed traces when an
// earlier part moved (a band, a second seed catching up). `render` redraws everything; it is
// only needed when the set of traces or the options change.
//
// Whatever the Plotly call, Plotly redraws the whole chart (that is ~95% of a live update's
// cost), so a chart out of sight does not redraw: its points wait until it scrolls into view.

import { LOG_TICKS } from "./axes.js";
import { escapeHtml } from "./dom.js";
import { coverage, meanBand, smooth } from "./series.js";

const MEAN_POINTS = 800; // at most, per mean of seeds: about one per pixel of a chart
const PLOT_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

/** "#RRGGBB" → "rgba(r, g, b, alpha)". */
function translucent(hex, alpha) {
  const value = Number.parseInt(hex.slice(1), 16);
  return `rgba(${(value >> 16) & 255}, ${(value >> 8) & 255}, ${value & 255}, ${alpha})`;
}

export class CurveChart {
  /**
   * `groups` are `[{key, label, colour, runIds}]` (see comparison.chartGroups); `band` is
   * "minmax" or "sd"; `onZoom(range | null)` is called when the user zooms the x axis (null:
   * back to the full range).
   */
  constructor(node, { metric, title, logY = true, markers = false, groups, band = "minmax", onZoom }) {
    this.node = node;
    this.metric = metric;
    this.title = title;
    this.logY = logY;
    this.defaultLogY = logY; // the page's "log y" switch applies to these charts only
    this.mode = markers ? "lines+markers" : "lines"; // markers for sparse series (evaluations)
    this.setGroupList(groups);
    this.band = band;
    this.onZoom = onZoom;
    this.xTitle = "step";
    this.smoothing = 0;
    this.revision = 0; // Plotly's uirevision: kept while the zoom should survive a redraw
    this.data = new Map(); // run id → {x: [], y: []}
    this.drawn = new Map(); // group key → {indices, data}: its traces as last drawn
    this.dirty = new Set(); // group keys with points not drawn yet
    this.onScreen = false; // in or near the viewport: only then are live points drawn at once
    new IntersectionObserver(
      (entries) => {
        this.onScreen = entries.at(-1).isIntersecting; // the newest state of the node
        if (this.onScreen) this.flush();
      },
      { rootMargin: "200px" },
    ).observe(node);
  }

  hasData() {
    for (const series of this.data.values()) if (series.x.length) return true;
    return false;
  }

  /** Replace every run's points (`{runId: {x, y}}`) and redraw. */
  setData(byRun) {
    this.data = new Map(Object.entries(byRun).map(([id, s]) => [id, { x: [...s.x], y: [...s.y] }]));
    this.render();
  }

  /** Add a run's new points; points at or before its last x are already there and skipped. */
  append(runId, xs, ys) {
    let series = this.data.get(runId);
    if (!series) this.data.set(runId, (series = { x: [], y: [] }));
    const last = series.x.length ? series.x[series.x.length - 1] : -Infinity;
    let added = false;
    for (let i = 0; i < xs.length; i++) {
      if (xs[i] > last) {
        series.x.push(xs[i]);
        series.y.push(ys[i]);
        added = true;
      }
    }
    if (added) this.dirty.add(this.groupOf(runId)?.key);
  }

  /** The groups drawn (e.g. only the winners): the next render draws just these. */
  setGroups(groups) {
    this.setGroupList(groups);
    this.render(); // also a first draw: points may have come while no group was chosen
  }

  setGroupList(groups) {
    this.groups = groups;
    this.groupByRun = new Map(groups.flatMap((group) => group.runIds.map((id) => [id, group])));
  }

  groupOf(runId) {
    return this.groupByRun.get(runId);
  }

  /**
   * The data of a group's traces, `[{x, y}, ...]` (null: no data yet): its one run's line, or
   * for several seeds the band (one closed polygon: min–max, or mean ± 1 sd) and the mean over
   * the steps every seed reached, and the mean where fewer did (`n`: seeds per point).
   */
  traceData(group) {
    const curves = group.runIds
      .map((id) => this.data.get(id))
      .filter((series) => series?.x.length)
      .map((series) => ({ x: series.x.slice(), y: smooth(series.y, this.smoothing) }));
    if (!curves.length) return null;
    if (group.runIds.length === 1) return curves;
    const band = meanBand(curves, MEAN_POINTS);
    const { full: [from, to], partial } = coverage(band, group.runIds.length);
    const x = band.x.slice(from, to);
    const mean = band.mean.slice(from, to);
    const [lower, upper] =
      this.band === "sd"
        ? [mean.map((m, i) => m - band.sd[from + i]), mean.map((m, i) => m + band.sd[from + i])]
        : [band.lower.slice(from, to), band.upper.slice(from, to)];
    return [
      { x: [...x, ...x.slice().reverse()], y: [...upper, ...lower.reverse()] },
      { x, y: mean },
      // Empty while every seed covers every step: nothing for Plotly to draw.
      partial.some((value) => value !== null) ? { x: band.x, y: partial, customdata: band.n } : { x: [], y: [] },
    ];
  }

  traces(group, data) {
    const label = escapeHtml(group.label);
    const seeds = group.runIds.length;
    const line = {
      type: "scatter",
      mode: this.mode,
      marker: { size: 5 },
      name: seeds === 1 ? label : `${label} (mean of ${seeds} seeds)`,
      line: { color: group.colour, width: 2 },
      hovertemplate: `${label}<br>%{x}: %{y:.5g}<extra></extra>`,
      legendgroup: group.key,
    };
    if (data.length === 1) return [{ ...line, ...data[0] }];
    const band = {
      type: "scatter",
      mode: "lines",
      fill: "toself",
      fillcolor: translucent(group.colour, 0.18),
      line: { width: 0 },
      hoverinfo: "skip",
      showlegend: false,
      legendgroup: group.key,
    };
    const partial = {
      ...line,
      name: `${line.name}: fewer seeds`,
      line: { ...line.line, dash: "dot" },
      hovertemplate: `${label}<br>%{x}: %{y:.5g}<br>mean of %{customdata} of ${seeds} seeds<extra></extra>`,
      showlegend: false,
    };
    return [band, line, partial].map((kind, i) => ({ ...kind, ...data[i] }));
  }

  layout() {
    return {
      title: { text: this.title, font: { size: 14 }, x: 0.02 },
      margin: { l: 60, r: 12, t: 36, b: 70 },
      xaxis: { title: { text: this.xTitle, standoff: 6 }, zeroline: false },
      yaxis: { type: this.logY ? "log" : "linear", ...LOG_TICKS, zeroline: false },
      showlegend: true, // even for one optimizer: the legend names it
      legend: { orientation: "h", y: -0.3, font: { size: 11 } },
      hovermode: "x unified", // one tooltip with every run's value at the x under the mouse
      uirevision: this.revision,
      font: { family: "system-ui, sans-serif", size: 12 },
    };
  }

  /** Redraw all traces from the runs' points (a chart that never had any is not drawn). */
  render() {
    if (!this.isDrawn() && !this.hasData()) return;
    const traces = [];
    this.drawn.clear();
    for (const group of this.groups) {
      const data = this.traceData(group);
      if (!data) continue;
      this.drawn.set(group.key, { indices: data.map((_, i) => traces.length + i), data });
      traces.push(...this.traces(group, data));
    }
    this.dirty.clear();
    const first = !this.isDrawn();
    Plotly.react(this.node, traces, this.layout(), { ...PLOT_CONFIG, toImageButtonOptions: { filename: this.metric } });
    if (first) this.node.on("plotly_relayout", (event) => this.relayouted(event));
  }

  /**
   * Draw the points appended since the last flush in one Plotly call: extendTraces when every
   * changed trace only grew at its end (a run's line), else a restyle of just the changed traces
   * (a band, or a mean whose earlier points moved when another seed caught up). Off screen,
   * nothing happens unless `evenOffScreen` (e.g. for an export).
   */
  flush(evenOffScreen = false) {
    if (!this.dirty.size || !(this.onScreen || evenOffScreen)) return;
    const dirty = [...this.dirty].filter((key) => key !== undefined);
    this.dirty.clear();
    if (dirty.some((key) => !this.drawn.has(key))) {
      this.render(); // a setting drew nothing before: the list of traces changes
      return;
    }
    const changes = [];
    for (const key of dirty) {
      const drawn = this.drawn.get(key);
      const data = this.traceData(this.groups.find((group) => group.key === key));
      data.forEach((next, i) => {
        const previous = drawn.data[i];
        if (next.x.length !== previous.x.length || !extendsTrace(previous, next)) {
          changes.push({ index: drawn.indices[i], previous, next });
        }
      });
      drawn.data = data;
    }
    if (!changes.length) return;
    const indices = changes.map((change) => change.index);
    if (changes.every(({ previous, next }) => extendsTrace(previous, next))) {
      const tail = (key) => changes.map(({ previous, next }) => next[key].slice(previous.x.length));
      Plotly.extendTraces(this.node, { x: tail("x"), y: tail("y") }, indices);
    } else {
      const column = (key) => changes.map(({ next }) => next[key] ?? null);
      Plotly.restyle(this.node, { x: column("x"), y: column("y"), customdata: column("customdata") }, indices);
    }
  }

  isDrawn() {
    return this.node.classList.contains("js-plotly-plot");
  }

  setSmoothing(weight) {
    this.smoothing = weight;
    if (this.isDrawn()) this.render();
  }

  /** "minmax" or "sd": what the band of a group of seeds spans. */
  setBand(band) {
    this.band = band;
    if (this.isDrawn()) this.render();
  }

  setLogY(logY) {
    this.logY = logY;
    if (this.isDrawn()) Plotly.relayout(this.node, { "yaxis.type": logY ? "log" : "linear" });
  }

  /** Fit the chart to its container again (after it was shown). */
  resize() {
    if (this.isDrawn()) Plotly.Plots.resize(this.node);
  }

  /** A new x axis (its data follows with setData): forget the zoom. */
  setXTitle(title) {
    this.xTitle = title;
    this.revision += 1;
  }

  relayouted(event) {
    if (event["xaxis.range[0]"] !== undefined) {
      this.onZoom?.([event["xaxis.range[0]"], event["xaxis.range[1]"]]);
    } else if (Array.isArray(event["xaxis.range"])) {
      this.onZoom?.(event["xaxis.range"]);
    } else if (event["xaxis.autorange"]) {
      this.onZoom?.(null);
    }
  }
}

/** Whether trace data `next` is `previous` with points added at the end (a trace with
 * per-point `customdata` is always restyled: extendTraces would not extend that). */
function extendsTrace(previous, next) {
  if (next.x.length < previous.x.length || next.customdata) return false;
  for (let i = 0; i < previous.x.length; i++) {
    if (previous.x[i] !== next.x[i] || previous.y[i] !== next.y[i]) return false;
  }
  return true;
}
