// The experiments list: name, preset, a status badge per run, progress, the best final
// training loss per optimizer, creation time; search by name and filter by status (both done
// by the API), newer/older pages. Refreshes itself while anything on the page is unfinished.
// Experiments ticked here (across pages and searches) open side by side in /compare?ids=.

import { ApiError, credentials, get } from "./api.js";
import { byId, el, formatNumber, formatTime, replace, shortcuts, showNotice, startPage, statusBadge, timeAgo } from "./dom.js";

const PAGE_SIZE = 25;
const REFRESH_MS = 4000;
const state = { offset: 0, total: 0, timer: null, request: null, selected: new Map() }; // id → name

function progressOf(runs) {
  const total = runs.reduce((sum, run) => sum + (run.total_steps ?? 0), 0);
  const done = runs.reduce((sum, run) => sum + Math.min(run.step ?? 0, run.total_steps ?? 0), 0);
  return total ? done / total : 0;
}

/** Per optimizer, its run with the lowest final training loss (groups, their labels and
 * colours are the comparison's business: the experiment page shows them). */
function bestLosses(runs) {
  const best = new Map();
  for (const run of runs) {
    const loss = run.final_metrics?.train_loss;
    const name = run.optimizer?.name ?? "?";
    if (typeof loss === "number" && !(best.get(name)?.loss <= loss)) best.set(name, { run, loss });
  }
  return [...best].map(([name, entry]) => ({ name, ...entry }));
}

function selectBox(experiment) {
  const box = el("input", {
    type: "checkbox",
    class: "pick",
    checked: state.selected.has(experiment.id),
    "aria-label": `compare ${experiment.name}`,
  });
  box.addEventListener("change", () => {
    if (box.checked) state.selected.set(experiment.id, experiment.name);
    else state.selected.delete(experiment.id);
    updateCompare();
  });
  return box;
}

function updateCompare() {
  const count = state.selected.size;
  byId("compare").disabled = count < 2;
  byId("picked").textContent = count ? `${count} selected: ${[...state.selected.values()].join(", ")}` : "Tick two or more experiments to compare them.";
}

function row(experiment) {
  const link = el("a", { href: `/experiments/${encodeURIComponent(experiment.id)}` }, experiment.name);
  const fraction = progressOf(experiment.runs);
  const best = bestLosses(experiment.runs);
  return el(
    "tr",
    { dataset: { id: experiment.id } },
    el("td", {}, selectBox(experiment)),
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
        ? best.map(({ name, run, loss }) => el("div", { title: run.label }, `${name}: `, el("strong", {}, formatNumber(loss))))
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
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      showNotice(credentials.shared ? "Not open to this link" : "Sign in to this lab", error.message);
      return;
    }
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
  shortcuts({ "/": () => byId("search").focus(), n: () => window.location.assign("/new") });
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
  byId("compare").addEventListener("click", () => {
    window.location.assign(`/compare?ids=${[...state.selected.keys()].map(encodeURIComponent).join(",")}`);
  });
  updateCompare();
  load();
}

startPage(main);
