// The experiment page's exports: the curves as drawn in one CSV, the training-loss chart as a
// PNG, the spec as JSON, and the self-contained HTML report where the API has one.

import { download, get } from "./api.js";
import { byId, downloadText, toast } from "./dom.js";

function csvCell(value) {
  if (typeof value === "number") return String(value);
  const text = String(value ?? "");
  const safe = /^[=+\-@\t\r]/.test(text) ? `'${text}` : text; // no formulas in spreadsheets
  return `"${safe.replaceAll('"', '""')}"`;
}

/** The curves as drawn (raw, not smoothed; zoomed charts: their visible range) in one CSV. */
function exportCsv(state) {
  const lines = [["metric", "run_id", "run", "optimizer", "seed", state.curves.axis.title, "value"].map(csvCell).join(",")];
  for (const chart of state.curves.charts.values()) {
    for (const [runId, series] of chart.data) {
      const run = state.runById(runId);
      series.x.forEach((x, i) => {
        lines.push([chart.metric, runId, run?.label, run?.optimizer?.name, run?.seed, x, series.y[i]].map(csvCell).join(","));
      });
    }
  }
  downloadText(`${fileStem(state)}-curves.csv`, `${lines.join("\n")}\n`);
}

function fileStem(state) {
  return state.experiment.name.replace(/[^\w.-]+/g, "_");
}

/** `state`: the page's `{experiment, curves, runById}`, read when a button is pressed. */
export function setupExports(state, act) {
  byId("export-csv").addEventListener("click", () => exportCsv(state));
  byId("export-spec").addEventListener("click", () =>
    downloadText(`${fileStem(state)}-spec.json`, `${JSON.stringify(state.experiment.spec, null, 2)}\n`, "application/json"),
  );
  byId("export-png").addEventListener("click", () =>
    act(() => {
      const chart = state.curves.charts.get("train_loss");
      chart.flush(true); // with the live points it held back while out of sight
      return Plotly.downloadImage(chart.node, { format: "png", width: 1200, height: 600, filename: "training-loss" });
    }),
  );
}

/**
 * Offer the self-contained HTML report if this API has one. It is a file of several MB that is
 * downloaded, not opened: a page opened from this one would run under this page's policy,
 * which forbids the report's inline scripts. So the button says so, and the page tells when the
 * file is being made and when and under which name it was saved.
 */
export async function offerReport(apiPath, act, filename) {
  const openapi = await get("/openapi.json");
  const path = "/api/experiments/{experiment_id}/report";
  if (!openapi.paths?.[path]) return;
  const button = byId("report");
  button.addEventListener("click", () =>
    act(async () => {
      button.disabled = true;
      toast("Preparing the HTML report…");
      try {
        const bytes = await download(apiPath("/report"), filename);
        toast(`Report downloaded: ${filename} (${(bytes / 1e6).toFixed(1)} MB); it opens offline in any browser.`);
      } finally {
        button.disabled = false;
      }
    }),
  );
  button.classList.remove("hidden");
}
