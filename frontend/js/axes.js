// The x axis of the loss curves: training step, wall-clock training time, or examples seen.
// The API serves step and time; examples seen are drawn from steps through each run's
// `examples_seen` series (batch sizes may grow), which is remembered as it arrives.

import { interpolate } from "./series.js";

/**
 * Tick labels of a log axis. Plotly's default writes the powers of ten as "10²" and the ticks
 * between them as bare small digits ("10², 5, 2, 10, 5, 2, 1"); these say every tick in full.
 * `LOG_TICKS` for values within a few decades (losses, learning rates, ranks: 1, 2, 5, 10, 20),
 * `LOG_DECADES` for values across many (eigenvalues: 10⁻⁸ … 10²; only the powers labelled).
 */
export const LOG_TICKS = { exponentformat: "none", minorloglabels: "complete" };
export const LOG_DECADES = { exponentformat: "power", minorloglabels: "none" };

export const AXES = { step: "step", time: "training time (s)", examples: "examples seen" };
export const EXAMPLES = "examples_seen";

export class XAxis {
  constructor() {
    this.name = "step";
    this.examples = new Map(); // run id → {x: steps, y: examples seen}
  }

  get title() {
    return AXES[this.name];
  }

  /** The API's x for the current axis: examples seen are drawn from steps. */
  server() {
    return this.name === "time" ? "time" : "step";
  }

  /** Steps → examples seen of a run (by its `examples_seen` series); other axes unchanged. */
  fromServer(runId, xs) {
    if (this.name !== "examples") return xs;
    const map = this.examples.get(runId);
    return map ? xs.map((step) => interpolate(map.x, map.y, step)) : [];
  }

  /** The API's x range for a zoomed range of the current axis. */
  serverRange([lo, hi]) {
    if (this.name !== "examples") return [lo, hi];
    const map = this.examples.values().next().value;
    return map ? [interpolate(map.y, map.x, lo), interpolate(map.y, map.x, hi)] : [lo, hi];
  }

  /** A run's whole `examples_seen` series, as the API answered it on the step axis. */
  setExamples(runId, series) {
    this.examples.set(runId, { x: series.x, y: series.y });
  }

  /** Live points of a run's `examples_seen`; those at or before its last step are known. */
  rememberExamples(runId, steps, values) {
    const map = this.examples.get(runId) ?? { x: [], y: [] };
    const last = map.x.at(-1) ?? -Infinity;
    steps.forEach((step, i) => {
      if (step > last) {
        map.x.push(step);
        map.y.push(values[i]);
      }
    });
    this.examples.set(runId, map);
  }
}
