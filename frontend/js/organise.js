// Organising an experiment on its page: its notes (Markdown, drawn by markdown.js; the owner
// edits them, a share link reads them), its tags (the owner adds and removes them) and
// archiving (an archived experiment leaves the list unless the list is asked for it). Every
// change is one `PATCH /api/experiments/ID` with the field it changes.

import { ApiError, request } from "./api.js";
import { byId, el, replace } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

const MAX_NOTES = 20000;
// What a tag may be is the API's rule (backend/api/page_schemas.py: Tag); the page lower-cases
// what is typed, joins words with "-", and says what a tag is when the API refuses one.
const TAG_HINT = "A tag is a letter, then up to 31 letters, digits and . _ : + / -";

/** Draw what `experiment` holds: notes, tags, archive state. `owner`: the controls too. */
export function renderOrganised(experiment, owner) {
  const notes = experiment.notes ?? "";
  replace(byId("notes"), notes.trim() ? renderMarkdown(notes) : el("p", { class: "muted" }, owner ? "No notes yet: “Edit notes” to write some (Markdown)." : "No notes."));
  const chips = (experiment.tags ?? []).map((tag) =>
    el(
      "span",
      { class: "tag", dataset: { tag } },
      tag,
      owner ? el("button", { type: "button", class: "tag-remove", "aria-label": `remove tag ${tag}`, title: "Remove", dataset: { tag } }, "×") : null,
    ),
  );
  replace(byId("experiment-tags"), ...chips);
  byId("archived-badge").classList.toggle("hidden", !experiment.archived_at);
  const archive = document.getElementById("archive");
  if (archive) archive.textContent = experiment.archived_at ? "Unarchive" : "Archive";
}

/** Wire the owner's controls; `page.experiment` is updated from each answer. */
export function setupOrganise(apiPath, act, page) {
  const apply = async (body) => {
    const fresh = await request("PATCH", apiPath(), { body });
    Object.assign(page.experiment, { notes: fresh.notes, tags: fresh.tags, archived_at: fresh.archived_at });
    renderOrganised(page.experiment, true);
  };
  const change = (body) => act(() => apply(body));

  const input = byId("notes-input");
  const count = () => (byId("notes-count").textContent = `${input.value.length.toLocaleString("en-US")} / ${MAX_NOTES.toLocaleString("en-US")} characters`);
  const editing = (on) => {
    byId("notes-editor").classList.toggle("hidden", !on);
    byId("notes").classList.toggle("hidden", on);
    byId("edit-notes").classList.toggle("hidden", on);
  };
  byId("edit-notes").addEventListener("click", () => {
    input.value = page.experiment.notes ?? "";
    count();
    editing(true);
    input.focus();
  });
  input.addEventListener("input", count);
  byId("notes-cancel").addEventListener("click", () => editing(false));
  byId("notes-save").addEventListener("click", () =>
    act(async () => {
      await apply({ notes: input.value });
      editing(false); // kept open when refused, with the text the owner typed
    }),
  );

  const tagInput = byId("tag-input");
  const addTag = async () => {
    const tag = tagInput.value.trim().toLowerCase().replaceAll(/\s+/g, "-");
    const tags = page.experiment.tags ?? [];
    if (!tag || tags.includes(tag)) return;
    try {
      await apply({ tags: [...tags, tag] });
      byId("tag-error").textContent = "";
      tagInput.value = "";
    } catch (error) {
      const refused = error instanceof ApiError && error.status === 422;
      byId("tag-error").textContent = refused ? `${TAG_HINT} (not “${tag}”).` : String(error.message ?? error);
    }
  };
  byId("tag-add").addEventListener("click", addTag);
  tagInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") addTag();
  });
  byId("experiment-tags").addEventListener("click", (event) => {
    const remove = event.target.closest(".tag-remove");
    if (remove) change({ tags: page.experiment.tags.filter((tag) => tag !== remove.dataset.tag) });
  });
  byId("archive").addEventListener("click", () => change({ archived: !page.experiment.archived_at }));
}
