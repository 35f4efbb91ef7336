// The message area: every failure ends up here, in words, so nothing fails silently.
// Errors stay until dismissed (a person may be looking elsewhere); notices fade.
import { h } from "./dom.js";

const MAX_SHOWN = 4;
const NOTICE_MS = 4000;

function area() {
  return document.getElementById("messages");
}

function post(kind, text, timeoutMs) {
  const box = area();
  // The same error again (say, a server that is down) bumps a counter instead of piling up.
  for (const old of box.children) {
    if (old.dataset.kind === kind && old.dataset.text === text) {
      const n = Number(old.dataset.repeat || 1) + 1;
      old.dataset.repeat = String(n);
      old.querySelector(".message-repeat").textContent = `×${n}`;
      return old;
    }
  }
  const message = h(
    "div",
    {
      class: `message message-${kind}`,
      role: kind === "error" ? "alert" : "status",
      dataset: { kind, text },
    },
    h("span", { class: "message-text" }, text),
    h("span", { class: "message-repeat" }),
    h("button", {
      type: "button",
      class: "message-close",
      "aria-label": "Dismiss",
      title: "Dismiss",
      onclick: () => message.remove(),
    }, "×"),
  );
  box.append(message);
  while (box.children.length > MAX_SHOWN) box.firstElementChild.remove();
  if (timeoutMs) setTimeout(() => message.remove(), timeoutMs);
  return message;
}

export const showError = (text) => post("error", text);
export const showNotice = (text) => post("notice", text, NOTICE_MS);

/** "Deleting x failed: <why> (HTTP 404)": what was being done, and the server's reason. */
export function describeError(doing, err) {
  const status = err && err.status ? ` (HTTP ${err.status})` : "";
  return `${doing} failed: ${err && err.message ? err.message : String(err)}${status}`;
}
