// Search: a query image (dropped, picked, pasted, or a stored one for "search similar") and
// a grid of the nearest stored images with score, distance, file name and meta_uuid.
import { api } from "./api.js";
import { bindDropZone, formatBytes, formatCount, h, imageCard, nameLines } from "./dom.js";
import { describeError, showError, showNotice } from "./notify.js";

const $ = (id) => document.getElementById(id);

// Score is (2 - distance) / 2 * 100; these bands only pick a colour.
function scoreBand(score) {
  if (score >= 90) return "high";
  if (score >= 75) return "mid";
  return "low";
}

export function initSearch() {
  const panel = $("panel-search");
  const status = $("search-status");
  const results = $("results");
  const topK = $("top-k");
  const threshold = $("threshold");
  const queryBox = $("query");
  const queryImg = $("query-img");

  let query = null; // {kind: "file", file} | {kind: "stored", meta}
  let inFlight = null; // AbortController of the newest search
  let previewUrl = null; // object URL of a local query image, revoked when replaced
  let finished = 0; // searches that ended (results or error), shown on #results for scripts

  queryImg.addEventListener("error", () => queryBox.classList.add("query-no-preview"));
  queryImg.addEventListener("load", () => queryBox.classList.remove("query-no-preview"));

  /** The controls' values, or null after telling the person what is wrong with them. */
  function readControls() {
    const k = Number(topK.value);
    if (!Number.isInteger(k) || k < 1 || k > 1000) {
      showError("Top-k must be a whole number from 1 to 1000.");
      topK.focus();
      return null;
    }
    const raw = threshold.value.trim();
    const t = raw === "" ? null : Number(raw);
    if (t !== null && (!Number.isFinite(t) || t < 0 || t > 4)) {
      showError("Max distance must be a number from 0 to 4, or empty for no limit.");
      threshold.focus();
      return null;
    }
    return { limit: k, threshold: t };
  }

  function showQuery() {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    if (query.kind === "file") {
      previewUrl = URL.createObjectURL(query.file);
      queryImg.src = previewUrl;
      $("query-title").textContent = query.file.name || "Pasted image";
      $("query-meta").textContent = [formatBytes(query.file.size), "not stored"]
        .filter(Boolean)
        .join(" · ");
    } else {
      queryImg.src = query.meta.thumbnail_url;
      $("query-title").textContent = query.meta.file_name || query.meta.meta_uuid;
      $("query-meta").textContent = `stored image ${query.meta.meta_uuid}`;
    }
    queryBox.hidden = false;
  }

  function resultCard(hit, rank) {
    const band = scoreBand(hit.score);
    return imageCard(hit, {
      badge: h("span", { class: "rank" }, `#${rank}`),
      details: [
        h(
          "div",
          { class: "score-line" },
          h("span", { class: `score score-${band}`, title: "Similarity score, 0-100" },
            hit.score.toFixed(1)),
          h("span", { class: "distance", title: "Squared L2 distance, 0 = identical" },
            // Rounding can leave an image's distance to itself a hair below zero.
            `d ${Math.max(0, hit.distance).toFixed(4)}`),
        ),
        h("div", { class: "score-bar" },
          h("span", { class: `score-${band}`, style: `width: ${Math.max(0, hit.score)}%` })),
        ...nameLines(hit),
      ],
      actions: [
        h("a", { class: "button button-small open", href: hit.file_url, target: "_blank",
                 rel: "noopener", title: "Open the original image" }, "Open"),
        h("button", {
          type: "button",
          class: "button-small similar",
          title: "Search with this stored image",
          onclick: () => searchStored(hit),
        }, "Similar"),
      ],
    });
  }

  async function run() {
    if (!query) return;
    const options = readControls();
    if (!options) return;
    if (inFlight) inFlight.abort(); // only the newest query's results may be shown
    const controller = new AbortController();
    inFlight = controller;
    panel.setAttribute("aria-busy", "true");
    status.textContent = "Searching…";
    const started = performance.now();
    try {
      const body = query.kind === "file"
        ? await api.searchFile(query.file, options, controller.signal)
        : await api.searchStored(query.meta.meta_uuid, options, controller.signal);
      const ms = Math.round(performance.now() - started);
      const hits = body.data || [];
      results.replaceChildren(...hits.map((hit, i) => resultCard(hit, i + 1)));
      status.textContent = hits.length
        ? `${formatCount(hits.length, "result", "results")} in ${ms} ms, most similar first.`
        : options.threshold !== null
          ? `No stored image within distance ${options.threshold}.`
          : "No stored images yet: upload some first.";
    } catch (err) {
      if (err.name === "AbortError") return;
      results.replaceChildren();
      status.textContent = "The search failed.";
      showError(describeError("Search", err));
    } finally {
      if (inFlight === controller) {
        inFlight = null;
        panel.removeAttribute("aria-busy");
        finished += 1;
        results.dataset.searches = String(finished);
      }
    }
  }

  function searchFile(file) {
    query = { kind: "file", file };
    showQuery();
    run();
  }

  function searchStored(meta) {
    query = { kind: "stored", meta };
    showQuery();
    window.scrollTo({ top: 0, behavior: "smooth" });
    run();
  }

  bindDropZone($("search-drop"), $("search-file"), (files) => {
    if (files.length > 1) showNotice(`Search uses one image: ${files[0].name}.`);
    searchFile(files[0]);
  }, () => showError("Nothing to search with: drop an image file."));

  // A new top-k or threshold re-runs the current query.
  topK.addEventListener("change", run);
  threshold.addEventListener("change", run);
  $("search-controls").addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in a field: search again rather than reload the page
    run();
  });

  return { searchFile, searchStored };
}
