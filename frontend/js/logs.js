// The runs' logs on the experiment page: a collapsible panel (<details>) per run. A panel reads
// its run's lines when first opened (GET /api/runs/{id}/logs); new lines come through the
// experiment's event stream (`logs` events), so an open panel tails a running run live. Lines
// are numbered per run (`seq`): whatever arrives twice (an event racing the first read) is
// shown once. Every line is a text node: a message holding `<script>` shows as text.

import { get } from "./api.js";
import { append, el, formatTime, replace, toast } from "./dom.js";

const MAX_SHOWN = 2000; // lines per run, as many as the store keeps

export class LogPanels {
  constructor(container, runs) {
    this.panels = new Map(); // run id -> {pre, last, state: idle | loading | loaded, early}
    replace(container, ...runs.map((run) => this.panel(run)));
  }

  panel(run) {
    const pre = el("pre", { class: "log-lines", "aria-live": "polite" });
    const entry = { pre, last: -1, state: "idle", early: [] };
    const details = el("details", { class: "run-log", dataset: { run: run.id } }, el("summary", {}, run.label), pre);
    details.addEventListener("toggle", () => {
      if (details.open && entry.state === "idle") this.load(run.id, entry);
    });
    this.panels.set(run.id, entry);
    return details;
  }

  async load(runId, entry) {
    entry.state = "loading";
    try {
      const { lines } = await get(`/api/runs/${encodeURIComponent(runId)}/logs`);
      entry.state = "loaded";
      show(entry, lines);
      show(entry, entry.early);
      if (entry.last < 0) replace(entry.pre, el("span", { class: "muted" }, "no log lines yet"));
    } catch (error) {
      entry.state = "idle"; // opening it again tries again
      toast(error.message, "error");
    } finally {
      entry.early = [];
    }
  }

  /** A `logs` event: `{run_id, lines}`; shown where the run's panel has been read. */
  added({ run_id: runId, lines }) {
    const entry = this.panels.get(runId);
    if (entry?.state === "loaded") show(entry, lines);
    else if (entry?.state === "loading") entry.early.push(...lines);
  }
}

function show(entry, lines) {
  const fresh = lines.filter((line) => line.seq > entry.last);
  if (!fresh.length) return;
  const { pre } = entry;
  const following = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4; // at the end: keep it there
  if (entry.last < 0) pre.replaceChildren();
  entry.last = fresh.at(-1).seq;
  append(
    pre,
    fresh.map((line) =>
      el("div", { class: `log-line log-${line.level.toLowerCase()}`, dataset: { seq: line.seq } }, `${formatTime(line.time)} ${line.level} ${line.message}`),
    ),
  );
  while (pre.childElementCount > MAX_SHOWN) pre.firstElementChild.remove();
  if (following) pre.scrollTop = pre.scrollHeight;
}
