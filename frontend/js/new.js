// The "new comparison" page: pick a preset (GET /api/presets) or build an experiment in the
// compact comparison form — one base run × optimizers (each maybe sweeping some of its
// hyper-parameters: a list of values where one goes) × seeds — with fields generated from the
// API's own schema. Submitting posts the whole spec the form shows and opens the experiment
// page at once; a 422's field errors appear by the fields.

import { ApiError, get, post } from "./api.js";
import { byId, el, replace, startPage } from "./dom.js";
import { SchemaForm, component, resolve } from "./schemaform.js";

const MAIN_RUN_FIELDS = ["dataset", "model", "batch_size", "steps", "eval_interval", "snapshot_interval", "device"];
const HIDDEN_RUN_FIELDS = ["label", "optimizer", "seed", "probe", ...MAIN_RUN_FIELDS];
const CUSTOM = {
  name: "custom",
  description: "Start from the defaults of every field: K-FAC against SGD with momentum.",
  experiment: { name: "my comparison", base: {}, optimizers: [{ name: "kfac" }, { name: "sgd_momentum" }], seeds: [0] },
};

const state = { schema: null, presets: [], preset: null, draft: null, form: null };

/** A preset's experiment in the form's terms (`"dataset": "mnist"` → `{"name": "mnist"}`). */
function normalised(experiment) {
  const copy = structuredClone(experiment);
  copy.base ??= {};
  if (typeof copy.base.dataset === "string") copy.base.dataset = { name: copy.base.dataset };
  copy.optimizers ??= [];
  copy.seeds ??= [0];
  return copy;
}

function choosePreset(preset) {
  state.preset = preset;
  state.draft = normalised(preset.experiment);
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
  replace(byId("probe-fields"), ...form.objectFields(resolve(root, resolve(root, run).properties.probe), "base.probe"));
  const advanced = Object.keys(resolve(root, run).properties).filter((key) => !HIDDEN_RUN_FIELDS.includes(key));
  replace(byId("advanced-fields"), ...form.objectFields(run, "base", advanced));
  replace(byId("seed-fields"), ...form.objectFields(experiment, "", ["seeds"]));
  renderOptimizers(form, resolve(root, experiment).properties.optimizers.items);
  byId("spec-form").classList.remove("hidden");
  updateRunCount();
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
  byId("spec-form").addEventListener("input", updateRunCount);
  byId("add-optimizer").addEventListener("click", () => {
    state.draft.optimizers.push({ name: "adam" });
    renderForm();
  });
  try {
    const [schema, presets] = await Promise.all([get("/openapi.json"), get("/api/presets")]);
    state.schema = schema;
    state.presets = Array.isArray(presets) ? presets : Object.entries(presets).map(([name, p]) => ({ name, ...p }));
  } catch (error) {
    replace(byId("presets"), el("p", { class: "error-text" }, error.message));
    return;
  }
  renderPresets();
  const wanted = new URLSearchParams(window.location.search).get("preset") ?? "smoke";
  choosePreset(state.presets.find((p) => p.name === wanted) ?? state.presets[0] ?? CUSTOM);
}

startPage(main);
