// The "new comparison" page: pick a preset (GET /api/presets) or build an experiment in the
// compact comparison form — one base run × optimizers (each maybe sweeping some of its
// hyper-parameters: a list of values where one goes) × seeds — with fields generated from the
// API's own schema; each dataset is marked with whether the lab has its files (datasets.js).
// Submitting posts the whole spec the form shows and opens the experiment page at once; a
// 422's field errors appear by the fields.

import { ApiError, get, post } from "./api.js";
import { markDatasets } from "./datasets.js";
import { byId, el, formatBytes, formatDuration, formatNumber, replace, startPage } from "./dom.js";
import { SchemaForm, component, resolve } from "./schemaform.js";

const MAIN_RUN_FIELDS = ["dataset", "model", "batch_size", "steps", "eval_interval", "snapshot_interval", "device"];
const HIDDEN_RUN_FIELDS = ["label", "optimizer", "seed", "probe", ...MAIN_RUN_FIELDS];
const CUSTOM = {
  name: "custom",
  description: "Start from the defaults of every field: K-FAC against SGD with momentum.",
  experiment: { name: "my comparison", base: {}, optimizers: [{ name: "kfac" }, { name: "sgd_momentum" }], seeds: [0] },
};

const state = { schema: null, presets: [], datasets: new Map(), preset: null, draft: null, form: null, previewTimer: null, previews: 0 };
const PREVIEW_DELAY_MS = 400; // after the last keystroke

/** A preset's experiment in the form's terms (`"dataset": "mnist"` → `{"name": "mnist"}`). */
function normalised(experiment) {
  const copy = structuredClone(experiment);
  copy.base ??= {};
  if (typeof copy.base.dataset === "string") copy.base.dataset = { name: copy.base.dataset };
  copy.optimizers ??= [];
  copy.seeds ??= [0];
  return copy;
}

function choosePreset(preset, draft = normalised(preset.experiment)) {
  state.preset = preset;
  state.draft = draft;
  for (const card of document.querySelectorAll(".preset")) {
    card.setAttribute("aria-pressed", String(card.dataset.name === preset.name));
  }
  renderForm();
}

function renderPresets() {
  const cards = [...state.presets, CUSTOM].map((preset) =>
    el(
      "button",
      { type: "button", class: "preset", dataset: { name: preset.name }, "aria-pressed": "false", on: { click: () => choosePreset(preset) } },
      el("strong", {}, preset.name),
      el("p", {}, preset.description ?? ""),
    ),
  );
  replace(byId("presets"), ...cards);
}

/**
 * A stored experiment (its runs expanded) in the form's terms: the base run they share and
 * their optimizers × seeds; null when the runs are not such a product (they differ in more
 * than optimizer and seed), which the form cannot say.
 */
function compactForm(spec) {
  const shared = ({ optimizer, seed, config, label, ...rest }) => rest;
  const runs = spec.runs ?? [];
  if (!runs.length) return null;
  const base = shared(runs[0]);
  if (!runs.every((run) => JSON.stringify(shared(run)) === JSON.stringify(base))) return null;
  const optimizers = [...new Map(runs.map((run) => [JSON.stringify(run.optimizer), run.optimizer])).values()];
  const seeds = [...new Set(runs.map((run) => run.seed))];
  if (optimizers.length * seeds.length !== runs.length) return null;
  return { name: spec.name, description: spec.description ?? "", base, optimizers, seeds };
}

/** "Run again" (`/new?from=ID`): the experiment's own spec in the form, its preset kept. */
async function openExperiment(id) {
  const experiment = await get(`/api/experiments/${encodeURIComponent(id)}`);
  const draft = compactForm(experiment.spec);
  if (!draft) throw new Error("This experiment's runs differ in more than optimizer and seed: the form cannot show them.");
  choosePreset(state.presets.find((p) => p.name === experiment.preset) ?? CUSTOM, draft);
}

// ---- the form --------------------------------------------------------------------------------

