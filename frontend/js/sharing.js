// Sharing an experiment: a read-only link (create, copy, revoke all), and the page as a share
// link shows it (the controls that write removed: the API would refuse them anyway).

import { del, post } from "./api.js";
import { byId, toast } from "./dom.js";

/** The share controls; `act(action)` runs an action and reports its error. */
export function setupSharing(apiPath, act) {
  byId("share").addEventListener("click", () =>
    act(async () => {
      const link = await post(apiPath("/share"));
      byId("share-url").value = link.url;
      byId("share-box").classList.remove("hidden");
      await copyShareLink();
    }),
  );
  byId("copy-share").addEventListener("click", copyShareLink);
  byId("revoke-share").addEventListener("click", () =>
    act(async () => {
      const { revoked } = await del(apiPath("/share"));
      byId("share-box").classList.add("hidden");
      toast(`${revoked} link${revoked === 1 ? "" : "s"} revoked: they no longer open this page.`);
    }),
  );
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
