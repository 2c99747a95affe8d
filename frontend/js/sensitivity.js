// Sensitivity charts: for every swept hyper-parameter, the comparison's criterion (the final
// or best value of its metric, mean over seeds) against the swept value, one line per
// optimizer (per combination of its other swept values), seeds as error bars of ±1 sd. This is
// how a reader sees that a baseline was tuned fairly: its winner is not at the grid's edge.
// Colours are the endpoint's (the line of an optimizer takes its winner's colour).

import { LOG_TICKS } from "./axes.js";
import { el, escapeHtml, replace } from "./dom.js";

// Fields whose grids are geometric (0.003, 0.01, 0.03): drawn on a log axis.
const LOG_FIELDS = new Set(["lr", "damping", "eps", "kl_clip", "weight_decay"]);

/** The fields the comparison sweeps: those that take more than one value in some optimizer. */
export function sweptFields(groups) {
  const values = new Map(); // "optimizer field" → set of values
  for (const group of groups) {
    for (const [field, value] of Object.entries(group.config ?? {})) {
      const key = JSON.stringify([group.optimizer, field]);
      values.set(key, (values.get(key) ?? new Set()).add(value));
    }
  }
  const fields = [...values].filter(([, set]) => set.size > 1).map(([key]) => JSON.parse(key)[1]);
  return [...new Set(fields)];
}

/**
 * The lines of the chart of `field`: groups with a numeric value of it, by optimizer and their
 * other swept values, each `{name, colour, x, y, sd}` sorted by x.
 */
export function sensitivityLines(groups, field, criterion) {
  const lines = new Map();
  for (const group of groups) {
    const x = group.config?.[field];
    const stat = group[criterion];
    if (typeof x !== "number" || stat?.mean === null || stat?.mean === undefined) continue;
    const others = Object.entries(group.config).filter(([key]) => key !== field);
    const name = [group.optimizer, ...others.map(([key, value]) => `${key}=${value}`)].join(" ");
    const line = lines.get(name) ?? { name, colour: group.colour, points: [] };
    if (group.best_of_optimizer) line.colour = group.colour;
    line.points.push({ x, y: stat.mean, sd: stat.sd ?? 0 });
    lines.set(name, line);
  }
  return [...lines.values()].map(({ name, colour, points }) => {
    points.sort((a, b) => a.x - b.x);
    return { name, colour, x: points.map((p) => p.x), y: points.map((p) => p.y), sd: points.map((p) => p.sd) };
  });
}

/** Draw one chart per swept field into `container` (emptied when nothing is swept). */
export function drawSensitivity(container, comparison) {
  const { groups, criterion, metric } = comparison;
  const fields = sweptFields(groups);
  container.closest("section")?.classList.toggle("has-sensitivity", fields.length > 0);
  const nodes = fields.map((field) => el("div", { class: "chart small sensitivity", id: `sensitivity-${field}`, dataset: { field } }));
  replace(container, ...nodes);
  fields.forEach((field, index) => {
    const lines = sensitivityLines(groups, field, criterion);
    const log = LOG_FIELDS.has(field) && lines.every((line) => line.x.every((x) => x > 0));
    const traces = lines.map((line) => ({
      type: "scatter",
      mode: "lines+markers",
      name: escapeHtml(line.name),
      x: line.x,
      y: line.y,
      error_y: { type: "data", array: line.sd, visible: true, thickness: 1 },
      line: { color: line.colour, width: 2 },
      marker: { size: 7 },
      customdata: line.sd,
      hovertemplate: `${escapeHtml(line.name)}<br>${escapeHtml(field)}=%{x}: %{y:.5g} ± %{customdata:.2g}<extra></extra>`,
    }));
    const layout = {
      title: { text: `${escapeHtml(criterion)} ${escapeHtml(metric)} against ${escapeHtml(field)}`, font: { size: 14 }, x: 0.02 },
      margin: { l: 60, r: 12, t: 36, b: 60 },
      xaxis: { title: { text: escapeHtml(field) }, type: log ? "log" : "linear", ...(log ? LOG_TICKS : { exponentformat: "power" }) },
      yaxis: { title: { text: `${escapeHtml(criterion)} (mean ± sd over seeds)` }, exponentformat: "power" },
      legend: { orientation: "h", y: -0.3, font: { size: 11 } },
      font: { family: "system-ui, sans-serif", size: 12 },
    };
    Plotly.react(nodes[index], traces, layout, { responsive: true, displaylogo: false });
  });
}
