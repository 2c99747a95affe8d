// What hovering a curvature heatmap says: the pair of layers (as the model names them), the
// indices within each layer and the signed value of the cell (the colours show magnitudes).
// Plotly's own label is off for the heatmaps: building one label per cell of a 512 × 512
// matrix up front would cost more than the matrix; this one is written for the cell under the
// mouse only.

import { el, formatNumber } from "./dom.js";
import { layerLabels } from "./spectra.js";

/** The layer of `index` among `blocks` ([start, stop) ranges) and the index within it. */
function within(blocks, index) {
  const layer = blocks.findIndex(([start, stop]) => index >= start && index < stop);
  return layer < 0 ? [null, null] : [layer, index - blocks[layer][0]];
}

/**
 * The lines for cell (`row`, `col`) of a panel: `signed` is the matrix the panel shows the
 * magnitudes of. In the block view a cell is a pair of layers; in the entries view an entry,
 * whose index within its layer counts pooled cells when the matrices were pooled (`pool` > 1).
 */
export function cellLines(snapshot, signed, blockView, row, col, what) {
  const names = layerLabels(snapshot);
  const name = (layer) => names[layer] ?? `layer ${layer}`;
  const value = signed?.[row]?.[col];
  const shown = value === null || value === undefined ? "not recorded" : formatNumber(value);
  if (blockView) return [`${name(row)} × ${name(col)}`, `${what}: ${shown}`];
  const [rowLayer, rowIndex] = within(snapshot.blocks, row);
  const [colLayer, colIndex] = within(snapshot.blocks, col);
  const pooled = snapshot.pool > 1 ? ` (cells of ${snapshot.pool} × ${snapshot.pool})` : "";
  return [
    `${name(rowLayer)} × ${name(colLayer)}`,
    `index ${rowIndex} × ${colIndex} within the layers${pooled}`,
    `value: ${shown}`,
  ];
}

let box = null;

/** Show `lines()` next to the mouse while it is over a cell of the heatmap `node`. */
export function attachHover(node, lines) {
  if (node.dataset.hover) return; // once per node: Plotly.react keeps its handlers
  node.dataset.hover = "on";
  box ??= document.body.appendChild(el("div", { class: "heat-hover hidden", id: "heat-hover", role: "tooltip" }));
  node.on("plotly_hover", (event) => {
    const point = event.points?.[0];
    if (!point) return;
    box.replaceChildren(...lines(point.pointIndex[0], point.pointIndex[1]).map((line) => el("div", {}, line)));
    box.style.left = `${event.event.clientX + 14 + window.scrollX}px`;
    box.style.top = `${event.event.clientY + 14 + window.scrollY}px`;
    box.classList.remove("hidden");
  });
  node.on("plotly_unhover", () => box.classList.add("hidden"));
}
