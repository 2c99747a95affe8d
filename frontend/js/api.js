// The HTTP API client: credentials, JSON requests, errors, the live event stream's URL.
//
// Credentials. The start-up URL `/?token=ADMIN` hands the admin token to the page, which keeps
// it in localStorage and drops it from the address bar (as Jupyter does). A share link opens an
// experiment page with `?share=TOKEN`; that token stays in the address bar (it *is* the link),
// is used instead of the admin token on that page, and makes the page read-only. Every request
// sends `Authorization: Bearer …`; EventSource and download links cannot send headers, so
// their URLs carry `?token=`.

const STORAGE_KEY = "kfac-lab.token";

function takeCredentials() {
  const url = new URL(window.location.href);
  const fresh = url.searchParams.get("token");
  if (fresh) {
    localStorage.setItem(STORAGE_KEY, fresh);
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }
  const share = url.searchParams.get("share");
  if (share) return { token: share, shared: true };
  return { token: localStorage.getItem(STORAGE_KEY), shared: false };
}

/** `{token, shared}`: the credential this page uses, and whether it is a read-only share. */
export const credentials = takeCredentials();

/** An error answer of the API, with the field errors of a 422 as `fields` ("runs.0.lr" → text). */
export class ApiError extends Error {
  constructor(status, message, fields = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.fields = fields;
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

function describe(status, body) {
  const detail = body?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail) && detail.length) {
    return detail.map((d) => `${(d.loc ?? []).join(".")}: ${d.msg}`).join("; ");
  }
  if (status === 401) return "This page needs an access token: open the URL that `kfac-lab serve` printed.";
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

/** Send a request and return the parsed JSON (or null for an empty answer); throws ApiError. */
export async function request(method, path, { body, params, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (credentials.token) headers.Authorization = `Bearer ${credentials.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(withQuery(path, params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "The server cannot be reached.");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { detail: text };
  }
  if (!response.ok) {
    throw new ApiError(response.status, describe(response.status, data), fieldErrors(data?.detail));
  }
  return data;
}

export const get = (path, params, options = {}) => request("GET", path, { ...options, params });
export const post = (path, body) => request("POST", path, { body });
export const del = (path) => request("DELETE", path);

/**
 * A URL that carries the token itself (`?token=`), for what cannot send headers: EventSource,
 * download links, a report opened in a new tab.
 */
export function authorizedUrl(path, params = {}) {
  return withQuery(path, { ...params, token: credentials.token });
}
