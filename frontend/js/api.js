// The HTTP API client: credentials, JSON requests, downloads, errors.
//
// Credentials travel in the `Authorization` header only, never in a URL, so that no token
// reaches a server log, a proxy or a browser history. The start-up URL `/?token=ADMIN` hands
// the admin token to the page, which keeps it in localStorage and drops it from the address
// bar at once (as Jupyter does): that first request is the only one to carry it. A share link
// is `/experiments/ID#share=TOKEN`: the token sits in the fragment, which browsers never send;
// it is used instead of the admin token on that page and makes the page read-only. An older
// `?share=TOKEN` link is rewritten into that form on its first load. Downloads are fetched
// (with the header) and handed to the browser as a blob; the event stream is read with
// `fetch` too (see live.js), as EventSource cannot send headers.

import { downloadBlob } from "./dom.js";

const STORAGE_KEY = "kfac-lab.token";

function takeCredentials() {
  const url = new URL(window.location.href);
  const fresh = url.searchParams.get("token");
  if (fresh) {
    localStorage.setItem(STORAGE_KEY, fresh);
    url.searchParams.delete("token");
  }
  const legacyShare = url.searchParams.get("share");
  if (legacyShare) {
    url.searchParams.delete("share");
    url.hash = new URLSearchParams({ share: legacyShare }).toString();
  }
  if (fresh || legacyShare) history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  const share = new URLSearchParams(url.hash.slice(1)).get("share");
  if (share) return { token: share, shared: true };
  return { token: localStorage.getItem(STORAGE_KEY), shared: false };
}

/** `{token, shared}`: the credential this page uses, and whether it is a read-only share. */
export const credentials = takeCredentials();

export const NO_TOKEN =
  "This page needs the lab's access token: open the address that `kfac-lab serve` printed, or ask the lab's owner for it. A read-only share link opens its one experiment only.";

/** An error answer of the API, with the field errors of a 422 as `fields` ("runs.0.lr" → text). */
export class ApiError extends Error {
  constructor(status, message, fields = {}, retryAfterS = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.fields = fields;
    this.retryAfterS = retryAfterS; // from `Retry-After` (a 429 or a 503), if given
  }
}

/**
 * Field errors from a FastAPI / pydantic 422 body: `{detail: [{loc: [...], msg}]}`. The leading
 * "body" / "query" of `loc` is dropped and pydantic's union tags (e.g. "kfac") are kept, so the
 * keys read like "base.steps" or "optimizers.1.kfac.lr".
 */
function fieldErrors(detail) {
  const fields = {};
  if (!Array.isArray(detail)) return fields;
  for (const item of detail) {
    const loc = (item.loc ?? []).filter((part, i) => !(i === 0 && ["body", "query", "path"].includes(part)));
    const key = loc.join(".") || "_";
    fields[key] = fields[key] ? `${fields[key]}; ${item.msg}` : item.msg;
  }
  return fields;
}

/** The words for an error answer: a 401 always says how to get in (the server's own words
 * name a header, which means nothing to someone who clicked a link). */
function describe(status, body) {
  const detail = body?.detail;
  if (status === 401) return NO_TOKEN;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => `${(d.loc ?? []).join(".")}: ${d.msg}`).join("; ");
  }
  if (status === 403) return "Not allowed with this link (it is read-only).";
  return `Request failed (${status})`;
}

/** `path` with query parameters; arrays repeat the key, null/undefined are left out. */
function withQuery(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined) continue;
    for (const item of Array.isArray(value) ? value : [value]) query.append(key, String(item));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

async function parsed(response) {
  const text = await response.text();
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return { detail: text };
  }
}

/**
 * Send a request with the page's credential and return the Response once its status is a
 * success; throws ApiError otherwise (status 0: the server cannot be reached).
 */
export async function send(method, path, { body, params, signal, headers = {} } = {}) {
  const all = { Accept: "application/json", ...headers };
  if (credentials.token) all.Authorization = `Bearer ${credentials.token}`;
  if (body !== undefined) all["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(withQuery(path, params), {
      method,
      headers: all,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "The server cannot be reached.");
  }
  if (!response.ok) {
    const data = await parsed(response);
    const retryAfter = Number.parseFloat(response.headers.get("Retry-After"));
    const message = describe(response.status, data);
    throw new ApiError(response.status, message, fieldErrors(data?.detail), Number.isFinite(retryAfter) ? retryAfter : null);
  }
  return response;
}

/** Send a request and return the parsed JSON (or null for an empty answer); throws ApiError. */
export async function request(method, path, { body, params, signal } = {}) {
  return parsed(await send(method, path, { body, params, signal }));
}

export const get = (path, params, options = {}) => request("GET", path, { ...options, params });
export const post = (path, body) => request("POST", path, { body });
export const del = (path) => request("DELETE", path);

/** Fetch `path` (CSV, the HTML report, ...) with the page's credential and save it as
 * `filename`; returns the size saved, in bytes. */
export async function download(path, filename, params = {}) {
  const response = await send("GET", path, { params, headers: { Accept: "*/*" } });
  const blob = await response.blob();
  downloadBlob(filename, blob);
  return blob.size;
}
