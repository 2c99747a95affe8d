// The new-comparison form's dataset choice, marked with whether the lab can use each dataset
// now: the API's own answer (GET /api/datasets, the rules it applies at create), so a dataset
// whose files are missing says so before the launch does, with what to do about it.

import { el, replace } from "./dom.js";

const WORDS = { built_in: "built in", present: "files present", missing: "files missing", unchecked: "files not checked" };

/** What the note under the choice says of `dataset`, `download` ticked or not. */
function note(dataset, download) {
  if (!dataset) return "";
  switch (dataset.availability) {
    case "built_in":
      return "Built in: generated or shipped with the lab, always available.";
    case "present":
      return "Its files are in the lab's data directory.";
    case "missing":
      return download
        ? "Its files are missing: the worker downloads them from the mirror first (download is ticked)."
        : `Not launchable as it is: ${dataset.message}`;
    default: // unchecked
      return `This lab does not check its data directory (KFAC_CHECK_DATA=false): the workers need ${dataset.files.join(", ")} (kfac-lab data fetch ${dataset.name}).`;
  }
}

/**
 * Mark the options of the dataset field at `path` (a `.field` of `form`, a SchemaForm) with
 * their availability and add a note under it that follows the choice and the download box.
 * `datasets` maps names to the API's answers; a name it lacks is left as it is.
 */
export function markDatasets(form, path, datasets) {
  const field = form.fields.get(`${path}.name`);
  const select = field?.querySelector("select");
  if (!select) return;
  for (const option of select.options) {
    const dataset = datasets.get(option.value);
    if (!dataset) continue;
    option.textContent = `${dataset.name} — ${WORDS[dataset.availability]}`;
    option.dataset.availability = dataset.availability;
  }
  const download = form.fields.get(`${path}.download`)?.querySelector("input");
  const text = el("span", { class: "availability", role: "status" });
  const update = () => {
    const dataset = datasets.get(select.value);
    const blocked = dataset?.availability === "missing" && !download?.checked;
    text.classList.toggle("error-text", blocked);
    text.dataset.availability = dataset?.availability ?? "";
    replace(text, note(dataset, download?.checked));
  };
  select.addEventListener("change", update);
  download?.addEventListener("change", update);
  select.after(text);
  update();
}
