// Sharing an experiment: read-only links (make one, copy it; every link listed with when it
// was made and last opened, revoked one by one or all at once), the page as a share link shows
// it (the controls that write removed: the API would refuse them anyway), and the page a share
// link shows when it no longer opens anything.

import { del, get, post } from "./api.js";
import { byId, el, formatTime, replace, timeAgo, toast } from "./dom.js";

/** The share controls; `act(action)` runs an action and reports its error. */
export function setupSharing(apiPath, act) {
  const refresh = async () => {
    const links = await get(apiPath("/share"));
    renderLinks(links, (link) => act(async () => {
      await del(apiPath(`/share/${encodeURIComponent(link.id)}`));
      toast(`Link ${link.id} revoked: it no longer opens this page.`);
      await refresh();
    }));
    return links;
  };
  const mint = async () => {
    const link = await post(apiPath("/share"));
    byId("share-url").value = link.url;
    byId("share-new").classList.remove("hidden");
    await refresh();
    await copyShareLink();
  };
  // Opening the box lists the links; a new one is made only when none is live (a token is
  // shown once, at its making: an older link cannot be shown again, only revoked).
  byId("share").addEventListener("click", () =>
    act(async () => {
      byId("share-box").classList.remove("hidden");
      const links = await refresh();
      if (!links.some((link) => !link.revoked_at)) await mint();
    }),
  );
  byId("new-share").addEventListener("click", () => act(mint));
  byId("copy-share").addEventListener("click", copyShareLink);
  byId("revoke-share").addEventListener("click", () =>
    act(async () => {
      const { revoked } = await del(apiPath("/share"));
      byId("share-box").classList.add("hidden");
      byId("share-new").classList.add("hidden");
      byId("share-url").value = "";
      toast(`${revoked} link${revoked === 1 ? "" : "s"} revoked: they no longer open this page.`);
    }),
  );
}

function renderLinks(links, revoke) {
  const rows = links.map((link) =>
    el(
      "tr",
      { dataset: { id: String(link.id) } },
      el("td", {}, `link ${link.id}`),
      el("td", { title: formatTime(link.created_at) }, timeAgo(link.created_at)),
      el("td", { title: formatTime(link.last_used_at) }, link.last_used_at ? timeAgo(link.last_used_at) : "never opened"),
      el(
        "td",
        {},
        link.revoked_at
          ? el("span", { class: "muted", title: formatTime(link.revoked_at) }, `revoked ${timeAgo(link.revoked_at)}`)
          : el("button", { type: "button", class: "small danger", on: { click: () => revoke(link) } }, "Revoke"),
      ),
    ),
  );
  replace(byId("share-links"), ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "4", class: "muted" }, "No links yet."))]));
}

async function copyShareLink() {
  const input = byId("share-url");
  try {
    await navigator.clipboard.writeText(input.value);
    toast("Read-only link copied to the clipboard.");
  } catch {
    input.select();
    toast("Link created: copy it from the box (Ctrl-C).");
  }
}

export function setupReadOnly() {
  for (const node of document.querySelectorAll(".owner-only")) node.remove();
  byId("readonly-note").classList.remove("hidden");
  byId("mode").textContent = "read-only link";
}
