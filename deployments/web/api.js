// The HTTP API, as the page uses it. Every URL is relative to the page's folder (index.html
// sets <base href>), because the app may be mounted under a route prefix such as /embedded/.
// Every call carries the API key (keys.js); a 401 asks for one and sends the call again.
import { askForKey, authHeaders, currentKey } from "./keys.js";

/** An API failure with a message meant for a person, and the HTTP status (0: no answer). */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/** Absolute URL for an API path ("meta/image"), with query parameters; empty ones are left out. */
export function apiUrl(path, params = {}) {
  const url = new URL(path, document.baseURI);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  return url.toString();
}

/**
 * Unwrap the {succeed, message, ...} envelope. Anything else (a proxy's HTML error page, an
 * empty body) still becomes an ApiError that says what happened, instead of a JSON parse error.
 */
function parseEnvelope(status, text) {
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: reported below with the status and the start of the text
  }
  if (status >= 200 && status < 300 && body && body.succeed !== false) return body;
  if (body && typeof body.message === "string" && body.message) {
    throw new ApiError(body.message, status);
  }
  const snippet = (text || "").replace(/\s+/g, " ").trim().slice(0, 160);
  throw new ApiError(`the server answered HTTP ${status}${snippet ? `: ${snippet}` : ""}`, status);
}

/** The server's message in a JSON error body, or a generic one. */
function messageOf(text) {
  try {
    const body = JSON.parse(text);
    if (body && typeof body.message === "string" && body.message) return body.message;
  } catch {
    // not JSON
  }
  return "this needs an API key";
}

/**
 * send(headers) -> {status, text}; sent again with a new key while the server answers 401 and
 * the person enters one. Cancelling the dialog reports the 401 as any other error.
 */
async function withKey(send) {
  for (;;) {
    const used = currentKey();
    const { status, text } = await send({ Accept: "application/json", ...authHeaders() });
    if (status !== 401) return parseEnvelope(status, text);
    // Another call got a new key from the person while this one was on its way: use it.
    if (currentKey() !== used) continue;
    if (!(await askForKey(messageOf(text), used !== ""))) return parseEnvelope(status, text);
  }
}

function requestJSON(path, { method = "GET", params, body, signal } = {}) {
  return withKey(async (headers) => {
    let response;
    try {
      response = await fetch(apiUrl(path, params), { method, body, signal, headers });
    } catch (err) {
      if (err.name === "AbortError") throw err; // the caller replaced this request
      throw new ApiError(`cannot reach the server (${err.message})`, 0);
    }
    return { status: response.status, text: await response.text() };
  });
}

/**
 * POST a form with XMLHttpRequest, because fetch() cannot report upload progress.
 * onProgress gets the fraction of the body sent, 0..1.
 */
function postWithProgress(path, form, onProgress) {
  return withKey((headers) => new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl(path));
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
    });
    xhr.upload.addEventListener("load", () => onProgress(1));
    xhr.addEventListener("load", () => resolve({ status: xhr.status, text: xhr.responseText }));
    xhr.addEventListener("error", () => reject(new ApiError("the upload did not reach the server", 0)));
    xhr.addEventListener("abort", () => reject(new ApiError("the upload was cancelled", 0)));
    xhr.send(form);
  }));
}

function searchForm(file, { limit, threshold, tag, mode }) {
  const form = new FormData();
  // Pasted images may have no name; the server only uses it for messages.
  form.append("file", file, file.name || "pasted-image");
  form.append("offset", "0");
  form.append("limit", String(limit));
  if (threshold !== null) form.append("threshold", String(threshold));
  if (tag) form.append("tags", tag);
  if (mode) form.append("mode", mode); // omitted: the service's default (search.mode)
  return form;
}

const imagePath = (metaUuid) => `meta/image/${encodeURIComponent(metaUuid)}`;

export const api = {
  count: () => requestJSON("meta/image/count"),
  // tag: "" for every image, else only the images that carry it.
  // `before`: the previous page's next_before (a cursor: as fast on page 1,000 as on page 1).
  list: (before, limit, tag) => requestJSON("meta/image", { params: { before, limit, tags: tag } }),
  tags: () => requestJSON("tags", { params: { limit: 1000 } }),
  remove: (metaUuid) => requestJSON(imagePath(metaUuid), { method: "DELETE" }),
  duplicates: (threshold, offset, limit) =>
    requestJSON("duplicates", { params: { threshold, offset, limit } }),

  upload(file, onProgress, tags = "") {
    const form = new FormData();
    form.append("file", file, file.name);
    if (tags) form.append("tags", tags); // comma-separated, as typed
    return postWithProgress("meta/image/file", form, onProgress);
  },

  searchFile: (file, options, signal) =>
    requestJSON("sample/file", { method: "POST", body: searchForm(file, options), signal }),

  searchStored: (metaUuid, { limit, threshold, tag, mode }, signal) =>
    requestJSON(`sample/meta/${encodeURIComponent(metaUuid)}`, {
      params: { offset: 0, limit, threshold, tags: tag, mode },
      signal,
    }),
};
