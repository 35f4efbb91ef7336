// The HTTP API, as the page uses it. Every URL is relative to the page's folder (index.html
// sets <base href>), because the app may be mounted under a route prefix such as /embedded/.

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

async function requestJSON(path, { method = "GET", params, body, signal } = {}) {
  let response;
  try {
    response = await fetch(apiUrl(path, params), {
      method,
      body,
      signal,
      headers: { Accept: "application/json" },
    });
  } catch (err) {
    if (err.name === "AbortError") throw err; // the caller replaced this request; not an error
    throw new ApiError(`cannot reach the server (${err.message})`, 0);
  }
  return parseEnvelope(response.status, await response.text());
}

/**
 * POST a form with XMLHttpRequest, because fetch() cannot report upload progress.
 * onProgress gets the fraction of the body sent, 0..1.
 */
function postWithProgress(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl(path));
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
    });
    xhr.upload.addEventListener("load", () => onProgress(1));
    xhr.addEventListener("load", () => {
      try {
        resolve(parseEnvelope(xhr.status, xhr.responseText));
      } catch (err) {
        reject(err);
      }
    });
    xhr.addEventListener("error", () => reject(new ApiError("the upload did not reach the server", 0)));
    xhr.addEventListener("abort", () => reject(new ApiError("the upload was cancelled", 0)));
    xhr.send(form);
  });
}

function searchForm(file, { limit, threshold }) {
  const form = new FormData();
  // Pasted images may have no name; the server only uses it for messages.
  form.append("file", file, file.name || "pasted-image");
  form.append("offset", "0");
  form.append("limit", String(limit));
  if (threshold !== null) form.append("threshold", String(threshold));
  return form;
}

const imagePath = (metaUuid) => `meta/image/${encodeURIComponent(metaUuid)}`;

export const api = {
  count: () => requestJSON("meta/image/count"),
  list: (offset, limit) => requestJSON("meta/image", { params: { offset, limit } }),
  remove: (metaUuid) => requestJSON(imagePath(metaUuid), { method: "DELETE" }),

  upload(file, onProgress) {
    const form = new FormData();
    form.append("file", file, file.name);
    return postWithProgress("meta/image/file", form, onProgress);
  },

  searchFile: (file, options, signal) =>
    requestJSON("sample/file", { method: "POST", body: searchForm(file, options), signal }),

  searchStored: (metaUuid, { limit, threshold }, signal) =>
    requestJSON(`sample/meta/${encodeURIComponent(metaUuid)}`, {
      params: { offset: 0, limit, threshold },
      signal,
    }),
};
