// Form fields generated from the API's JSON schema (FastAPI's /openapi.json), so the form
// shows exactly the fields, choices, limits and defaults of the run spec — one source of truth.
//
// The form edits a plain "draft" object (the JSON body to send). A field writes its value at
// its dotted path ("base.model.width_scale", "optimizers.1.damping") and removes it again when
// it equals the schema's default; a choice between kinds (a model, an optimizer) always keeps
// the chosen kind's name in the draft, so the draft is a whole spec the API reads as shown.
//
// Sweeps: a number field the owner declares sweepable takes a list where a single value goes.
// "0.003, 0.01, 0.03" in `optimizers.1.lr` is written as `optimizers.1.sweep.lr: [0.003, 0.01,
// 0.03]` (and `optimizers.1.lr` removed): the API expands it into one configuration per value.

import { el, formatNumber } from "./dom.js";

// ---- schema helpers --------------------------------------------------------------------------

/** Follow `$ref`s (JSON pointers into `root`) until a concrete schema. */
export function resolve(root, schema) {
  let current = schema;
  while (current?.$ref) {
    const path = current.$ref.replace(/^#\//, "").split("/");
    current = path.reduce((node, key) => node?.[key], root);
  }
  return current ?? {};
}

/** The named component schema (FastAPI may suffix request models with "-Input"). */
export function component(root, name) {
  const schemas = root.components?.schemas ?? root.$defs ?? {};
  return schemas[`${name}-Input`] ?? schemas[name];
}

function variantsOf(schema) {
  return schema.oneOf ?? schema.anyOf ?? null;
}

/** An object with a string shorthand (`anyOf: [{object}, {type: string}]`, e.g. a dataset
 * by name) → the object: the form always writes the full form. Anything else → null. */
function shorthandObject(root, schema) {
  const variants = (variantsOf(schema) ?? []).map((variant) => resolve(root, variant));
  const objects = variants.filter((variant) => variant.type === "object");
  const strings = variants.filter((variant) => variant.type === "string");
  return objects.length === 1 && objects.length + strings.length === variants.length ? objects[0] : null;
}

/** A nullable scalar (`anyOf: [X, {type: null}]`) → X; anything else → null. */
function nullableInner(root, schema) {
  const variants = variantsOf(schema);
  if (!variants || variants.length !== 2) return null;
  const other = variants.filter((v) => v.type !== "null");
  return other.length === 1 ? resolve(root, other[0]) : null;
}

/** The tag of a union variant: the const of its discriminator property, or its type. */
function variantTag(root, variant) {
  const resolved = resolve(root, variant);
  for (const property of Object.values(resolved.properties ?? {})) {
    if (property.const !== undefined) return property.const;
  }
  return resolved.type === "integer" ? "fixed" : resolved.title ?? resolved.type;
}

function discriminatorKey(root, variant) {
  const resolved = resolve(root, variant);
  return Object.entries(resolved.properties ?? {}).find(([, p]) => p.const !== undefined)?.[0];
}

function humanise(name) {
  return name.replaceAll("_", " ");
}

function limitsText(schema) {
  const parts = [];
  if (schema.minimum !== undefined) parts.push(`≥ ${schema.minimum}`);
  if (schema.exclusiveMinimum !== undefined) parts.push(`> ${schema.exclusiveMinimum}`);
  if (schema.maximum !== undefined) parts.push(`≤ ${formatNumber(schema.maximum)}`);
  if (schema.exclusiveMaximum !== undefined) parts.push(`< ${schema.exclusiveMaximum}`);
  return parts.join(", ");
}

// ---- draft paths -----------------------------------------------------------------------------

function getPath(object, path) {
  return path.split(".").reduce((node, key) => (node == null ? undefined : node[key]), object);
}

function setPath(object, path, value) {
  const keys = path.split(".");
  let node = object;
  keys.slice(0, -1).forEach((key, i) => {
    if (node[key] === null || typeof node[key] !== "object") node[key] = /^\d+$/.test(keys[i + 1]) ? [] : {};
    node = node[key];
  });
  const last = keys.at(-1);
  if (value === undefined) delete node[last];
  else node[last] = value;
}

// ---- the form --------------------------------------------------------------------------------

/**
 * Renders fields for parts of a schema into containers and keeps `draft` up to date.
 * `onStructure` is called when a choice changes the shape of the form (a model kind, a batch
 * schedule), after the draft changed, so the owner can re-render.
 */
export class SchemaForm {
  constructor(root, draft, { onStructure = () => {}, sweepable = () => false } = {}) {
    this.root = root;
    this.draft = draft;
    this.onStructure = onStructure;
    this.sweepable = sweepable; // path → whether its number field may hold a list (a sweep)
    this.fields = new Map(); // path → .field element
  }

  /** Fields for the properties `names` (default: all but discriminators) of object `schema`. */
  objectFields(schema, path, names = null) {
    const resolved = resolve(this.root, schema);
    const properties = resolved.properties ?? {};
    const keys = (names ?? Object.keys(properties)).filter(
      (key) => key in properties && properties[key].const === undefined,
    );
    return keys.map((key) => this.field(properties[key], path ? `${path}.${key}` : key, key));
  }

  /** One field (or a group of fields) for the value at `path`. */
  field(schema, path, name) {
    const plain = resolve(this.root, schema);
    const resolved = shorthandObject(this.root, plain) ?? plain;
    const inner = nullableInner(this.root, resolved);
    const variants = inner ? null : variantsOf(resolved);
    if (variants) return this.unionField(resolved, variants, path, name);
    if (resolved.type === "object" && resolved.properties) {
      return el(
        "fieldset",
        { class: "form-grid nested", "data-path": path },
        el("legend", {}, humanise(name)),
        ...this.objectFields(resolved, path),
      );
    }
    return this.scalarField(inner ?? resolved, resolved, path, name, Boolean(inner));
  }

  scalarField(schema, outer, path, name, nullable) {
    const fallback = outer.default ?? schema.default;
    const current = getPath(this.draft, path);
    const shown = current === undefined ? fallback : current;
    const write = (value) => {
      const same = JSON.stringify(value) === JSON.stringify(fallback);
      setPath(this.draft, path, same ? undefined : value);
    };
    let control;
    if (schema.type === "boolean") {
      control = el("input", { type: "checkbox", checked: Boolean(shown) });
      control.addEventListener("change", () => write(control.checked));
      return this.wrap(path, name, outer, control, "check");
    }
    if (schema.enum) {
      control = el("select", {}, ...schema.enum.map((option) => el("option", { value: option, selected: option === shown }, String(option))));
      control.addEventListener("change", () => write(control.value));
    } else if ((schema.type === "integer" || schema.type === "number") && this.sweepable(path)) {
      return this.sweepField(path, name, { ...outer, ...schema, description: outer.description ?? schema.description, default: fallback }, shown, write, nullable);
    } else if (schema.type === "integer" || schema.type === "number") {
      control = el("input", {
        type: "number",
        step: schema.type === "integer" ? "1" : "any",
        value: shown ?? "",
        placeholder: nullable ? "auto" : "",
      });
      control.addEventListener("input", () => write(parseNumber(control.value, nullable)));
    } else if (schema.type === "array") {
      control = el("input", { type: "text", value: Array.isArray(shown) ? shown.join(", ") : shown ?? "", placeholder: nullable ? "default" : "e.g. 1, 2, 3" });
      control.addEventListener("input", () => write(parseList(control.value, nullable)));
    } else {
      control = el("input", { type: "text", value: shown ?? "" });
      control.addEventListener("input", () => write(control.value === "" && nullable ? null : control.value));
    }
    return this.wrap(path, name, { ...outer, ...schema, description: outer.description ?? schema.description, default: fallback }, control);
  }

  /**
   * A number field that also takes a list of values: a sweep of the field, written to the
   * `sweep` mapping of the object the field belongs to (see the module comment).
   */
  sweepField(path, name, schema, shown, write, nullable) {
    const cut = path.lastIndexOf(".");
    const owner = path.slice(0, cut);
    const sweepPath = `${owner}.sweep.${path.slice(cut + 1)}`;
    const swept = getPath(this.draft, sweepPath);
    const control = el("input", {
      type: "text",
      inputmode: "decimal",
      value: Array.isArray(swept) ? swept.join(", ") : shown ?? "",
      placeholder: nullable ? "auto" : "",
    });
    control.addEventListener("input", () => {
      const values = parseSweep(control.value);
      setPath(this.draft, sweepPath, values ?? undefined);
      const sweep = getPath(this.draft, `${owner}.sweep`);
      if (sweep && !Object.keys(sweep).length) setPath(this.draft, `${owner}.sweep`, undefined);
      if (values) setPath(this.draft, path, undefined);
      else write(parseNumber(control.value, nullable));
    });
    const hint = "a list such as 0.003, 0.01, 0.03 sweeps it";
    return this.wrap(path, name, { ...schema, description: [schema.description, hint].filter(Boolean).join("; ") }, control);
  }

  /** A choice between object variants (model kind, optimizer, batch schedule). */
  unionField(schema, variants, path, name) {
    const tags = variants.map((v) => variantTag(this.root, v));
    const current = getPath(this.draft, path);
    const index = Math.max(0, variants.findIndex((v) => matchesVariant(this.root, v, current)));
    const chosen = resolve(this.root, variants[index]);
    const chosenKey = discriminatorKey(this.root, chosen);
    // The variant shown is the draft's, tag included: a field of it written later (a model's
    // width scale) then sits in an object the API can tell apart from the other variants.
    if (current === undefined && chosenKey) setPath(this.draft, path, { [chosenKey]: chosen.properties[chosenKey].const });
    const select = el("select", {}, ...tags.map((tag, i) => el("option", { value: String(i), selected: i === index }, humanise(String(tag)))));
    select.addEventListener("change", () => {
      const variant = resolve(this.root, variants[Number(select.value)]);
      const key = discriminatorKey(this.root, variant);
      const value = variant.type === "object" ? (key ? { [key]: variant.properties[key].const } : {}) : variant.default ?? schema.default;
      setPath(this.draft, path, value);
      this.onStructure();
    });
    const head = this.wrap(path, name, schema, select);
    select.id = `${select.id}-kind`;
    head.setAttribute("for", select.id);
    if (chosen.type !== "object") {
      // A plain value next to the choice, e.g. a fixed batch size: the value owns the path.
      select.name = `${path}-kind`;
      const valueField = this.scalarField(chosen, { ...schema, description: undefined }, path, `${humanise(name)} value`, false);
      return el("div", { class: "union" }, head, valueField);
    }
    return el("fieldset", { class: "form-grid nested", "data-path-group": path }, el("legend", {}, humanise(name)), head, ...this.objectFields(chosen, path));
  }

  wrap(path, name, schema, control, extra = "") {
    const hints = [schema.description, limitsText(schema), schema.default !== undefined && schema.default !== null ? `default ${formatValue(schema.default)}` : null]
      .filter(Boolean)
      .join(" · ");
    control.name = path;
    control.id = `field-${path.replaceAll(".", "-")}`;
    const field = el(
      "label",
      { class: `field ${extra}`.trim(), "data-path": path, for: control.id },
      el("span", { class: "name" }, humanise(name)),
      control,
      hints ? el("span", { class: "hint" }, hints) : null,
      el("span", { class: "field-error", role: "alert" }),
    );
    this.fields.set(path, field);
    return field;
  }

  /** Put the API's field errors next to their fields; returns the messages no field took. */
  showErrors(errors) {
    this.clearErrors();
    const unplaced = [];
    const byField = new Map();
    for (const [key, message] of Object.entries(errors)) {
      const path = this.fieldFor(key);
      if (path) byField.set(path, [...(byField.get(path) ?? []), message]);
      else unplaced.push(key === "_" ? message : `${key}: ${message}`);
    }
    for (const [path, messages] of byField) {
      const field = this.fields.get(path);
      // A union reports every variant's complaint; keep the ones about the chosen variant.
      const relevant = messages.filter((m) => !/valid dictionary or instance/.test(m));
      field.classList.add("invalid");
      field.querySelector(".field-error").textContent = (relevant.length ? relevant : messages).join("; ");
    }
    return unplaced;
  }

  clearErrors() {
    for (const field of this.fields.values()) {
      field.classList.remove("invalid");
      field.querySelector(".field-error").textContent = "";
    }
  }

  /**
   * The field an error location belongs to, skipping union tags ("kfac", "constrained-int").
   * An error about a whole group of fields (a dataset's "base.dataset") goes to its first.
   */
  fieldFor(key) {
    const kept = [];
    const segments = key.split(".");
    let best = null;
    for (const segment of segments) {
      const candidate = [...kept, segment].join(".");
      const known = [...this.fields.keys()].some((p) => p === candidate || p.startsWith(`${candidate}.`));
      if (!known) continue;
      kept.push(segment);
      if (this.fields.has(candidate)) best = candidate;
    }
    if (best === null && kept.length === segments.length) {
      best = [...this.fields.keys()].find((p) => p.startsWith(`${kept.join(".")}.`)) ?? null;
    }
    return best;
  }
}

function matchesVariant(root, variant, value) {
  const resolved = resolve(root, variant);
  if (value === undefined || value === null) return false;
  if (resolved.type !== "object") return typeof value !== "object";
  if (typeof value !== "object") return false;
  const key = discriminatorKey(root, resolved);
  return key ? value[key] === resolved.properties[key].const : true;
}

function parseNumber(text, nullable) {
  if (text.trim() === "") return nullable ? null : undefined;
  const value = Number(text);
  return Number.isFinite(value) ? value : text; // let the API name what is wrong
}

/** A list of two or more numbers ("0.003, 0.01 0.03"), or null for anything else. */
function parseSweep(text) {
  const items = text.split(/[\s,;]+/).filter(Boolean);
  if (items.length < 2) return null;
  const values = items.map(Number);
  return values.every(Number.isFinite) ? values : null;
}

function parseList(text, nullable) {
  if (text.trim() === "") return nullable ? null : [];
  const items = text.split(/[\s,]+/).filter(Boolean);
  return items.every((item) => /^-?\d+$/.test(item)) ? items.map(Number) : text;
}

function formatValue(value) {
  return Array.isArray(value) ? `[${value.join(", ")}]` : typeof value === "number" ? formatNumber(value) : String(value);
}
