// The experiment's live event stream (server-sent events), delivered in batches: events are
// handed over together at an animation frame, at most every MIN_INTERVAL_MS, so a burst of
// metric points (ten runs flushing once a second each) costs a few chart updates a second, not
// one per event.

import { authorizedUrl } from "./api.js";

const KINDS = ["metrics", "status", "snapshot"];
const MIN_INTERVAL_MS = 200;

/**
 * Open the stream after event `lastEventId` and call `onBatch([{kind, data}, ...])` once per
 * frame with what arrived; `onState("live" | "reconnecting" | "closed", reason?)` reports the
 * connection. EventSource reconnects by itself, sending `Last-Event-ID`, so nothing is lost.
 * Returns a function that closes the stream.
 */
export function openStream(experimentId, lastEventId, { onBatch, onState }) {
  const source = new EventSource(authorizedUrl(`/api/experiments/${encodeURIComponent(experimentId)}/events`, { last_event_id: lastEventId }));
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
    pending.push({ kind, data: JSON.parse(event.data) });
    if (scheduled) return;
    const wait = Math.max(0, delivered + MIN_INTERVAL_MS - performance.now());
    scheduled = setTimeout(() => (frame = requestAnimationFrame(deliver)), wait);
  };
  for (const kind of KINDS) source.addEventListener(kind, receive(kind));
  source.addEventListener("end", (event) => {
    source.close();
    onState("closed", JSON.parse(event.data).reason);
  });
  source.addEventListener("open", () => onState("live"));
  source.addEventListener("error", () => onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting"));
  return () => {
    source.close();
    clearTimeout(scheduled);
    cancelAnimationFrame(frame);
  };
}
