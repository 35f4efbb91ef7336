// Small DOM helpers shared by the panels.

/**
 * Build an element: h("a", {href, class: "x", onclick: fn}, child, "text", ...).
 * Strings become text nodes, never HTML, so file names from uploads cannot inject markup.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export const formatCount = (n, one, many) => `${n.toLocaleString()} ${n === 1 ? one : many}`;

/**
 * Wire a drop zone (a <label> for a file input) so that dropping files and picking them both
 * call onFiles(File[]). The input is reset afterwards so that picking the same file again works.
 */
export function bindDropZone(zone, input, onFiles, onNoFiles) {
  // dragenter/dragleave also fire for the zone's children: count them so the highlight holds.
  let depth = 0;
  const clear = () => {
    depth = 0;
    zone.classList.remove("dragging");
  };
  zone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
  });
  zone.addEventListener("dragleave", () => {
    depth -= 1;
    if (depth <= 0) clear();
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    clear();
    const files = [...(event.dataTransfer ? event.dataTransfer.files : [])];
    if (files.length) onFiles(files);
    else onNoFiles();
  });
  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = "";
    if (files.length) onFiles(files);
  });
}

/**
 * A grid card for one stored image: its thumbnail (never the original: grids can hold
 * hundreds) linking to the original, then the caller's details and actions.
 */
export function imageCard(meta, { badge, details = [], actions = [] }) {
  const name = meta.file_name || meta.meta_uuid;
  const img = h("img", {
    src: meta.thumbnail_url,
    alt: name,
    loading: "lazy",
    decoding: "async",
  });
  const thumb = h(
    "a",
    {
      class: "thumb",
      href: meta.file_url,
      target: "_blank",
      rel: "noopener",
      title: `Open ${name}`,
    },
    img,
    badge,
  );
  // A missing thumbnail is shown as such rather than as a broken-image icon.
  img.addEventListener("error", () => {
    thumb.classList.add("thumb-missing");
    thumb.append(h("span", { class: "thumb-missing-text" }, "thumbnail unavailable"));
  });
  return h(
    "article",
    { class: "card", dataset: { metaUuid: meta.meta_uuid, fileName: meta.file_name || "" } },
    thumb,
    h("div", { class: "card-body" }, ...details),
    actions.length ? h("div", { class: "card-actions" }, ...actions) : null,
  );
}

/**
 * An image's tags as chips (text nodes: tags come from uploads). With onPick, each chip is a
 * button that picks its tag (the gallery filters by it); nothing at all for an untagged image.
 */
export function tagChips(meta, onPick) {
  const tags = meta.tags || [];
  if (!tags.length) return null;
  return h("ul", { class: "tag-chips", "aria-label": "Tags" }, ...tags.map((tag) => h(
    "li",
    {},
    onPick
      ? h("button", { type: "button", class: "tag-chip", title: `Show images tagged ${tag}`,
                      onclick: () => onPick(tag) }, tag)
      : h("span", { class: "tag-chip" }, tag),
  )));
}

/** File name and meta_uuid lines, shared by search results and the gallery. */
export function nameLines(meta) {
  return [
    h("div", { class: "file-name", title: meta.file_name }, meta.file_name || "(no name)"),
    h("div", { class: "meta-uuid", title: `meta_uuid ${meta.meta_uuid}` }, meta.meta_uuid),
  ];
}
