// The experiment's live event stream (server-sent events), delivered in batches: events are
// handed over together at an animation frame, at most every MIN_INTERVAL_MS, so a burst of
// metric points (ten runs flushing once a second each) costs a few chart updates a second, not
// one per event.

import { authorizedUrl } from "./api.js";

const KINDS = ["metrics", "status", "snapshot"];
const MIN_INTERVAL_MS = 200;
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30_000;

/**
 * Open the stream after event `lastEventId` and call `onBatch([{kind, data}, ...])` once per
 * frame with what arrived; `onState("live" | "reconnecting" | "closed", reason?)` reports the
 * connection. EventSource reconnects by itself after a network error, sending `Last-Event-ID`,
 * so nothing is lost; but it gives up for good when a reconnect is answered with an error (a 503
 * while the database is down), so the stream is then opened again here, after the last event
 * received, with a growing delay. Only an `end` event closes it for good. Returns a function
 * that closes the stream.
 */
export function openStream(experimentId, lastEventId, { onBatch, onState }) {
  let source = null;
  let retryTimer = 0;
  let retryMs = RETRY_FIRST_MS;
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
  const receive = (kind) => (event) => {
    if (event.lastEventId) lastEventId = event.lastEventId;
    pending.push({ kind, data: JSON.parse(event.data) });
    if (scheduled) return;
    const wait = Math.max(0, delivered + MIN_INTERVAL_MS - performance.now());
    scheduled = setTimeout(() => (frame = requestAnimationFrame(deliver)), wait);
  };
  const connect = () => {
    retryTimer = 0;
    source = new EventSource(authorizedUrl(`/api/experiments/${encodeURIComponent(experimentId)}/events`, { last_event_id: lastEventId }));
    for (const kind of KINDS) source.addEventListener(kind, receive(kind));
    source.addEventListener("end", (event) => {
      source.close();
      onState("closed", JSON.parse(event.data).reason);
    });
    source.addEventListener("open", () => {
      retryMs = RETRY_FIRST_MS;
      onState("live");
    });
    source.addEventListener("error", () => {
      onState("reconnecting");
      if (source.readyState !== EventSource.CLOSED) return; // the browser retries by itself
      retryTimer = setTimeout(connect, retryMs);
      retryMs = Math.min(2 * retryMs, RETRY_MAX_MS);
    });
  };
  connect();
  return () => {
    source.close();
    clearTimeout(retryTimer);
    clearTimeout(scheduled);
    cancelAnimationFrame(frame);
  };
}
