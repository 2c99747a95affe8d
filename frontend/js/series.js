// The arithmetic of curves: EMA smoothing and the mean ± band of runs that differ only in seed.
// Plain functions over arrays, so the charts can recompute a curve from its runs at any time.

/**
 * Exponential moving average with debiasing (as TensorBoard does): with weight w in [0, 1),
 * s_k = w·s_{k−1} + (1 − w)·y_k, divided by 1 − w^k so the first points are not pulled to 0.
 * Always returns a new array.
 */
export function smooth(ys, weight) {
  if (!weight) return ys.slice();
  const out = new Array(ys.length);
  let last = 0;
  let debias = 1;
  for (let i = 0; i < ys.length; i++) {
    last = weight * last + (1 - weight) * ys[i];
    debias *= weight;
    out[i] = last / (1 - debias);
  }
  return out;
}

/**
 * Mean and band of several curves `{x, y}` (x increasing), aligned the way the API's
 * aggregates are: on the union of their x values, each curve interpolated linearly inside its
 * own x range and left out outside it. Returns `{x, mean, lower, upper, n}` with the band from
 * the lowest to the highest curve (it stays positive on a log axis, unlike mean ± sd), and `n`
 * how many curves contributed at each x.
 */
export function meanBand(curves) {
  const grid = unionSorted(curves.map((c) => c.x));
  const sum = new Float64Array(grid.length);
  const lower = new Array(grid.length).fill(Infinity);
  const upper = new Array(grid.length).fill(-Infinity);
  const n = new Array(grid.length).fill(0);
  for (const { x, y } of curves) {
    if (!x.length) continue;
    let j = 0;
    for (let i = 0; i < grid.length; i++) {
      const g = grid[i];
      if (g < x[0] || g > x[x.length - 1]) continue;
      while (j + 1 < x.length && x[j + 1] <= g) j++;
      const value = x[j] === g ? y[j] : y[j] + ((y[j + 1] - y[j]) * (g - x[j])) / (x[j + 1] - x[j]);
      sum[i] += value;
      n[i] += 1;
      if (value < lower[i]) lower[i] = value;
      if (value > upper[i]) upper[i] = value;
    }
  }
  const mean = Array.from(sum, (total, i) => total / n[i]);
  return { x: grid, mean, lower, upper, n };
}

function unionSorted(arrays) {
  const all = new Set();
  for (const array of arrays) for (const value of array) all.add(value);
  return Array.from(Float64Array.from(all).sort());
}

/** Linear interpolation of `y` over increasing `x` at `at`, clamped to the ends. */
export function interpolate(x, y, at) {
  if (!x.length) return NaN;
  if (at <= x[0]) return y[0];
  if (at >= x[x.length - 1]) return y[y.length - 1];
  let lo = 0;
  let hi = x.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (x[mid] <= at) lo = mid;
    else hi = mid;
  }
  return y[lo] + ((y[hi] - y[lo]) * (at - x[lo])) / (x[hi] - x[lo]);
}
