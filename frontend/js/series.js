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
 * Mean and spread of several curves `{x, y}` (x increasing), aligned the way the API's
 * aggregates are: on the union of their x values, each curve interpolated linearly inside its
 * own x range and left out outside it. Returns `{x, mean, sd, lower, upper, n}`: `lower` and
 * `upper` the lowest and highest curve (a band that stays positive on a log axis), `sd` the
 * sample standard deviation √(Σ(y − ȳ)² / (n − 1)) (0 where n = 1), and `n` how many curves
 * contributed at each x. With `maxPoints`, a longer union is thinned to that many evenly spaced
 * of its x values, its ends kept (seeds downsampled at different steps would otherwise give a
 * mean of up to seeds × their points, and Plotly's redraw costs per point).
 */
export function meanBand(curves, maxPoints = Infinity) {
  const grid = thin(unionSorted(curves.map((c) => c.x)), maxPoints);
  const sum = new Float64Array(grid.length);
  const squares = new Float64Array(grid.length);
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
      squares[i] += value * value;
      n[i] += 1;
      if (value < lower[i]) lower[i] = value;
      if (value > upper[i]) upper[i] = value;
    }
  }
  const mean = Array.from(sum, (total, i) => total / n[i]);
  // Σ(y − ȳ)² = Σy² − n·ȳ²; clamped at 0 against rounding.
  const sd = mean.map((m, i) => (n[i] > 1 ? Math.sqrt(Math.max(0, squares[i] - n[i] * m * m) / (n[i] - 1)) : 0));
  return { x: grid, mean, sd, lower, upper, n };
}

/**
 * The parts of a group's mean to draw, given `meanBand`'s answer for `seeds` runs:
 * `full` — the indices where every seed contributed (a contiguous range: each run covers an
 * interval of x), the only ones a mean and a band are drawn over; and `partial` — the mean
 * where fewer seeds contributed, with the neighbouring full point so the line joins, and null
 * in between (a gap), so the page can draw it apart and say how many seeds it stands for.
 */
export function coverage(band, seeds) {
  const full = [];
  band.n.forEach((count, i) => {
    if (count === seeds) full.push(i);
  });
  const first = full.length ? full[0] : Infinity;
  const last = full.length ? full.at(-1) : -Infinity;
  const partial = band.mean.map((value, i) => {
    const outside = i < first || i > last;
    const joins = (i === first && i > 0) || (i === last && i < band.n.length - 1);
    return outside || joins ? value : null;
  });
  return { full: full.length ? [first, last + 1] : [0, 0], partial };
}

function thin(values, count) {
  if (values.length <= count) return values;
  const step = (values.length - 1) / (count - 1);
  return Array.from({ length: count }, (_, i) => values[Math.round(i * step)]);
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
