// The eigen-spectra of the Kronecker factors Ā and G of every layer of one run, one chart per
// layer, every snapshot of the run a line (early light, late dark; the legend names each
// snapshot's step), Ā solid and G dotted. Also how a snapshot names its layers.

import { LOG_DECADES, LOG_TICKS } from "./axes.js";
import { el, escapeHtml, replace } from "./dom.js";

const PLOT_CONFIG = { responsive: true, displaylogo: false };

/** The layers as the model names them, with their shapes ("fc2 250→125"); older snapshots
 * carry only the module names ("4"). */
export function layerLabels(snapshot) {
  return snapshot.extras?.layer_labels ?? snapshot.extras?.layer_names ?? [];
}

/** `snapshots`: `[{step, summary}]` by step, a summary being a snapshot without matrices. */
export function drawSpectra(container, snapshots, runId) {
  if (!snapshots.length) {
    replace(container, el("p", { class: "muted" }, "No snapshot yet."));
    return;
  }
  const newest = snapshots.at(-1).summary;
  const layers = Object.keys(newest.spectra ?? {});
  const labels = Object.fromEntries((newest.extras?.layer_names ?? []).map((name, i) => [name, layerLabels(newest)[i]]));
  if (container.dataset.layers !== layers.join("|") || container.dataset.run !== runId) {
    replace(container, ...layers.map((_, i) => el("div", { class: "chart small", id: `spectrum-${i}` })));
    container.dataset.layers = layers.join("|");
    container.dataset.run = runId;
  }
  layers.forEach((layer, i) => {
    const traces = snapshots.flatMap(({ step, summary }, order) => {
      const pair = summary.spectra?.[layer];
      if (!pair) return [];
      const colour = stepColour(order, snapshots.length);
      return ["A", "G"].map((factor) => {
        const values = [...(pair[factor] ?? [])].filter((v) => v !== null).sort((a, b) => b - a);
        return {
          type: "scatter",
          mode: "lines",
          x: values.map((_, k) => k + 1),
          y: values,
          // One legend entry per snapshot (its Ā line), naming its step; its G line follows it.
          name: `step ${step}`,
          legendgroup: `step-${step}`,
          showlegend: factor === "A",
          line: { color: colour, width: order === snapshots.length - 1 ? 2.5 : 1.2, dash: factor === "A" ? "solid" : "dot" },
          hovertemplate: `${factor === "A" ? "Ā" : "G"}, step ${step}<br>eigenvalue %{x}: %{y:.4g}<extra></extra>`,
        };
      });
    });
    const layout = {
      title: { text: `${escapeHtml(labels[layer] ?? `layer ${layer}`)}: Ā solid, G dotted`, font: { size: 13 }, x: 0.02 },
      margin: { l: 56, r: 8, t: 32, b: 40 },
      legend: { title: { text: "snapshot" }, font: { size: 10 } },
      showlegend: true,
      xaxis: { title: { text: "rank" }, type: "log", ...LOG_TICKS },
      yaxis: { type: "log", ...LOG_DECADES },
      uirevision: runId,
    };
    Plotly.react(container.querySelector(`#spectrum-${i}`), traces, layout, PLOT_CONFIG);
  });
}

/** Early snapshots light, late ones dark (a sequential blue ramp, readable without hue). */
function stepColour(order, count) {
  const t = count > 1 ? order / (count - 1) : 1;
  const from = [158, 202, 225];
  const to = [8, 48, 107];
  const mix = from.map((value, i) => Math.round(value + (to[i] - value) * t));
  return `rgb(${mix.join(", ")})`;
}
