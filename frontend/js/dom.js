// DOM building and formatting helpers shared by every page.
//
// The one rule of this frontend: data never becomes markup. Elements are made with
// createElement and filled with text nodes (`el`), so a name like `<img onerror=...>` shows as
// text. Plotly is the one place that interprets strings as (a subset of) HTML — trace names,
// titles, hover text — so every user-supplied string handed to Plotly goes through
// `escapeHtml` first.

/** Escape a string for the places that parse HTML (Plotly labels, hover text, titles). */
export function escapeHtml(value) {
  return String(value)
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

/**
 * Create an element: `el("a", {href: url, class: "x", dataset: {id}}, "text", child, ...)`.
 * Attributes are set with setAttribute (never as markup); handlers only through `on`
 * ({event: function}), never as `on…` attributes; children are nodes or strings (inserted as
 * text), null/false/undefined are skipped.
 */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "on") {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (key.toLowerCase().startsWith("on")) {
      throw new Error(`no inline event handler attributes (${key})`);
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key in PROPERTIES) {
      node[PROPERTIES[key]] = value;
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, ...children);
  return node;
}

// Attributes better set as properties (form state must follow the property, not the markup).
const PROPERTIES = { value: "value", checked: "checked", selected: "selected" };

/** Append children (nodes or strings as text) to `node`. */
export function append(node, ...children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace the content of `node` with `children`. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, ...children);
}

export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} is missing from the page`);
  return node;
}

// ---- formatting ------------------------------------------------------------------------------

/** A number in a short readable form: 4 significant digits, exponent for the extremes. */
export function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value) && Math.abs(value) < 1e6) return value.toLocaleString("en-US");
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e6)) return value.toExponential(2);
  return Number(value.toPrecision(4)).toString();
}

/** Seconds as "42 s", "3 min 05 s", "2 h 10 min". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  if (seconds < 60) return `${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${String(Math.round(seconds % 60)).padStart(2, "0")} s`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}

/** A size in bytes as "512 B", "3.2 MB", "1.5 GB". */
export function formatBytes(bytes) {
  if (!Number.isFinite(bytes)) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  const power = Math.min(units.length - 1, Math.max(0, Math.floor(Math.log10(Math.max(bytes, 1)) / 3)));
  const value = bytes / 1000 ** power;
  return `${power === 0 ? value : value.toPrecision(3)} ${units[power]}`;
}

/** An ISO time as a local date and time. */
export function formatTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** An ISO time as "5 min ago". */
export function timeAgo(iso) {
  const seconds = (Date.now() - new Date(iso).getTime()) / 1000;
  if (!Number.isFinite(seconds)) return "";
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

/** A status badge: `<span class="badge status-running">running</span>`. */
export function statusBadge(status, title) {
  return el("span", { class: `badge status-${status}`, title }, status);
}

/**
 * The page's content replaced by a notice saying what happened and what to do (a revoked share
 * link, a page that needs the lab's token): no control of the page is left to press.
 */
export function showNotice(title, ...lines) {
  const main = document.querySelector("main");
  replace(main, el("section", { class: "panel notice", id: "notice", role: "alert" }, el("h1", {}, title), ...lines.map((line) => el("p", {}, line))));
  document.title = `${title} · kfac-lab`;
}

/**
 * Keyboard shortcuts: `keys` maps `event.key` ("/", "n", "ArrowLeft") to an action. Keys typed
 * into a field stay the field's, and combinations with Ctrl, Alt or Meta stay the browser's.
 */
export function shortcuts(keys) {
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.target.closest?.("input, textarea, select, [contenteditable]")) return;
    const action = keys[event.key];
    if (!action) return;
    event.preventDefault();
    action(event);
  });
}

/** A transient message at the top of the page (errors, "link copied"). */
export function toast(message, kind = "info") {
  const region = document.getElementById("toasts") ?? document.body.appendChild(
    el("div", { id: "toasts", role: "status", "aria-live": "polite" }),
  );
  const note = el("div", { class: `toast toast-${kind}` }, message);
  region.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 8000 : 3500);
}

/** Download what `url` answers as `filename` (same origin). */
export function downloadUrl(url, filename) {
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
}

/** Save `blob` as a file named `filename`. */
export function downloadBlob(filename, blob) {
  const url = URL.createObjectURL(blob);
  downloadUrl(url, filename);
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Download `text` as a file. */
export function downloadText(filename, text, type = "text/csv") {
  downloadBlob(filename, new Blob([text], { type }));
}

/** Run a page's start-up; a failure is shown to the user and reported on the console. */
export function startPage(main) {
  Promise.resolve()
    .then(main)
    .catch((error) => {
      toast(error?.message ?? String(error), "error");
      throw error;
    });
}

/**
 * Call `action` once, when `node` first comes within `margin` of the viewport (at once if it
 * already is): what is below the fold waits until the user scrolls towards it.
 */
export function whenVisible(node, action, margin = "300px") {
  const observer = new IntersectionObserver(
    (entries) => {
      if (!entries.some((entry) => entry.isIntersecting)) return;
      observer.disconnect();
      action();
    },
    { rootMargin: margin },
  );
  observer.observe(node);
}

/** plotly.js (1.5 MB, `<script async id="plotly-js">`) loads in parallel with a page's data;
 * drawing waits for it. */
export function plotlyLoaded() {
  if (window.Plotly) return Promise.resolve();
  const script = byId("plotly-js");
  return new Promise((resolve, reject) => {
    script.addEventListener("load", resolve);
    script.addEventListener("error", () => reject(new Error("plotly.js could not be loaded")));
  });
}
