// The experiments list: name, tags, status, preset, a status badge per run, progress, the
// best final training loss per optimizer, creation time. Everything that narrows or orders it
// is done by the API in the database (backend/store/listing.py): the search box (name, tag or
// optimizer), the status and archived filters, tags clicked in a row (all of them), the sort
// of every column (a header's button: descending first, again for ascending), pages of 50
// with the total. Refreshes itself while anything on the page is unfinished. Experiments
// ticked here (across pages and searches) open side by side in /compare?ids=.

import { ApiError, credentials, get } from "./api.js";
import { byId, el, formatNumber, formatTime, replace, shortcuts, showNotice, startPage, statusBadge, timeAgo } from "./dom.js";

const PAGE_SIZE = 50;
const REFRESH_MS = 4000;
const state = {
  offset: 0,
  total: 0,
  timer: null,
  request: null,
  selected: new Map(), // id → name
  tags: [], // the list shows experiments with all of these
  sort: "created",
  order: "desc",
};

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

function tagChips(experiment) {
  const chips = experiment.tags.map((tag) =>
    el("button", { type: "button", class: "tag", title: `Show only experiments tagged ${tag}`, on: { click: () => filterByTag(tag) } }, tag),
  );
  return el("div", { class: "tags" }, ...chips);
}

function filterByTag(tag) {
  if (state.tags.includes(tag)) return;
  state.tags.push(tag);
  showTagFilters();
  reload();
}

function showTagFilters() {
  const chips = state.tags.map((tag) =>
    el(
      "span",
      { class: "tag", dataset: { tag } },
      `tag: ${tag}`,
      el("button", { type: "button", class: "tag-remove", "aria-label": `stop filtering by ${tag}`, on: { click: () => {
        state.tags = state.tags.filter((t) => t !== tag);
        showTagFilters();
        reload();
      } } }, "×"),
    ),
  );
  replace(byId("tag-filters"), ...chips);
}

function row(experiment) {
  const link = el("a", { href: `/experiments/${encodeURIComponent(experiment.id)}` }, experiment.name);
  const fraction = progressOf(experiment.runs);
  const best = bestLosses(experiment.runs);
  return el(
    "tr",
    { dataset: { id: experiment.id } },
    el("td", {}, selectBox(experiment)),
    el("td", {}, link, experiment.archived_at ? el("span", { class: "badge archived", title: formatTime(experiment.archived_at) }, "archived") : null),
    el("td", {}, tagChips(experiment)),
    el("td", {}, statusBadge(experiment.status)),
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
    q: byId("search").value.trim() || null,
    status: byId("status-filter").value || null,
    archived: byId("archived-filter").value,
    tag: state.tags,
    sort: state.sort,
    order: state.order,
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
  const filtered = params.q || params.status || params.tag.length || params.archived !== "exclude";
  message.textContent = filtered ? "No experiment matches." : "No experiments yet: start one with “New comparison”.";
  message.classList.toggle("hidden", page.items.length > 0);
  byId("count").textContent = `${page.total} experiment${page.total === 1 ? "" : "s"}`;
  byId("page").textContent = page.total ? `${state.offset + 1}–${state.offset + page.items.length} of ${page.total}` : "";
  byId("previous").disabled = state.offset === 0;
  byId("next").disabled = state.offset + PAGE_SIZE >= page.total;
  performance.mark("kfac:list-drawn"); // every draw (bench/bench_list_page.py times them)
  if (page.items.some((e) => e.status === "queued" || e.status === "running")) {
    state.timer = setTimeout(load, REFRESH_MS);
  }
}

function reload() {
  state.offset = 0;
  load();
}

/** A header's button sorts by its column: descending first, ascending when pressed again. */
function setupSorting() {
  for (const header of byId("list-head").querySelectorAll("th[data-sort]")) {
    header.querySelector("button.sort").addEventListener("click", () => {
      const key = header.dataset.sort;
      state.order = state.sort === key && state.order === "desc" ? "asc" : "desc";
      state.sort = key;
      for (const other of byId("list-head").querySelectorAll("th[data-sort]")) other.removeAttribute("aria-sort");
      header.setAttribute("aria-sort", state.order === "asc" ? "ascending" : "descending");
      reload();
    });
  }
}

function main() {
  shortcuts({ "/": () => byId("search").focus(), n: () => window.location.assign("/new") });
  let debounce = null;
  byId("search").addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(reload, 250);
  });
  byId("status-filter").addEventListener("change", reload);
  byId("archived-filter").addEventListener("change", reload);
  setupSorting();
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
