// The runs table of the experiment page: status (with the failure or divergence reason),
// device, steps, time, final (or latest) metrics, hyper-parameters, cancel and raw export.

import { el, formatDuration, formatNumber, replace, statusBadge } from "./dom.js";
import { hyperText } from "./optimizers.js";

const ACTIVE = new Set(["queued", "running"]);

export function isActive(run) {
  return ACTIVE.has(run.status);
}

function elapsedSeconds(run) {
  if (!run.started_at) return null;
  const end = run.finished_at ? new Date(run.finished_at) : new Date();
  return (end - new Date(run.started_at)) / 1000;
}

/**
 * Render the table body. `latest(run, name)` gives the newest value of a metric drawn on the
 * page (shown while a run has no final metrics yet); `onCancel` is null on a read-only page.
 */
export function renderRuns(tbody, runs, groups, { latest, onCancel, onExport }) {
  const colourOf = new Map(groups.flatMap((group) => group.runs.map((run) => [run.id, group.colour])));
  const metric = (run, name) => run.final_metrics?.[name] ?? latest(run, name);
  const rows = runs.map((run) => {
    const progress = run.total_steps ? `${run.step} / ${run.total_steps}` : String(run.step);
    const cancelRequested = run.cancel_requested && isActive(run);
    return el(
      "tr",
      { dataset: { runId: run.id } },
      el("td", {}, el("span", { class: "swatch", style: `background: ${colourOf.get(run.id)}` }), run.label, el("div", { class: "muted" }, `seed ${run.seed}`)),
      el(
        "td",
        {},
        statusBadge(run.status),
        cancelRequested ? el("div", { class: "muted" }, "cancelling…") : null,
        run.error ? el("div", { class: "error-text" }, run.error) : null,
      ),
      el("td", { class: "hide-narrow" }, run.device ?? "–", run.processes > 1 ? el("div", { class: "muted" }, `${run.processes} processes`) : null),
      el("td", { class: "mono" }, progress),
      el("td", { class: "num" }, formatDuration(elapsedSeconds(run))),
      el("td", { class: "num" }, formatNumber(metric(run, "train_loss"))),
      el("td", { class: "num" }, formatNumber(metric(run, "test_loss"))),
      el("td", { class: "num" }, formatNumber(metric(run, "test_accuracy"))),
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
  });
  replace(tbody, ...rows);
}
