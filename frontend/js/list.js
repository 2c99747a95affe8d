// The experiments list: name, preset, a status badge per run, progress, the best final
// training loss per optimizer, creation time; search by name and filter by status (both done
// by the API), newer/older pages. Refreshes itself while anything on the page is unfinished.

import { ApiError, get } from "./api.js";
import { byId, el, formatNumber, formatTime, replace, startPage, statusBadge, timeAgo } from "./dom.js";
import { groupRuns } from "./optimizers.js";

const PAGE_SIZE = 25;
const REFRESH_MS = 4000;
const state = { offset: 0, total: 0, timer: null, request: null };

function progressOf(runs) {
  const total = runs.reduce((sum, run) => sum + (run.total_steps ?? 0), 0);
  const done = runs.reduce((sum, run) => sum + Math.min(run.step ?? 0, run.total_steps ?? 0), 0);
  return total ? done / total : 0;
}

/** Per optimizer setting, the lowest final training loss over its seeds. */
function bestLosses(runs) {
  return groupRuns(runs)
    .map((group) => {
      const losses = group.runs.map((run) => run.final_metrics?.train_loss).filter((v) => typeof v === "number");
      return { group, best: losses.length ? Math.min(...losses) : null };
    })
    .filter((entry) => entry.best !== null);
}

function row(experiment) {
  const link = el("a", { href: `/experiments/${encodeURIComponent(experiment.id)}` }, experiment.name);
  const fraction = progressOf(experiment.runs);
  const best = bestLosses(experiment.runs);
  return el(
    "tr",
    { dataset: { id: experiment.id } },
    el("td", {}, link, el("div", { class: "muted" }, statusBadge(experiment.status))),
    el("td", { class: "hide-narrow" }, experiment.preset ?? el("span", { class: "muted" }, "custom")),
    el("td", {}, el("div", { class: "badges" }, ...experiment.runs.map((run) => statusBadge(run.status, `${run.label}: ${run.status}${run.error ? ` — ${run.error}` : ""}`)))),
    el(
      "td",
      {},
      el("div", { class: "progress", title: `${Math.round(fraction * 100)} %` }, el("span", { style: `width: ${(fraction * 100).toFixed(1)}%` })),
      el("span", { class: "muted" }, `${Math.round(fraction * 100)} %`),
    ),
    el(
      "td",
      {},
      best.length
        ? best.map(({ group, best: value }) =>
            el("div", {}, el("span", { class: "swatch", style: `background: ${group.colour}` }), `${group.label}: `, el("strong", {}, formatNumber(value))),
          )
        : el("span", { class: "muted" }, "–"),
    ),
    el("td", { class: "hide-narrow", title: formatTime(experiment.created_at) }, timeAgo(experiment.created_at)),
  );
}

async function load() {
  clearTimeout(state.timer);
  state.request?.abort();
  const request = (state.request = new AbortController());
  const message = byId("list-message");
  const params = {
    limit: PAGE_SIZE,
    offset: state.offset,
    name: byId("search").value.trim() || null,
    status: byId("status-filter").value || null,
  };
  let page;
  try {
    page = await get("/api/experiments", params, { signal: request.signal });
  } catch (error) {
    if (error.name === "AbortError") return;
    message.textContent = error instanceof ApiError ? error.message : String(error);
    message.classList.remove("hidden");
    return;
  }
  state.total = page.total;
  replace(byId("experiments"), ...page.items.map(row));
  const filtered = params.name || params.status;
  message.textContent = filtered ? "No experiment matches." : "No experiments yet: start one with “New comparison”.";
  message.classList.toggle("hidden", page.items.length > 0);
  byId("count").textContent = `${page.total} experiment${page.total === 1 ? "" : "s"}`;
  byId("page").textContent = page.total ? `${state.offset + 1}–${state.offset + page.items.length} of ${page.total}` : "";
  byId("previous").disabled = state.offset === 0;
  byId("next").disabled = state.offset + PAGE_SIZE >= page.total;
  if (page.items.some((e) => e.status === "queued" || e.status === "running")) {
    state.timer = setTimeout(load, REFRESH_MS);
  }
}

function main() {
  let debounce = null;
  byId("search").addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      state.offset = 0;
      load();
    }, 250);
  });
  byId("status-filter").addEventListener("change", () => {
    state.offset = 0;
    load();
  });
  byId("filters").addEventListener("submit", (event) => event.preventDefault());
  byId("previous").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    load();
  });
  byId("next").addEventListener("click", () => {
    state.offset += PAGE_SIZE;
    load();
  });
  load();
}

startPage(main);
