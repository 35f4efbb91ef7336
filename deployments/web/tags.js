// Tag filters: the selects that restrict the gallery and searches to one tag, filled from
// GET /tags (most used first, with counts). Tags reach the page as option text, never HTML.
import { api } from "./api.js";
import { describeError, showError } from "./notify.js";

const ALL = "";

/** Make `tag` the select's choice, adding its option when the list does not have it yet. */
export function chooseTag(select, tag) {
  if (tag !== ALL && ![...select.options].some((o) => o.value === tag)) {
    select.append(new Option(tag, tag));
  }
  select.value = tag;
}

function fill(select, tags) {
  const chosen = select.value;
  select.replaceChildren(
    new Option("All images", ALL),
    ...tags.map(({ tag, count }) => new Option(`${tag} (${count.toLocaleString()})`, tag)),
  );
  // A chosen tag whose last image was just deleted stays chosen until the person changes it.
  chooseTag(select, chosen);
}

export function initTagFilters(selects) {
  let seq = 0; // only the newest answer fills the selects

  async function refresh() {
    const mine = ++seq;
    try {
      const body = await api.tags();
      if (mine !== seq) return;
      for (const select of selects) fill(select, body.data || []);
    } catch (err) {
      if (mine === seq) showError(describeError("Loading the tags", err));
    }
  }

  return { refresh };
}
