// The runs table of the experiment page: status (with the failure or divergence reason, a
// queued run's place in its queue), device (where it ran, in its tooltip), steps, time (a
// running run's time left), final (or latest) metrics, hyper-parameters, cancel and raw export.

import { el, formatDuration, formatNumber, replace, statusBadge } from "./dom.js";

const ACTIVE = new Set(["queued", "running"]);

export function isActive(run) {
  return ACTIVE.has(run.status);
}

/** Where a run ran, for the device cell's tooltip: versions, git commit, host, plugins. */
export function provenanceText(provenance) {
  if (!provenance) return null;
  const plugins = Object.entries(provenance.plugins ?? {}).map(([name, version]) => `${name} ${version}`);
  return [
    `kfac-lab ${provenance.kfac_lab ?? "?"}${provenance.git_commit ? ` (git ${provenance.git_commit.slice(0, 12)})` : ""}`,
    `Python ${provenance.python}`,
    provenance.torch ? `torch ${provenance.torch}${provenance.cuda ? `, CUDA ${provenance.cuda}` : ""}` : null,
    `host ${provenance.host}`,
    plugins.length ? `plugins: ${plugins.join(", ")}` : null,
  ]
    .filter(Boolean)
    .join("\n");
}

/** The optimizer's hyper-parameters, without its name, as "lr=0.01 momentum=0.9". */
// The ranks of a data-parallel run: "2 processes", or "2 nodes × 2 processes" across workers.
export function worldText(run) {
  const nodes = run.nodes ?? 1;
  const processes = run.processes ?? 1;
  if (nodes > 1) return `${nodes} nodes × ${processes} process${processes > 1 ? "es" : ""}`;
  return processes > 1 ? `${processes} processes` : "";
}

function hyperText(optimizer) {
  return Object.entries(optimizer ?? {})
    .filter(([key, value]) => key !== "name" && value !== null)
    .map(([key, value]) => `${key}=${value}`)
    .join(" ");
}

/**
 * A running run's time left: its pace so far over the steps still to go (the estimate made at
 * queueing until it has a step to go by); null when it cannot be said.
 */
function secondsLeft(run) {
  if (run.status !== "running" || !run.total_steps) return null;
  const elapsed = elapsedSeconds(run);
  if (run.step > 0 && elapsed !== null) return (elapsed * (run.total_steps - run.step)) / run.step;
  return run.estimate ? Math.max(0, run.estimate.run_seconds - (elapsed ?? 0)) : null;
}

function timeText(run) {
  const left = secondsLeft(run);
  const elapsed = formatDuration(elapsedSeconds(run));
  return left === null ? elapsed : `${elapsed} · about ${formatDuration(left)} left`;
}

function elapsedSeconds(run) {
  if (!run.started_at) return null;
  const end = run.finished_at ? new Date(run.finished_at) : new Date();
  return (end - new Date(run.started_at)) / 1000;
}

function queuePlace(position) {
  return position === 1 ? "next in its queue" : `${position - 1} run${position === 2 ? "" : "s"} ahead in its queue`;
}

// Rows already drawn, per table body: run id → {key, row, numbers}. A live frame changes the
// steps, times and losses of many runs at once (100 in a sweep); those cells are updated in
// place, and a row is built again only when what its other cells show changed.
const drawnRows = new WeakMap();

/**
 * Render the table body; `groups` are the comparison endpoint's (a run takes its group's
 * colour). `latest(run, name)` gives the newest value of a metric drawn on the
 * page (shown while a run has no final metrics yet); `onCancel` is null on a read-only page.
 */
export function renderRuns(tbody, runs, groups, { latest, onCancel, onExport }) {
  const colourOf = new Map(groups.flatMap((group) => group.runs.map((id) => [id, group.colour])));
  const metric = (run, name) => run.final_metrics?.[name] ?? latest(run, name);
  const drawn = drawnRows.get(tbody) ?? new Map();
  drawnRows.set(tbody, drawn);
  const rows = runs.map((run) => {
    const cancelRequested = run.cancel_requested && isActive(run);
    const colour = colourOf.get(run.id) ?? "transparent";
    const key = JSON.stringify([run.label, run.seed, run.status, cancelRequested, run.error, run.device, run.provenance, run.processes, run.nodes, colour, run.optimizer, Boolean(onCancel), run.queue_position, run.status_detail]);
    let entry = drawn.get(run.id);
    if (entry?.key !== key) {
      const numbers = Array.from({ length: 5 }, (_, i) => el("td", { class: i ? "num" : "mono" }));
      const row = el(
        "tr",
        { dataset: { runId: run.id } },
        el("td", {}, el("span", { class: "swatch", style: `background: ${colour}` }), run.label, el("div", { class: "muted" }, `seed ${run.seed}`)),
        el(
          "td",
          {},
          statusBadge(run.status),
          cancelRequested ? el("div", { class: "muted" }, "cancelling…") : null,
          run.status === "queued" && run.queue_position ? el("div", { class: "muted queue-place" }, queuePlace(run.queue_position)) : null,
          run.status_detail ? el("div", { class: "muted" }, run.status_detail) : null,
          run.error ? el("div", { class: "error-text" }, run.error) : null,
        ),
        el("td", { class: "hide-narrow", title: provenanceText(run.provenance) }, run.device ?? "–", run.provenance ? el("div", { class: "muted" }, run.provenance.host) : null, worldText(run) ? el("div", { class: "muted" }, worldText(run)) : null),
        ...numbers,
        el("td", { class: "hyper hide-narrow" }, hyperText(run.optimizer) || "defaults"),
        el(
          "td",
          {},
          onCancel && isActive(run) && !cancelRequested
            ? el("button", { type: "button", class: "small danger", on: { click: () => onCancel(run) } }, "Cancel")
            : null,
          el("button", { type: "button", class: "small", title: "Every recorded point as CSV", on: { click: () => onExport(run) } }, "Raw CSV"),
        ),
      );
      entry = { key, row, numbers };
      drawn.set(run.id, entry);
    }
    const texts = [
      run.total_steps ? `${run.step} / ${run.total_steps}` : String(run.step),
      timeText(run),
      ...["train_loss", "test_loss", "test_accuracy"].map((name) => formatNumber(metric(run, name))),
    ];
    entry.numbers.forEach((cell, i) => {
      if (cell.textContent !== texts[i]) cell.textContent = texts[i];
    });
    return entry.row;
  });
  const same = rows.length === tbody.children.length && rows.every((row, i) => tbody.children[i] === row);
  if (!same) replace(tbody, ...rows);
}
