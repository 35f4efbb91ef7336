// Gallery: every stored image (or those with one tag), newest first, a page of thumbnails at
// a time, with delete.
import { api } from "./api.js";
import { formatBytes, formatCount, h, imageCard, nameLines, tagChips } from "./dom.js";
import { describeError, showError, showNotice } from "./notify.js";
import { chooseTag } from "./tags.js";

const $ = (id) => document.getElementById(id);

function formatDate(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

export function initGallery({ onSimilar, onCountChanged }) {
  const tagSelect = $("gallery-tag");
  const grid = $("gallery");
  const status = $("gallery-status");
  const prev = $("page-prev");
  const next = $("page-next");
  const pageLabel = $("page-label");
  const pageSize = $("page-size");

  // Pages by cursor: cursors[i] is the `before` of the i-th page visited from the first
  // (null: the newest), so Previous steps back exactly and no page reads the rows before it.
  let cursors = [null];
  let nextCursor = null;
  let total = 0;
  let stale = true; // set when uploads or deletes happened since the last load
  let loadSeq = 0; // only the newest load may render

  const limit = () => Number(pageSize.value);
  const offset = () => (cursors.length - 1) * limit();
  const firstPage = () => {
    cursors = [null];
  };

  async function remove(meta, button) {
    const name = meta.file_name || meta.meta_uuid;
    if (!window.confirm(`Delete ${name} (${meta.meta_uuid})?\nIt will no longer be found by searches.`)) {
      return;
    }
    button.disabled = true;
    try {
      await api.remove(meta.meta_uuid);
      showNotice(`Deleted ${name}.`);
      onCountChanged();
      // Deleting the last card of the last page: step back to the page before.
      if (grid.children.length === 1 && cursors.length > 1) cursors.pop();
      await load();
    } catch (err) {
      button.disabled = false;
      showError(describeError(`Deleting ${name}`, err));
    }
  }

  function card(meta) {
    const facts = [
      meta.width && meta.height ? `${meta.width}×${meta.height}` : "",
      formatBytes(meta.size_bytes),
    ].filter(Boolean).join(" · ");
    const button = h("button", { type: "button", class: "button-small danger delete" }, "Delete");
    button.addEventListener("click", () => remove(meta, button));
    return imageCard(meta, {
      details: [
        ...nameLines(meta),
        h("div", { class: "facts" }, facts),
        h("div", { class: "facts" }, formatDate(meta.created_at)),
        tagChips(meta, filterBy),
      ],
      actions: [
        h("button", {
          type: "button",
          class: "button-small similar",
          title: "Search with this stored image",
          onclick: () => onSimilar(meta),
        }, "Similar"),
        button,
      ],
    });
  }

  /** Show only the images tagged `tag` ("" for all), from the first page. */
  function filterBy(tag) {
    chooseTag(tagSelect, tag);
    firstPage();
    load();
  }

  async function load() {
    const seq = ++loadSeq;
    const tag = tagSelect.value;
    status.textContent = "Loading…";
    try {
      const body = await api.list(cursors[cursors.length - 1], limit(), tag);
      if (seq !== loadSeq) return;
      total = body.total;
      // The page we were on may have emptied (deletes elsewhere): show the one before.
      if (!body.data.length && total > 0 && cursors.length > 1) {
        cursors.pop();
        return load();
      }
      nextCursor = body.next_before;
      stale = false;
      grid.replaceChildren(...body.data.map(card));
      const pages = Math.max(1, Math.ceil(total / limit()));
      const page = cursors.length;
      const tagged = tag ? ` tagged “${tag}”` : "";
      status.textContent = total
        ? `${formatCount(total, "image", "images")}${tagged}, newest first.`
        : tag ? `No images tagged “${tag}”.` : "No images yet: add some in Upload.";
      pageLabel.textContent = `Page ${page} of ${Math.max(page, pages)}`;
      prev.disabled = cursors.length === 1;
      next.disabled = nextCursor === null || offset() + limit() >= total;
    } catch (err) {
      if (seq !== loadSeq) return;
      status.textContent = "The gallery could not be loaded.";
      showError(describeError("Loading the gallery", err));
    }
    return undefined;
  }

  prev.addEventListener("click", () => {
    if (cursors.length > 1) cursors.pop();
    load();
  });
  next.addEventListener("click", () => {
    if (nextCursor === null) return;
    cursors.push(nextCursor);
    load();
  });
  pageSize.addEventListener("change", () => {
    firstPage();
    load();
  });
  tagSelect.addEventListener("change", () => filterBy(tagSelect.value));
  $("gallery-refresh").addEventListener("click", load);

  return {
    /** The tab was opened: reload only when something changed since the last load. */
    show: () => (stale ? load() : undefined),
    markStale: () => {
      stale = true;
    },
  };
}
