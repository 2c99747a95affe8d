// What the experiment page does with its live events (see live.js for the stream itself):
// metric points go to the curves, status changes to the runs (and a re-read of the experiment
// and its comparison), snapshot notices to the curvature panel.

import { byId, toast } from "./dom.js";

/**
 * Apply a frame's worth of events to `page` (`{runById, curves, curvature}`); `onRuns()` is
 * called once if any run changed, `onStatus()` once if any run's status did. The frame's cost
 * is recorded as the User Timing measure "kfac:live-update" (the performance test reads it).
 */
export function applyBatch(page, batch, { onRuns, onStatus }) {
  const start = performance.now();
  let runsChanged = false;
  let statusChanged = false;
  for (const { kind, data } of batch) {
    const run = page.runById(data.run_id);
    if (!run) continue;
    if (kind === "metrics") {
      for (const series of Object.values(data.series)) run.step = Math.max(run.step, series.step.at(-1));
      page.curves.append(run.id, data.series);
      runsChanged = true;
    } else if (kind === "status") {
      Object.assign(run, { status: data.status, step: data.step, error: data.error });
      page.experiment.status = data.experiment_status ?? page.experiment.status;
      runsChanged = statusChanged = true;
    } else if (kind === "snapshot") {
      page.curvature.added(data).catch((error) => toast(error.message, "error"));
    }
  }
  page.curves.flush();
  if (runsChanged) onRuns();
  if (statusChanged) onStatus();
  performance.measure("kfac:live-update", { start });
}

export function showStreamState(name, reason) {
  byId("live-dot").classList.toggle("on", name === "live");
  byId("live-text").textContent = { live: "live", reconnecting: "reconnecting…", closed: reason ?? "not live", finished: "finished" }[name];
}
