// Experiments side by side (/compare?ids=A,B,...): their groups overlaid in one comparison
// table and one set of curves, each label naming its experiment (the endpoint
// GET /api/comparison?ids= decides groups, labels and colours). It needs the owner's access: a
// share link reads one experiment and nothing else, so the API refuses it here, and the page
// says so.

import { get } from "./api.js";
import { ComparisonPanel } from "./comparison.js";
import { CurvesPanel } from "./curvespanel.js";
import { byId, el, replace, startPage } from "./dom.js";

const ids = (new URLSearchParams(window.location.search).get("ids") ?? "").split(",").filter(Boolean);

/** Every experiment's curves in one answer of the experiment metrics' shape. */
async function loadCurves(params) {
  const answers = await Promise.all(ids.map((id) => get(`/api/experiments/${encodeURIComponent(id)}/metrics`, params)));
  return { runs: answers.flatMap((answer) => answer.runs) };
}

const curves = new CurvesPanel({ panel: byId("curves-panel"), groups: [], load: loadCurves });
const comparison = new ComparisonPanel({
  container: byId("comparison-panel"),
  load: (params) => get("/api/comparison", { ...params, ids: ids.join(",") }),
  onGroups: (groups) => curves.setGroups(groups),
});

function showExperiments(experiments) {
  const links = experiments.map(({ id, name }) => el("a", { href: `/experiments/${encodeURIComponent(id)}` }, name));
  replace(byId("compare-experiments"), ...links.flatMap((link, i) => (i ? [" · ", link] : [link])));
  document.title = `${experiments.map(({ name }) => name).join(" vs ")} · kfac-lab`;
}

async function main() {
  if (ids.length < 2) {
    byId("compare-experiments").textContent = "Pick two or more experiments in the list to see them side by side.";
    return;
  }
  curves.setupControls();
  const data = curves.fetch();
  data.catch(() => {});
  const answer = comparison.load(comparison.params());
  try {
    await comparison.refresh(answer); // first: a share link is refused here, with the reason
    showExperiments(await Promise.all(ids.map((id) => get(`/api/experiments/${encodeURIComponent(id)}`))));
  } catch (error) {
    byId("compare-title").textContent = "Cannot compare these experiments";
    byId("compare-experiments").textContent = error.message;
    comparison.showError(error);
    return;
  }
  await curves.loadAll(data);
  performance.mark("kfac:curves-drawn");
}

startPage(main);
