// Duplicates: groups of copies and near-duplicates side by side, the copy worth keeping first,
// a threshold slider, and "keep this one, delete the others" behind a confirmation dialog.
import { api } from "./api.js";
import { formatBytes, formatCount, h, imageCard, nameLines } from "./dom.js";
import { describeError, showError, showNotice } from "./notify.js";

const $ = (id) => document.getElementById(id);
const PAGE = 10; // groups per page

const MATCH_LABEL = {
  best: "Best copy",
  same_bytes: "Same file",
  same_pixels: "Same pixels",
  near: "Near copy",
};

function formatDate(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

const formatDistance = (d) => (d === null || d === undefined ? "d ?" : `d ${Number(d).toFixed(4)}`);

export function initDuplicates({ onDeleted }) {
  const panel = $("panel-duplicates");
  const list = $("dup-groups");
  const status = $("dup-status");
  const slider = $("dup-threshold");
  const sliderValue = $("dup-threshold-value");
  const prev = $("dup-prev");
  const next = $("dup-next");
  const pageLabel = $("dup-page-label");
  const dialog = $("dup-dialog");

  let offset = 0;
  let total = 0;
  let threshold = null; // null until the server said its default, or the person moved the slider
  let loadSeq = 0; // only the newest load may render
  let loads = 0; // loads finished (rendered or failed), shown on the list for scripts
  let pending = null; // {keep, others} while the dialog is open

  function finish() {
    loads += 1;
    list.dataset.loads = String(loads);
    panel.removeAttribute("aria-busy");
  }

  function showThreshold(value) {
    sliderValue.textContent = Number(value).toFixed(2);
  }

  function memberCard(member, group) {
    const facts = [
      member.width && member.height ? `${member.width}×${member.height}` : "",
      formatBytes(member.size_bytes),
    ].filter(Boolean).join(" · ");
    const keep = h("button", {
      type: "button",
      class: member.keep ? "button-small keep button-primary" : "button-small keep",
      title: "Keep this image and delete the others of this group",
      onclick: () => confirmKeep(member, group),
    }, "Keep this one");
    return imageCard(member, {
      badge: h("span", { class: `dup-badge dup-${member.match}` }, MATCH_LABEL[member.match] || member.match),
      details: [
        h("div", { class: "distance", title: "Squared L2 distance to the best copy, 0 = identical" },
          formatDistance(member.distance)),
        ...nameLines(member),
        h("div", { class: "facts" }, facts),
        h("div", { class: "facts" }, formatDate(member.created_at)),
      ],
      actions: [keep],
    });
  }

  function groupBlock(group, index) {
    const title = `Group ${offset + index + 1} · ${formatCount(group.size, "image", "images")}`;
    const spread = group.max_distance === null ? "" : ` · up to ${formatDistance(group.max_distance)}`;
    return h(
      "section",
      { class: "dup-group", dataset: { best: group.best, size: String(group.size) } },
      h("h3", { class: "dup-group-title" }, title, h("span", { class: "facts" }, spread)),
      h("div", { class: "dup-members" }, ...group.members.map((m) => memberCard(m, group))),
    );
  }

  async function load() {
    const seq = ++loadSeq;
    panel.setAttribute("aria-busy", "true");
    status.textContent = "Looking for duplicates…";
    try {
      const body = await api.duplicates(threshold, offset, PAGE);
      if (seq !== loadSeq) return undefined;
      total = body.total;
      // The page we were on may have emptied (copies deleted): show the last one instead.
      if (!body.data.length && total > 0 && offset > 0) {
        offset = Math.floor((total - 1) / PAGE) * PAGE;
        return load();
      }
      slider.max = String(body.max_threshold);
      if (threshold === null) {
        threshold = body.threshold;
        slider.value = String(threshold);
      }
      showThreshold(threshold);
      list.replaceChildren(...body.data.map(groupBlock));
      const pages = Math.max(1, Math.ceil(total / PAGE));
      pageLabel.textContent = `Page ${Math.floor(offset / PAGE) + 1} of ${pages}`;
      prev.disabled = offset === 0;
      next.disabled = offset + PAGE >= total;
      status.textContent = total
        ? `${formatCount(total, "group", "groups")} among ${formatCount(body.images, "image", "images")}, largest first.`
        : `No duplicates within distance ${Number(threshold).toFixed(2)} among ${formatCount(body.images, "image", "images")}.`;
    } catch (err) {
      if (seq !== loadSeq) return undefined;
      list.replaceChildren();
      status.textContent = "Duplicates could not be loaded.";
      showError(describeError("Looking for duplicates", err));
    }
    finish();
    return undefined;
  }

  function confirmKeep(keep, group) {
    const others = group.members.filter((m) => m.meta_uuid !== keep.meta_uuid);
    pending = { keep, others };
    $("dup-dialog-keep").textContent = keep.file_name || keep.meta_uuid;
    $("dup-dialog-list").replaceChildren(...others.map((m) => h("li", {},
      h("span", { class: "file-name" }, m.file_name || "(no name)"), " ",
      h("span", { class: "meta-uuid" }, m.meta_uuid))));
    $("dup-confirm").textContent = `Delete ${formatCount(others.length, "image", "images")}`;
    dialog.showModal();
  }

  async function deleteOthers({ keep, others }) {
    panel.setAttribute("aria-busy", "true");
    status.textContent = `Deleting ${formatCount(others.length, "image", "images")}…`;
    let deleted = 0;
    for (const m of others) {
      try {
        await api.remove(m.meta_uuid);
        deleted += 1;
      } catch (err) {
        // Already gone (another tab, another person): what was asked for is done.
        if (err.status === 404) continue;
        showError(describeError(`Deleting ${m.file_name || m.meta_uuid}`, err));
        // No key, or one without write scope: the others would fail the same way.
        if (err.status === 401 || err.status === 403) break;
      }
    }
    if (deleted) {
      showNotice(`Kept ${keep.file_name || keep.meta_uuid}; deleted ${formatCount(deleted, "image", "images")}.`);
      onDeleted();
    }
    await load();
  }

  dialog.addEventListener("close", () => {
    const chosen = pending;
    pending = null;
    if (chosen && dialog.returnValue === "delete") deleteOthers(chosen);
  });

  slider.addEventListener("input", () => showThreshold(slider.value));
  // Released (or moved by keyboard): the groups for the new threshold, from the first page.
  slider.addEventListener("change", () => {
    threshold = Number(slider.value);
    offset = 0;
    load();
  });
  prev.addEventListener("click", () => {
    offset = Math.max(0, offset - PAGE);
    load();
  });
  next.addEventListener("click", () => {
    offset += PAGE;
    load();
  });
  $("dup-refresh").addEventListener("click", load);

  // Opening the tab always reloads: uploads and deletes anywhere change the groups, and the
  // server keeps the neighbours between requests, so a reload costs no search.
  return { show: load };
}