function renderForm() {
  const root = state.schema;
  const experiment = component(root, "ExperimentSpec");
  const run = component(root, "RunSpec");
  // An optimizer's number fields take a list of values: a sweep of that field.
  const sweepable = (path) => /^optimizers\.\d+\.[^.]+$/.test(path);
  const form = new SchemaForm(root, state.draft, { onStructure: renderForm, sweepable });
  state.form = form;
  replace(byId("experiment-fields"), ...form.objectFields(experiment, "", ["name", "description"]));
  replace(byId("run-fields"), ...form.objectFields(run, "base", MAIN_RUN_FIELDS));
  markDatasets(form, "base.dataset", state.datasets);
  replace(byId("probe-fields"), ...form.objectFields(resolve(root, resolve(root, run).properties.probe), "base.probe"));
  const advanced = Object.keys(resolve(root, run).properties).filter((key) => !HIDDEN_RUN_FIELDS.includes(key));
  replace(byId("advanced-fields"), ...form.objectFields(run, "base", advanced));
  replace(byId("seed-fields"), ...form.objectFields(experiment, "", ["seeds"]));
  renderOptimizers(form, resolve(root, experiment).properties.optimizers.items);
  byId("spec-form").classList.remove("hidden");
  updateRunCount();
  schedulePreview();
}

function renderOptimizers(form, unionSchema) {
  const cards = state.draft.optimizers.map((optimizer, index) => {
    const remove = el("button", { type: "button", class: "small danger", on: { click: () => {
      state.draft.optimizers.splice(index, 1);
      renderForm();
    } } }, "Remove");
    const card = el(
      "div",
      { class: "optimizer-card" },
      el("header", {}, el("strong", {}, optimizer.name), remove),
      el("div", { class: "form-grid" }, form.field(unionSchema, `optimizers.${index}`, "optimizer")),
    );
    return card;
  });
  replace(byId("optimizers"), ...(cards.length ? cards : [el("p", { class: "muted" }, "No optimizer: the base run's default (K-FAC) is used.")]));
}

/** The configurations an optimizer entry stands for: the size of its sweep's grid (the
 * cartesian product of the listed values). */
function gridSize(optimizer) {
  return Object.values(optimizer.sweep ?? {}).reduce((size, values) => size * values.length, 1);
}

/** The seeds field's words that are not whole numbers (the field keeps its text until all are). */
function badSeeds(seeds) {
  if (Array.isArray(seeds) || seeds === undefined) return [];
  return String(seeds).split(/[\s,]+/).filter((item) => item && !/^-?\d+$/.test(item));
}

/** What the API will expand the form into: Σ over optimizers of their grids, × seeds. */
function updateRunCount() {
  const count = byId("run-count");
  const bad = badSeeds(state.draft.seeds);
  count.classList.toggle("error-text", bad.length > 0);
  if (bad.length) {
    count.textContent = `Seeds are whole numbers: ${bad.map((item) => `"${item}"`).join(", ")} ${bad.length === 1 ? "is" : "are"} not.`;
    return;
  }
  const seeds = Math.max(1, Array.isArray(state.draft.seeds) ? state.draft.seeds.length : 1);
  const configurations = state.draft.optimizers.length ? state.draft.optimizers.reduce((sum, o) => sum + gridSize(o), 0) : 1;
  const runs = configurations * seeds;
  const what = `${configurations} configuration${configurations === 1 ? "" : "s"} × ${seeds} seed${seeds === 1 ? "" : "s"}`;
  count.textContent = `${runs} run${runs === 1 ? "" : "s"} in all (${what}).`;
}

// ---- what will run ---------------------------------------------------------------------------

function schedulePreview() {
  clearTimeout(state.previewTimer);
  state.previewTimer = setTimeout(preview, PREVIEW_DELAY_MS);
}

/**
 * The networks as they will be built (widths after the width scale), their parameter counts
 * and the runs' estimated memory and time, from the API's check of the request the form would
 * send (POST /api/experiments/validate: the launch's own rules).
 */
async function preview() {
  const target = byId("preview");
  if (badSeeds(state.draft.seeds).length) {
    replace(target, el("p", { class: "muted" }, "Correct the seeds to see what will run."));
    return;
  }
  const ticket = ++state.previews;
  let answer;
  try {
    answer = await post("/api/experiments/validate", requestBody());
  } catch (error) {
    if (ticket !== state.previews) return;
    if (!(error instanceof ApiError)) throw error;
    const messages = Object.entries(error.fields).map(([key, message]) => `${formPath(key)}: ${message}`);
    replace(target, el("p", { class: "error-text" }, `Not launchable yet: ${messages.length ? messages.join("; ") : error.message}`));
    return;
  }
  if (ticket !== state.previews) return; // the form changed since
  replace(target, ...previewLines(answer.runs));
}

