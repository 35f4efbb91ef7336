// Upload: many files at once, each with its own row: progress while it is sent, then the
// outcome (indexed, duplicate, or rejected with the server's reason).
import { api } from "./api.js";
import { bindDropZone, formatBytes, formatCount, h } from "./dom.js";
import { showError, showNotice } from "./notify.js";

// At most this many requests at once: the embedder batches what arrives together anyway, and a
// small server (or a phone's connection) stays responsive for searches in the meantime.
export const CONCURRENCY = 3;

const $ = (id) => document.getElementById(id);

const LABELS = {
  queued: "Waiting",
  uploading: "Uploading",
  processing: "Indexing",
  indexed: "Indexed",
  duplicate: "Duplicate",
  rejected: "Rejected",
};

export function initUpload({ onIndexed, onBatchDone }) {
  const list = $("upload-list");
  const summary = $("upload-summary");
  const clearButton = $("upload-clear");
  const tagsInput = $("upload-tags");
  $("upload-limit").textContent = String(CONCURRENCY);

  const queue = [];
  let active = 0;
  // Outcomes since the queue was last empty: one notice per "batch" a person started.
  let tally = null;

  function makeRow(file) {
    const progress = h("progress", { max: "1", value: "0" });
    const statusText = h("span", { class: "upload-status" }, LABELS.queued);
    const detail = h("div", { class: "upload-detail" });
    const thumb = h("div", { class: "upload-thumb" });
    const row = h(
      "li",
      { class: "upload-row", dataset: { state: "queued", fileName: file.name } },
      thumb,
      h(
        "div",
        { class: "upload-main" },
        h("div", { class: "upload-head" },
          h("span", { class: "file-name", title: file.name }, file.name || "(no name)"),
          h("span", { class: "upload-size" }, formatBytes(file.size))),
        progress,
        detail,
      ),
      statusText,
    );
    return { row, progress, statusText, detail, thumb };
  }

  function setState(ui, state, detailText = "") {
    ui.row.dataset.state = state;
    ui.statusText.textContent = LABELS[state];
    ui.detail.textContent = detailText;
    ui.detail.title = detailText;
  }

  /** Counts over the rows in the list, so the line always matches what is shown below it. */
  function updateSummary() {
    const count = (state) => list.querySelectorAll(`[data-state="${state}"]`).length;
    const [indexed, duplicate, rejected] = ["indexed", "duplicate", "rejected"].map(count);
    const waiting = queue.length + active;
    const parts = [
      `${indexed} indexed`,
      `${duplicate} ${duplicate === 1 ? "duplicate" : "duplicates"}`,
      `${rejected} rejected`,
    ].join(" · ");
    const rows = list.children.length;
    summary.textContent = !rows
      ? "No uploads yet."
      : waiting
        ? `${formatCount(waiting, "file", "files")} to go · ${parts}`
        : `${formatCount(rows, "file", "files")} · ${parts}`;
    clearButton.disabled = indexed + duplicate + rejected === 0;
  }

  async function send(file, ui, tags) {
    setState(ui, "uploading", "0%");
    let outcome;
    try {
      const body = await api.upload(file, (fraction) => {
        ui.progress.value = fraction;
        // Once the bytes are sent the server still decodes, embeds and stores the image.
        if (fraction >= 1) setState(ui, "processing", "decoding and embedding…");
        else ui.detail.textContent = `${Math.round(fraction * 100)}%`;
      }, tags);
      const meta = body.data;
      ui.progress.value = 1;
      ui.thumb.replaceChildren(
        h("a", { href: meta.file_url, target: "_blank", rel: "noopener",
                 title: `Open ${meta.file_name}` },
          h("img", { src: meta.thumbnail_url, alt: "", loading: "lazy" })),
      );
      const tagged = meta.tags && meta.tags.length ? ` · tags ${meta.tags.join(", ")}` : "";
      setState(ui, "indexed", `meta_uuid ${meta.meta_uuid}${tagged}`);
      ui.row.dataset.metaUuid = meta.meta_uuid;
      outcome = "indexed";
      onIndexed(meta);
    } catch (err) {
      // 409: the same bytes (or meta_uuid) are already stored; anything else is a rejection.
      outcome = err.status === 409 ? "duplicate" : "rejected";
      const reason = err.status ? `${err.message} (HTTP ${err.status})` : err.message;
      setState(ui, outcome, outcome === "duplicate" ? `already stored: ${err.message}` : reason);
    }
    tally[outcome] += 1;
  }

  function finishBatch() {
    const t = tally;
    tally = null;
    if (t.rejected) {
      showError(`Upload: ${t.rejected} of ${formatCount(t.total, "file was", "files were")} ` +
        "rejected; the list shows why.");
    } else {
      showNotice(`Upload done: ${t.indexed} indexed, ${t.duplicate} already stored.`);
    }
    onBatchDone(t);
  }

  function pump() {
    while (active < CONCURRENCY && queue.length) {
      const { file, ui, tags } = queue.shift();
      active += 1;
      send(file, ui, tags).finally(() => {
        active -= 1;
        if (!active && !queue.length) finishBatch();
        pump();
      });
    }
    updateSummary();
  }

  function addFiles(files) {
    if (!tally) tally = { indexed: 0, duplicate: 0, rejected: 0, total: 0 };
    // The tags typed when the files were added, even if the field changes while they wait.
    const tags = tagsInput.value.trim();
    for (const file of files) {
      const ui = makeRow(file);
      list.append(ui.row);
      queue.push({ file, ui, tags });
      tally.total += 1;
    }
    pump();
  }

  bindDropZone($("upload-drop"), $("upload-files"), addFiles,
    () => showError("Nothing to upload: drop image files."));

  clearButton.addEventListener("click", () => {
    for (const row of list.querySelectorAll(
      '[data-state="indexed"], [data-state="duplicate"], [data-state="rejected"]',
    )) row.remove();
    updateSummary();
  });

  return { addFiles };
}
