// The "new comparison" page: pick a preset (GET /api/presets) or build an experiment in the
// compact comparison form — one base run × optimizers (each maybe sweeping some of its
// hyper-parameters: a list of values where one goes) × seeds — with fields generated from the
// API's own schema. Submitting posts it (a preset with the changed fields as `overrides`, or a
// full spec) and opens the experiment page at once; a 422's field errors appear by the fields.

import { ApiError, get, post } from "./api.js";
import { byId, el, replace, startPage } from "./dom.js";
import { SchemaForm, component, resolve } from "./schemaform.js";

const MAIN_RUN_FIELDS = ["dataset", "model", "batch_size", "steps", "eval_interval", "snapshot_interval", "device"];
const HIDDEN_RUN_FIELDS = ["label", "optimizer", "seed", "probe", ...MAIN_RUN_FIELDS];
const EXPERIMENT_KEYS = ["name", "description", "optimizers", "seeds"];
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

/** What the API will expand the form into: Σ over optimizers of their grids, × seeds. */
function updateRunCount() {
  const seeds = Math.max(1, Array.isArray(state.draft.seeds) ? state.draft.seeds.length : 1);
  const configurations = state.draft.optimizers.length ? state.draft.optimizers.reduce((sum, o) => sum + gridSize(o), 0) : 1;
  const runs = configurations * seeds;
  const what = `${configurations} configuration${configurations === 1 ? "" : "s"} × ${seeds} seed${seeds === 1 ? "" : "s"}`;
  byId("run-count").textContent = `${runs} run${runs === 1 ? "" : "s"} in all (${what}).`;
}

// ---- submitting ------------------------------------------------------------------------------

/**
 * The request body: the preset with the changed fields as `overrides` when that says it
 * exactly (the preset's name is then kept with the experiment), else the full spec.
 */
function requestBody() {
  const draft = state.draft;
  if (state.preset === CUSTOM) return draft;
  const original = normalised(state.preset.experiment);
  const overrides = {};
  for (const key of EXPERIMENT_KEYS.filter((k) => k !== "name")) {
    if (JSON.stringify(draft[key]) !== JSON.stringify(original[key]) && draft[key] !== undefined) overrides[key] = draft[key];
  }
  const baseChanges = changes(original.base, draft.base);
  if (baseChanges === null) return draft;
  Object.assign(overrides, baseChanges);
  const body = { preset: state.preset.name, overrides };
  if (draft.name !== original.name) body.name = draft.name;
  return body;
}

/** What changed from `before` to `after`, as a deep-merge patch; null if a patch cannot say it
 * (a key removed, or an object whose kind changed: merging would mix two kinds' fields). */
function changes(before, after) {
  const patch = {};
  for (const key of Object.keys(before)) if (!(key in after)) return null;
  for (const [key, value] of Object.entries(after)) {
    const old = before[key];
    if (JSON.stringify(old) === JSON.stringify(value)) continue;
    if (isObject(old) && isObject(value)) {
      if (old.name !== value.name || old.kind !== value.kind) return null;
      const inner = changes(old, value);
      if (inner === null) return null;
      patch[key] = inner;
    } else {
      patch[key] = value;
    }
  }
  return patch;
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** A field path of the form for an error location of the request. */
function formPath(key) {
  if (!key.startsWith("overrides.")) return key;
  const rest = key.slice("overrides.".length);
  return EXPERIMENT_KEYS.includes(rest.split(".")[0]) ? rest : `base.${rest}`;
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
