// Optimizers as the pages show them: display names, a colour-blind-safe colour per optimizer
// (Okabe & Ito's palette), and the grouping of an experiment's runs into "the same optimizer
// configuration with different seeds" (shown as a mean with a band).

// Okabe–Ito, in the order colours are handed out to optimizers without a fixed one.
const OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442"];

const KNOWN = {
  kfac: { label: "K-FAC", colour: "#0072B2" },
  kfac_tridiag: { label: "K-FAC (tridiagonal)", colour: "#56B4E9" },
  sgd_momentum: { label: "SGD + momentum", colour: "#E69F00" },
  adam: { label: "Adam", colour: "#009E73" },
  sgd: { label: "SGD", colour: "#CC79A7" },
  kfc: { label: "KFC", colour: "#D55E00" },
  kfc_pre: { label: "KFC-pre", colour: "#000000" },
};

const DASHES = ["solid", "dash", "dot", "dashdot", "longdash"];

export function optimizerLabel(name) {
  return KNOWN[name]?.label ?? name;
}

export function optimizerColour(name) {
  if (KNOWN[name]) return KNOWN[name].colour;
  let hash = 0;
  for (const char of String(name)) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return OKABE_ITO[hash % OKABE_ITO.length];
}

/** The optimizer's hyper-parameters, without its name, as "lr=0.01 momentum=0.9". */
export function hyperText(optimizer) {
  return Object.entries(optimizer ?? {})
    .filter(([key, value]) => key !== "name" && value !== null)
    .map(([key, value]) => `${key}=${value}`)
    .join(" ");
}

function configKey(optimizer) {
  const { name, ...rest } = optimizer ?? {};
  const sorted = Object.keys(rest).sort().map((key) => [key, rest[key]]);
  return JSON.stringify([name, sorted]);
}

/**
 * Group runs by optimizer configuration (name and hyper-parameters): the runs of a group differ
 * only in seed. Returns `[{key, name, label, colour, dash, runs}]` in the order of first
 * appearance; groups sharing an optimizer name get the hyper-parameters that tell them apart
 * in their label, and different dash styles.
 */
export function groupRuns(runs) {
  const groups = new Map();
  for (const run of runs) {
    const key = configKey(run.optimizer);
    if (!groups.has(key)) groups.set(key, { key, name: run.optimizer?.name ?? "?", runs: [] });
    groups.get(key).runs.push(run);
  }
  const list = [...groups.values()];
  const byName = Map.groupBy(list, (group) => group.name);
  for (const [name, same] of byName) {
    const differing = differingKeys(same.map((group) => group.runs[0].optimizer));
    same.forEach((group, index) => {
      const parts = differing.map((key) => `${key}=${group.runs[0].optimizer[key]}`);
      group.label = [optimizerLabel(name), ...parts].join(" ");
      group.colour = optimizerColour(name);
      group.dash = DASHES[index % DASHES.length];
    });
  }
  return list;
}

function differingKeys(optimizers) {
  if (optimizers.length < 2) return [];
  const keys = new Set(optimizers.flatMap((o) => Object.keys(o).filter((k) => k !== "name")));
  return [...keys].filter((key) => new Set(optimizers.map((o) => JSON.stringify(o[key]))).size > 1);
}
