// The page's entry point: tabs, paste, the image count, and a net under unexpected errors.
import { api } from "./api.js";
import { initDuplicates } from "./duplicates.js";
import { initGallery } from "./gallery.js";
import { initKeys } from "./keys.js";
import { describeError, showError, showNotice } from "./notify.js";
import { initSearch } from "./search.js";
import { initTagFilters } from "./tags.js";
import { initUpload } from "./upload.js";

const TABS = ["search", "upload", "gallery", "duplicates"];

// Anything that slips past the panels' own handling is still shown, not just logged.
window.addEventListener("error", (event) => showError(`Page error: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => {
  showError(describeError("Page task", event.reason));
});

// A file dropped outside a drop zone would make the browser navigate away to it.
for (const type of ["dragover", "drop"]) {
  window.addEventListener(type, (event) => {
    if (!event.target.closest || !event.target.closest(".dropzone")) event.preventDefault();
  });
}

const tagFilters = initTagFilters(["gallery-tag", "search-tag"].map((id) => document.getElementById(id)));

/** The image count in the top bar, and the tag filters' tags and counts: both change together. */
async function refreshCount() {
  const pill = document.getElementById("image-count");
  try {
    const body = await api.count();
    const n = body.image_count;
    pill.textContent = `${n.toLocaleString()} ${n === 1 ? "image" : "images"}`;
    pill.classList.remove("count-error");
    search.setRegions(body.regions === true);
    // After the count: a key the count asked for is then known, so this never asks again.
    await tagFilters.refresh();
  } catch (err) {
    pill.textContent = "offline";
    pill.classList.add("count-error");
    showError(describeError("Reaching the service", err));
  }
}

function showTab(name) {
  for (const tab of TABS) {
    const selected = tab === name;
    document.getElementById(`tab-${tab}`).setAttribute("aria-selected", String(selected));
    document.getElementById(`panel-${tab}`).hidden = !selected;
  }
  // Keep the tab in the address so a reload or a shared link opens the same one.
  history.replaceState(null, "", `${location.pathname}${location.search}#${name}`);
  if (name === "gallery") gallery.show();
  if (name === "duplicates") duplicates.show();
}

const activeTab = () => TABS.find((t) => !document.getElementById(`panel-${t}`).hidden);

const search = initSearch();
const gallery = initGallery({
  onSimilar: (meta) => {
    showTab("search");
    search.searchStored(meta);
  },
  onCountChanged: refreshCount,
});
const upload = initUpload({
  onIndexed: () => gallery.markStale(),
  onBatchDone: refreshCount,
});
const duplicates = initDuplicates({
  onDeleted: () => {
    gallery.markStale();
    refreshCount();
  },
});

for (const tab of TABS) {
  document.getElementById(`tab-${tab}`).addEventListener("click", () => showTab(tab));
}

// Paste an image anywhere: the Upload tab indexes it, every other tab searches with it.
document.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData ? event.clipboardData.files : [])];
  if (!files.length) return; // plain text: leave it to the field being typed in
  event.preventDefault();
  if (activeTab() === "upload") {
    upload.addFiles(files);
  } else {
    showTab("search");
    search.searchFile(files[0]);
  }
});

// The address names the tab (#upload): on load, and when a link or Back changes it.
const tabFromHash = () => (TABS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "search");
window.addEventListener("hashchange", () => showTab(tabFromHash()));
showTab(tabFromHash());
initKeys(() => showNotice("Key forgotten: the next call that needs one will ask."));
refreshCount();
// Tests and scripts wait for this before driving the page.
document.documentElement.dataset.ready = "true";
