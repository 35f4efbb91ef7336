// Search: a query image (dropped, picked, pasted, or a stored one for "search similar") and
// a grid of the nearest stored images with score, distance, file name and meta_uuid. Where the
// collection has region vectors, a "Match" control picks the mode, and a hit found through a
// part of a stored image shows that part as a box over its thumbnail.
import { api } from "./api.js";
import { bindDropZone, formatBytes, formatCount, h, imageCard, nameLines, tagChips } from "./dom.js";
import { describeError, showError, showNotice } from "./notify.js";

const $ = (id) => document.getElementById(id);

/**
 * Where a box of the stored image (x, y, w, h: fractions of it) lies on its thumbnail, in % of
 * the square thumbnail box: the image is scaled to cover the square and centred (CSS
 * object-fit: cover), so the longer side is cut evenly at both ends. Numbers only.
 */
export function boxOnCover(box, width, height) {
  const short = Math.min(width, height);
  if (!(short > 0)) return null;
  const rw = width / short;
  const rh = height / short;
  const pct = (v) => `${(Math.round(v * 100) / 100).toFixed(2)}%`;
  return {
    left: pct(50 + (box.x - 0.5) * rw * 100),
    top: pct(50 + (box.y - 0.5) * rh * 100),
    width: pct(box.w * rw * 100),
    height: pct(box.h * rh * 100),
  };
}

/** The whole image (0, 0, 1, 1): only a cell of the query matched, nothing to outline. */
const isWhole = (r) => r.x <= 0.001 && r.y <= 0.001 && r.w >= 0.999 && r.h >= 0.999;

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
  const tagSelect = $("search-tag");
  const modeField = $("search-mode-field");
  const modeSelect = $("search-mode");
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
    // A hidden mode control: the collection has no region vectors, the service's default.
    const mode = modeField.hidden ? "" : modeSelect.value;
    return { limit: k, threshold: t, tag: tagSelect.value, mode };
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

  /** The matched region's box over the hit's thumbnail, and a line that says what matched. */
  function matchedRegion(card, hit) {
    const r = hit.matched_region;
    if (!r) return null;
    const place = isWhole(r) ? null : boxOnCover(r, hit.width, hit.height);
    const thumb = card.querySelector(".thumb");
    if (place && thumb) {
      const style = `left: ${place.left}; top: ${place.top}; width: ${place.width}; height: ${place.height}`;
      thumb.append(h("span", { class: "match-box", style, "aria-hidden": "true" }));
    }
    const what = place ? "a part of this image" : "this image";
    const where = r.cell ? ` in cell ${r.cell} of the query` : "";
    return h("div", { class: "match-line", title: "Region search: what matched best" },
      `Matched ${what}${where}`);
  }

  function resultCard(hit, rank) {
    const band = scoreBand(hit.score);
    const card = imageCard(hit, {
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
        tagChips(hit),
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
    const line = matchedRegion(card, hit);
    if (line) card.querySelector(".card-body").append(line);
    return card;
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
      const among = options.tag ? ` tagged “${options.tag}”` : "";
      status.textContent = hits.length
        ? `${formatCount(hits.length, "result", "results")}${among} in ${ms} ms, most similar first.`
        : options.threshold !== null
          ? `No stored image${among} within distance ${options.threshold}.`
          : options.tag ? `No stored image tagged “${options.tag}”.` : "No stored images yet: upload some first.";
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
  tagSelect.addEventListener("change", run);
  $("search-controls").addEventListener("submit", (event) => {
    event.preventDefault(); // Enter in a field: search again rather than reload the page
    run();
  });

  /** Offer the mode control only where the collection has region vectors (the count says). */
  function setRegions(has) {
    modeField.hidden = !has;
  }

  modeSelect.addEventListener("change", run);

  return { searchFile, searchStored, setRegions };
}
