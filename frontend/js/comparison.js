// The comparison table: one row per group of runs that differ only in seed, as the comparison
// endpoint (GET /api/experiments/{id}/comparison, or /api/comparison?ids= for several
// experiments) decides them — labels, colours, grouping and the winner of each optimizer's
// sweep all come from its answer, never from rules of the page. Every column sorts; the
// target (steps / seconds / examples to reach it) is the user's, by default the endpoint's.
// The same answer gives the curves their groups (all, or each optimizer's winner only) and
// the sensitivity charts their points.

import { byId, el, formatNumber, plotlyLoaded, replace } from "./dom.js";
import { drawSensitivity } from "./sensitivity.js";

/** `{mean, sd, ci95, n}` → "mean ± sd" (just the mean for one value, "–" for none). */
function meanSd(stat, format = formatNumber) {
  if (!stat || stat.mean === null || stat.mean === undefined) return "–";
  return stat.n > 1 && stat.sd !== null ? `${format(stat.mean)} ± ${format(stat.sd)}` : format(stat.mean);
}

/** The hover text of a statistic: its 95% confidence interval (the endpoint gives the
 * Student-t half-width) and how many runs it is over. */
function statTitle(stat) {
  if (!stat) return null;
  const parts = [`n = ${stat.n ?? 0}`];
  if (typeof stat.ci95 === "number") {
    parts.unshift(`95% CI [${formatNumber(stat.mean - stat.ci95)}, ${formatNumber(stat.mean + stat.ci95)}]`);
  }
  if (stat.excluded) parts.push(`${stat.excluded} run${stat.excluded === 1 ? "" : "s"} left out (failed, diverged or no point yet)`);
  return parts.join(" · ");
}

const seconds = (value) => (Number.isFinite(value) ? `${formatNumber(value)} s` : formatNumber(value));

/**
 * The table's columns: header, sort value of a group and its cell. `fastest` is the smallest
 * median step time of the table (the cost column is a ratio to it).
 */
const COLUMNS = [
  {
    key: "label",
    title: "Configuration",
    value: (group) => group.label,
    cell: (group) =>
      el(
        "td",
        {},
        el("span", { class: "swatch", style: `background: ${group.colour}` }),
        group.label,
        group.best_of_optimizer ? el("span", { class: "winner-mark", title: `the best ${group.optimizer} configuration by the criterion` }, "★ best") : null,
      ),
  },
  {
    key: "seeds",
    title: "Seeds",
    value: (group) => group.seeds?.count ?? 0,
    cell: (group) => el("td", { class: "num", title: "finished / all" }, `${group.seeds?.finished ?? 0} / ${group.seeds?.count ?? 0}`),
  },
  ...["final", "best"].map((key) => ({
    key,
    title: key === "final" ? "Final" : "Best",
    value: (group) => group[key]?.mean,
    cell: (group) => el("td", { class: "num", title: statTitle(group[key]) }, meanSd(group[key])),
  })),
  ...[
    ["steps_to_target", "Steps to target", formatNumber],
    ["seconds_to_target", "Seconds to target", seconds],
    ["examples_to_target", "Examples to target", formatNumber],
  ].map(([key, title, format]) => ({
    key,
    title,
    value: (group) => group[key]?.mean,
    cell: (group) => {
      const stat = group[key];
      const still = stat?.running ? ` (${stat.running} still running)` : "";
      const missed = stat?.never ? el("div", { class: "muted" }, `${stat.never} not reached${still}`) : null;
      return el("td", { class: "num", title: statTitle(stat) }, meanSd(stat, format), missed);
    },
  })),
  {
    key: "cost",
    title: "Cost per step",
    value: (group, fastest) => (group.step_time_ms ? group.step_time_ms / fastest : null),
    cell: (group, fastest) =>
      el(
        "td",
        { class: "num", title: group.step_time_ms ? `median step ${formatNumber(group.step_time_ms)} ms` : null },
        group.step_time_ms ? `${(group.step_time_ms / fastest).toFixed(2)}×` : "–",
      ),
  },
];

/** Sort `groups` by a column; groups without a value go last whichever the direction. */
export function sortGroups(groups, key, direction, fastest = 1) {
  const column = COLUMNS.find((c) => c.key === key);
  const sign = direction === "descending" ? -1 : 1;
  const missing = (value) => value === null || value === undefined || Number.isNaN(value);
  return groups
    .map((group, index) => ({ group, index, value: column.value(group, fastest) }))
    .sort((a, b) => {
      if (missing(a.value) || missing(b.value)) return missing(a.value) - missing(b.value) || a.index - b.index;
      const order = typeof a.value === "string" ? a.value.localeCompare(b.value) : a.value - b.value;
      return sign * order || a.index - b.index;
    })
    .map(({ group }) => group);
}

/**
 * The curves' groups (`{key, label, colour, runIds}`, see CurveChart) of a comparison: all its
 * groups, or with `winnersOnly` the best configuration of each optimizer.
 */
export function chartGroups(comparison, winnersOnly) {
  return comparison.groups
    .filter((group) => !winnersOnly || group.best_of_optimizer)
    // Keyed by a run: two experiments side by side may share a configuration's key.
    .map((group) => ({ key: group.runs[0], label: group.label, colour: group.colour, runIds: group.runs }));
}

/** Whether a comparison sweeps anything: some configuration has swept values (experiments
 * side by side without sweeps repeat optimizers, but each is one configuration). */
