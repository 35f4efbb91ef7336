// The API key this browser uses: asked for when the server answers 401, kept in localStorage,
// sent on every call (Authorization: Bearer), forgotten on request.
//
// <img> thumbnails and "Open" links cannot send headers, so the key is also set as a cookie
// for the page's folder. JavaScript cannot set an HttpOnly cookie, so it is SameSite=Strict
// (never sent by other sites' pages) and the server honours it for reads only (GET), never
// for uploads or deletes. Fetching every image as a blob instead would break "Open in a new
// tab" and the browser's image cache, for no gain: the key is in localStorage either way.

const STORAGE = "ise.apiKey";
const COOKIE = "ise_key";
const YEAR_S = 365 * 24 * 3600;
// What fits in a header and a cookie without quoting; the server checks the rest.
const PLAIN = /^[\x21-\x7e]+$/;

let pending = null; // the dialog's promise while it is open: concurrent 401s share it

const $ = (id) => document.getElementById(id);

export function currentKey() {
  try {
    return localStorage.getItem(STORAGE) || "";
  } catch {
    return ""; // storage disabled: the page still works where no key is needed
  }
}

function setCookie(value, maxAgeS) {
  const path = new URL(".", document.baseURI).pathname;
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `${COOKIE}=${value}; Path=${path}; Max-Age=${maxAgeS}; SameSite=Strict${secure}`;
}

function showForgetButton() {
  $("forget-key").hidden = !currentKey();
}

function saveKey(key) {
  localStorage.setItem(STORAGE, key);
  setCookie(key, YEAR_S);
  showForgetButton();
}

export function forgetKey() {
  try {
    localStorage.removeItem(STORAGE);
  } catch {
    // nothing stored then
  }
  setCookie("", 0);
  showForgetButton();
}

/** Headers that carry the key, if there is one. */
export function authHeaders() {
  const key = currentKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function openDialog(reason, hadKey) {
  const dialog = $("key-dialog");
  const input = $("key-input");
  const error = $("key-error");
  $("key-reason").textContent = hadKey
    ? `The saved key was refused: ${reason}`
    : `The server needs an API key: ${reason}`;
  input.value = "";
  error.textContent = "";
  return new Promise((resolve) => {
    const onSubmit = (event) => {
      if (event.submitter && event.submitter.value === "cancel") return; // closes the dialog
      const key = input.value.trim();
      if (!PLAIN.test(key)) {
        event.preventDefault();
        error.textContent = "A key is one word of letters, digits and _ - (ise_…).";
        input.focus();
        return;
      }
      saveKey(key);
    };
    const onClose = () => {
      dialog.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("close", onClose);
      resolve(dialog.returnValue === "save" ? currentKey() : null);
    };
    dialog.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose);
    dialog.returnValue = "";
    dialog.showModal();
    input.focus();
  });
}

/**
 * Ask the person for a key (one dialog, however many calls are waiting for it). Resolves to
 * the new key, or null when they cancel.
 */
export function askForKey(reason, hadKey) {
  if (!pending) {
    pending = openDialog(reason, hadKey).finally(() => {
      pending = null;
    });
  }
  return pending;
}

/** Wire the "Forget key" button; keep the cookie in step with the stored key. */
export function initKeys(onForget) {
  const key = currentKey();
  if (key) setCookie(key, YEAR_S); // renewed on every visit
  showForgetButton();
  $("forget-key").addEventListener("click", () => {
    forgetKey();
    onForget();
  });
}