function previewLines(runs) {
  const networks = new Map(); // one line per distinct network
  for (const run of runs) {
    const widths = run.layers.length ? [run.layers[0].inputs, ...run.layers.map((layer) => layer.outputs)] : [];
    const key = widths.join(" → ");
    if (!networks.has(key)) networks.set(key, run.parameters);
  }
  const most = (pick) => runs.reduce((best, run) => (pick(run) > pick(best) ? run : best), runs[0]);
  const memory = most((run) => run.estimate.memory_bytes);
  const slowest = most((run) => run.estimate.run_seconds);
  return [
    ...[...networks].map(([widths, parameters]) =>
      el("p", { class: "network" }, el("strong", {}, "Network "), widths || "(convolutional)", ` · ${formatNumber(parameters)} parameters`),
    ),
    el(
      "p",
      {},
      `Each run needs up to ${formatBytes(memory.estimate.memory_bytes)} of memory; `,
      `the slowest (${slowest.label}) about ${stepTime(slowest.estimate.step_seconds)} a step, ${formatDuration(slowest.estimate.run_seconds)} for its ${formatNumber(slowest.total_steps)} steps (estimates).`,
    ),
  ];
}

function stepTime(seconds) {
  return seconds < 1 ? `${formatNumber(seconds * 1000)} ms` : formatDuration(seconds);
}

// ---- submitting ------------------------------------------------------------------------------

/**
 * The request body: the whole spec as the form shows it, so the API checks exactly what the
 * form says and its errors name the form's own fields. Started from a preset, the preset is
 * sent along as the experiment's origin (`{"preset", "spec"}`; errors then come under `spec.`).
 */
function requestBody() {
  return state.preset === CUSTOM ? state.draft : { preset: state.preset.name, spec: state.draft };
}

/** The form's field path for an error location of the request. */
function formPath(key) {
  return key.startsWith("spec.") ? key.slice("spec.".length) : key;
}

async function submit(event) {
  event.preventDefault();
  const button = byId("launch");
  const formError = byId("form-error");
  button.disabled = true;
  formError.textContent = "";
  state.form.clearErrors();
  try {
    const experiment = await post("/api/experiments", requestBody());
    window.location.assign(`/experiments/${encodeURIComponent(experiment.id)}`);
  } catch (error) {
    button.disabled = false;
    if (!(error instanceof ApiError)) throw error;
    if (error.status === 422) {
      const fields = Object.fromEntries(Object.entries(error.fields).map(([key, message]) => [formPath(key), message]));
      const unplaced = state.form.showErrors(fields);
      formError.textContent = unplaced.length ? unplaced.join("; ") : "Please correct the fields marked in red.";
      document.querySelector(".field.invalid")?.scrollIntoView({ block: "center" });
    } else {
      formError.textContent = error.message;
    }
  }
}

async function main() {
  byId("spec-form").addEventListener("submit", submit);
  byId("spec-form").addEventListener("input", () => {
    updateRunCount();
    schedulePreview();
  });
  byId("add-optimizer").addEventListener("click", () => {
    state.draft.optimizers.push({ name: "adam" });
    renderForm();
  });
  try {
    const [schema, presets, datasets] = await Promise.all([get("/openapi.json"), get("/api/presets"), get("/api/datasets")]);
    state.schema = schema;
    state.datasets = new Map(datasets.map((dataset) => [dataset.name, dataset]));
    state.presets = Array.isArray(presets) ? presets : Object.entries(presets).map(([name, p]) => ({ name, ...p }));
  } catch (error) {
    replace(byId("presets"), el("p", { class: "error-text" }, error.message));
    return;
  }
  renderPresets();
  const query = new URLSearchParams(window.location.search);
  if (query.get("from")) return openExperiment(query.get("from"));
  const wanted = query.get("preset") ?? "smoke";
  choosePreset(state.presets.find((p) => p.name === wanted) ?? state.presets[0] ?? CUSTOM);
}

startPage(main);