function swept(comparison) {
  return comparison.groups.some((group) => Object.keys(group.config ?? {}).length > 0);
}

/** The panel's content: settings, the table, what it means, the sensitivity charts. */
function panelContent() {
  const select = (id, options) => el("select", { id }, ...options.map(([value, text]) => el("option", { value }, text)));
  return [
    el("div", { class: "panel-head" }, el("h2", {}, "Comparison"), el("span", { class: "muted", id: "comparison-note" })),
    el(
      "div",
      { class: "toolbar" },
      el("label", {}, "metric ", select("comparison-metric", [["train_loss", "training loss"], ["test_loss", "test loss"]])),
      el("label", {}, "winner by ", select("criterion", [["final", "final"], ["best", "best"]])),
      el("label", {}, "target ", el("input", { type: "number", id: "target", step: "any", "aria-label": "target value of the metric" })),
      el("label", {}, el("input", { type: "checkbox", id: "winners-only" }), " winners only"),
    ),
    el("div", { class: "table-wrap" }, el("table", { class: "comparison" }, el("thead", { id: "comparison-head" }), el("tbody", { id: "comparison-rows" }))),
    el(
      "p",
      { class: "legend-note" },
      "One row per configuration (runs that differ only in seed): mean ± sd over seeds, the 95% confidence interval on hover. ",
      "★ marks each optimizer's best configuration by the criterion. Time to target: the first crossing of the target, ",
      "interpolated linearly between recorded points (left empty: the best final mean of the baselines); runs that never ",
      "reach it, failed and diverged ones included, are counted below the mean. Cost per step: median step time as a ratio ",
      "to the fastest configuration.",
    ),
    el("div", { class: "chart-grid", id: "sensitivity" }),
  ];
}

export class ComparisonPanel {
  /**
   * Fills `container`. `load(params)` answers like the comparison endpoint for `{metric,
   * criterion, target}`; `onGroups(groups)` is told the curves' groups when they change.
   */
  constructor({ container, load, onGroups }) {
    replace(container, ...panelContent());
    this.load = load;
    this.onGroups = onGroups;
    this.comparison = null;
    this.sort = { key: null, direction: "ascending" };
    this.winnersOnly = null; // null: not chosen yet, decided by the first answer
    this.drawnGroups = "";
    byId("winners-only").addEventListener("change", (event) => {
      this.winnersOnly = event.target.checked;
      this.publishGroups();
    });
    for (const id of ["target", "criterion", "comparison-metric"]) {
      byId(id).addEventListener("change", () => this.refresh().catch((error) => this.showError(error)));
    }
  }

  params() {
    const target = byId("target").value.trim();
    return {
      metric: byId("comparison-metric").value,
      criterion: byId("criterion").value,
      target: target === "" ? null : target,
    };
  }

  /** Fetch the comparison again (after runs changed, or the user changed a setting). */
  async refresh(answer = this.load(this.params())) {
    this.show(await answer);
  }

  show(comparison) {
    this.comparison = comparison;
    byId("target").placeholder = comparison.target === null || comparison.target === undefined ? "none" : formatNumber(comparison.target);
    if (this.winnersOnly === null) {
      // A sweep's many configurations crowd the chart: its winners first, the rest a click away.
      this.winnersOnly = swept(comparison);
      byId("winners-only").checked = this.winnersOnly;
    }
    this.renderTable();
    this.publishGroups();
    // The table does not wait for plotly.js; the charts do.
    plotlyLoaded().then(() => drawSensitivity(byId("sensitivity"), comparison), () => {}); // reported by the curves
  }

  showError(error) {
    replace(byId("comparison-rows"), el("tr", {}, el("td", { colspan: COLUMNS.length, class: "error-text" }, error.message)));
  }

  publishGroups() {
    const groups = chartGroups(this.comparison, this.winnersOnly);
    const signature = JSON.stringify(groups);
    if (signature === this.drawnGroups) return;
    this.drawnGroups = signature;
    this.onGroups(groups);
  }

  renderTable() {
    const { groups, target, metric, criterion } = this.comparison;
    const times = groups.map((group) => group.step_time_ms).filter((ms) => ms > 0);
    const fastest = times.length ? Math.min(...times) : 1;
    const header = el(
      "tr",
      {},
      ...COLUMNS.map((column) => {
        const sorted = this.sort.key === column.key;
        return el(
          "th",
          { class: column.key === "label" ? null : "num", "aria-sort": sorted ? this.sort.direction : "none", dataset: { key: column.key } },
          el("button", { type: "button", class: "sort", on: { click: () => this.sortBy(column.key) } }, column.title),
        );
      }),
    );
    replace(byId("comparison-head"), header);
    const ordered = this.sort.key ? sortGroups(groups, this.sort.key, this.sort.direction, fastest) : groups;
    const rows = ordered.map((group) =>
      el("tr", { class: group.best_of_optimizer ? "winner" : null, dataset: { label: group.label } }, ...COLUMNS.map((column) => column.cell(group, fastest))),
    );
    replace(byId("comparison-rows"), ...rows);
    const targetText = target === null || target === undefined ? "no target" : `target ${metric} ${formatNumber(target)}`;
    byId("comparison-note").textContent = `${groups.length} configurations · ${metric} · winner by ${criterion} mean · ${targetText}`;
  }

  sortBy(key) {
    const again = this.sort.key === key && this.sort.direction === "ascending";
    this.sort = { key, direction: again ? "descending" : "ascending" };
    this.renderTable();
  }
}
