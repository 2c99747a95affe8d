// The owner's controls that change the experiment itself: rename it (in place, by its title)
// and delete it (asked first, in the page: a second, explicit button).

import { del, request } from "./api.js";
import { byId, el, replace } from "./dom.js";

/** `page.experiment` is renamed in place; `renamed()` redraws what shows the name. */
export function setupManage(apiPath, act, page, renamed) {
  byId("rename").addEventListener("click", () => {
    const input = el("input", { type: "text", id: "rename-input", value: page.experiment.name, maxlength: "120", "aria-label": "New name" });
    const done = () => {
      byId("rename-box").classList.add("hidden");
      byId("experiment-name").classList.remove("hidden");
    };
    const save = () =>
      act(async () => {
        const fresh = await request("PATCH", apiPath(), { body: { name: input.value } });
        page.experiment.name = fresh.name;
        page.experiment.spec = fresh.spec;
        done();
        renamed();
      });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") save();
      if (event.key === "Escape") done();
    });
    replace(
      byId("rename-box"),
      input,
      el("button", { type: "button", class: "primary", id: "rename-save", on: { click: save } }, "Save"),
      el("button", { type: "button", on: { click: done } }, "Keep the name"),
    );
    byId("experiment-name").classList.add("hidden");
    byId("rename-box").classList.remove("hidden");
    input.focus();
    input.select();
  });
  byId("delete").addEventListener("click", () => byId("delete-box").classList.remove("hidden"));
  byId("delete-keep").addEventListener("click", () => byId("delete-box").classList.add("hidden"));
  byId("delete-confirm").addEventListener("click", () =>
    act(async () => {
      await del(apiPath());
      window.location.assign("/");
    }),
  );
}
