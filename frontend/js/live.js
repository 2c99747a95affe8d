// The experiment's live event stream (server-sent events), delivered in batches: events are
// handed over together at an animation frame, at most every MIN_INTERVAL_MS, so a burst of
// metric points (ten runs flushing once a second each) costs a few chart updates a second, not
// one per event.
//
// The stream is read with `fetch`, not EventSource, so that the token travels in the
// `Authorization` header rather than in the URL; the reconnection EventSource would do is done
// here, with `Last-Event-ID`, so nothing is lost and nothing arrives twice.

import { send } from "./api.js";

const KINDS = new Set(["metrics", "status", "snapshot", "logs"]);
const MIN_INTERVAL_MS = 200;
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30_000;
// Answers after which opening the stream again cannot help: the link was revoked, the
// experiment deleted, or the page has no token.
const FINAL_STATUSES = new Set([401, 403, 404]);

/**
 * Parse the `text/event-stream` body (the WHATWG "event stream interpretation": `field: value`
 * lines, a blank line dispatches, `:` starts a comment) and call `onEvent({type, data, id})`
 * for each event, `onRetry(ms)` for a `retry:` field. Resolves when the body ends.
 */
async function readEvents(body, { onEvent, onRetry }) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { type: "", data: [], id: null };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (event.data.length) onEvent({ type: event.type || "message", data: event.data.join("\n"), id: event.id });
        event = { type: "", data: [], id: null };
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event.type = text;
      else if (field === "data") event.data.push(text);
      else if (field === "id" && !text.includes("\0")) event.id = text;
      else if (field === "retry" && /^\d+$/.test(text)) onRetry(Number(text));
    }
  }
}

/**
 * Open the stream after event `lastEventId` and call `onBatch([{kind, data}, ...])` once per
 * frame with what arrived; `onState("live" | "reconnecting" | "closed", reason?)` reports the
 * connection. When the stream breaks (network, server restart, a 503 while the database is
 * down, a 429 when too many streams are open) it is opened again after the last event
 * received, with a growing delay (at least the server's `Retry-After`). Only an `end` event, or
 * an answer that says the page may not read the experiment, closes it for good. Returns a
 * function that closes the stream.
 */
export function openStream(experimentId, lastEventId, { onBatch, onState }) {
  const path = `/api/experiments/${encodeURIComponent(experimentId)}/events`;
  let controller = null;
  let closed = false;
  let retryTimer = 0;
  let retryMs = RETRY_FIRST_MS;
  let serverRetryMs = RETRY_FIRST_MS;
  let pending = [];
  let scheduled = 0;
  let frame = 0;
  let delivered = -Infinity;

  const deliver = () => {
    scheduled = frame = 0;
    delivered = performance.now();
    const batch = pending;
    pending = [];
    onBatch(batch);
  };
  const finish = (reason) => {
    closed = true;
    controller?.abort();
    onState("closed", reason);
  };
  const receive = ({ type, data, id }) => {
    if (type === "end") return finish(JSON.parse(data).reason);
    if (!KINDS.has(type)) return;
    if (id !== null) lastEventId = id;
    pending.push({ kind: type, data: JSON.parse(data) });
    if (scheduled) return;
    const wait = Math.max(0, delivered + MIN_INTERVAL_MS - performance.now());
    scheduled = setTimeout(() => (frame = requestAnimationFrame(deliver)), wait);
  };
  const reconnect = (waitMs) => {
    onState("reconnecting");
    retryTimer = setTimeout(connect, waitMs);
  };
  const connect = async () => {
    retryTimer = 0;
    controller = new AbortController();
    const headers = { Accept: "text/event-stream" };
    if (lastEventId !== null && lastEventId !== undefined) headers["Last-Event-ID"] = String(lastEventId);
    try {
      const response = await send("GET", path, { headers, signal: controller.signal });
      retryMs = RETRY_FIRST_MS;
      onState("live");
      await readEvents(response.body, { onEvent: receive, onRetry: (ms) => (serverRetryMs = ms) });
      if (!closed) reconnect(serverRetryMs); // the server ended it for its own sake (too far behind, restart)
    } catch (error) {
      if (closed) return;
      if (FINAL_STATUSES.has(error.status)) return finish(error.message);
      reconnect(Math.max(retryMs, 1000 * (error.retryAfterS ?? 0)));
      retryMs = Math.min(2 * retryMs, RETRY_MAX_MS);
    }
  };
  connect();
  return () => {
    closed = true;
    controller?.abort();
    clearTimeout(retryTimer);
    clearTimeout(scheduled);
    cancelAnimationFrame(frame);
  };
}
