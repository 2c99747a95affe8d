"""What a run will cost before it is queued: its peak memory and its time, by plain arithmetic.

The API refuses a run that would not fit a worker (`KFAC_WORKER_MEMORY_BYTES`) or would train
longer than `KFAC_RUN_TIME_LIMIT_S`, and shows the estimate with every run; `kfac-lab run`
refuses the same runs with the same function (`resource_errors`). Like `backend.spec`, this
module imports no torch: everything is computed from the spec's layer shapes (W̄ = [W b] of
shape (d_out, d_in + 1) per Linear or Conv2d layer; see backend.architectures).

A run spans `nodes` workers, each running `processes` data-parallel ranks (worker/distributed.py);
the global mini-batch is dealt out among the `nodes · processes` ranks, so every figure below is
that of the busiest worker, node 0, whose rank 0 alone evaluates, snapshots and checkpoints.

Memory (bytes), the sum of what lives at the peak of a step — a model for the order of
magnitude, checked against measured peaks within 2× (tests/worker/test_estimate_memory.py).
Each of the worker's ranks holds its own copy of the first three items, with the activations
of its share of the batch; rank 0 alone holds the last two:

* the data set, held in memory as float32 (plus a copy in the run's dtype if it is float64);
* parameters, their gradients and the optimizer's state: SGD-momentum's velocity, Adam's two
  moments, and for the K-FAC family each layer's factors Ā = E[āāᵀ] and G = E[ggᵀ] (K-FAC §3)
  with their damped inverses (§4.2, §6.3), the previous update (§7), and for `kfac_tridiag`
  the off-diagonal factors Ā_{i,i+1}, G_{i,i+1}, the conditional covariances Σ_{i|i+1} and the
  generalised eigenbases of their Kronecker-difference inverses (§4.3, Appendix B);
* activations at the largest batch: what each layer keeps for backward (a Linear layer's
  output and activation, a conv stage's maps), the gradients of one layer at a time, and
  K-FAC's captured g and ĝ, with one conv layer's unfolded patches ⟦A⟧ (KFC, Grosse & Martens
  2016 §3.1) of T·|patch| entries per example;
* a checkpoint copy of parameters and optimizer state (written by a background thread);
* the curvature probe of a snapshot (P probe parameters): E per-example gradients of P
  entries and the P×P matrices F, F̃, (F̃+λI)⁻¹, F̌⁻¹, F̂⁻¹ with their temporaries, in float64.

Time: floating-point operations per step of node 0 at the run's mean batch size, divided by
the worker's throughput (`KFAC_WORKER_FLOPS`). A forward pass costs 2·B·T·d_in·d_out per layer
(T spatial positions of a conv layer, 1 for Linear) and backward twice that; K-FAC adds,
amortised, the statistics pass (a second backward, the factor products, §5), the inverses
(~10·n³ per n×n factor every T₃ steps, §8), the products J·Δ, J·δ₀ of the quadratic model for
α, μ (§7; see `_output_directions_flops`) and applying the inverse (G⁻¹ V Ā⁻¹). A worker's ranks
train its 1/nodes of the batch (forward, backward, statistics, quadratic model) and compute its
1/nodes of the inverses (`kfac.distributed.assign_owners`), but each rank applies the inverse to
the whole gradient. Evaluation (a forward pass over the test set every `eval_interval` steps)
and snapshots (per-example gradients and P×P inverses) are rank 0's, amortised over the steps.
The all-reduces and broadcasts between ranks are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backend.architectures import ConvNetSpec, LayerShape
from backend.optimizer_specs import is_kfac
from backend.run_length import batch_size_at
from backend.spec import ExperimentSpec, RunSpec

FACTOR_INVERSION_FLOPS = 10.0  # × n³: a Cholesky, a triangular solve against I, the product
PROBE_MATRICES = 8  # F, F̃, (F̃+λI)⁻¹, F̌⁻¹, F̂⁻¹ and the temporaries of their inverses


@dataclass(frozen=True)
class Estimate:
    memory_bytes: int
    step_seconds: float
    run_seconds: float

    def as_json(self) -> dict[str, float]:
        return {
            "memory_bytes": self.memory_bytes,
            "step_seconds": self.step_seconds,
            "run_seconds": self.run_seconds,
        }


@dataclass(frozen=True)
class _Layer:
    """One K-FAC layer with the spatial positions T it is applied at (1 for Linear)."""

    shape: LayerShape
    positions: int

    @property
    def side_a(self) -> int:  # Ā is (d_in + 1)², the bias as a homogeneous coordinate
        return self.shape.inputs + int(self.shape.bias)

    @property
    def side_g(self) -> int:
        return self.shape.outputs


def estimate(spec: RunSpec, flops_per_second: float) -> Estimate:
    """The run's peak memory and its time per step and in total (see the module doc)."""
    step = step_flops(spec) / flops_per_second
    return Estimate(memory_bytes(spec), step, step * spec.total_steps())


def resource_errors(
    experiment: ExperimentSpec, memory_limit: int, time_limit_s: float, flops_per_second: float
) -> list[tuple[tuple[str | int, ...], str]]:
    """(location, message) of every run that exceeds the worker's memory or the time limit;
    the location is where the run came from in the request (`runs.N`, `base`, `optimizers.N`)."""
    problems = []
    for run, location in zip(experiment.runs, experiment.run_sources(), strict=True):
        cost = estimate(run, flops_per_second)
        name = f"run {run.display_label()!r}"
        if cost.memory_bytes > memory_limit:
            message = (
                f"{name} needs about {_bytes(cost.memory_bytes)} of memory, more than the "
                f"worker's {_bytes(memory_limit)} (KFAC_WORKER_MEMORY_BYTES); use a smaller "
                "batch, model or probe"
            )
            problems.append((location, message))
        if cost.run_seconds > time_limit_s:
            message = (
                f"{name} would train for about {_duration(cost.run_seconds)} "
                f"({cost.step_seconds:.3g} s per step × {run.total_steps():,} steps), more than "
                f"the limit of {_duration(time_limit_s)} (KFAC_RUN_TIME_LIMIT_S)"
            )
            problems.append((location, message))
    return problems


# ---- memory -----------------------------------------------------------------------------------


def memory_bytes(spec: RunSpec) -> int:
    """The run's estimated peak memory in bytes (see the module doc)."""
    item = 8 if spec.dtype == "float64" else 4
    layers = _layers(spec)
    info = spec.dataset.info
    copy = item if spec.dtype == "float64" else 0  # float32 tensors are used as they are
    data = (info.n_train + info.n_test) * info.input_dim * (4 + copy)
    parameters = spec.parameter_count()
    state = _optimizer_state(spec, layers, parameters)
    checkpoint = (parameters + state) if spec.checkpoint_interval else 0
    rank = data + (2 * parameters + state + _activations(spec, layers)) * item
    return spec.processes * rank + checkpoint * item + _probe_bytes(spec)


def _optimizer_state(spec: RunSpec, layers: list[_Layer], parameters: int) -> int:
    """Entries of the optimizer's state (see the module doc)."""
    name = spec.optimizer.name
    if name == "adam":
        return 2 * parameters
    if name == "sgd_momentum":
        return parameters
    if not is_kfac(name):
        return 0
    factors = sum(2 * (layer.side_a**2 + layer.side_g**2) for layer in layers)
    if name == "kfac_tridiag":
        for upper, lower in zip(layers, layers[1:], strict=False):
            cross = upper.side_a * lower.side_a + upper.side_g * lower.side_g
            factors += 2 * cross + 3 * (lower.side_a**2 + lower.side_g**2)
    return factors + parameters  # + the previous update δ₀ of §7


def _activations(spec: RunSpec, layers: list[_Layer]) -> int:
    """Entries one rank holds at the peak of a step at its share of the largest batch: what
    each layer keeps for backward, the gradients of one layer at a time, and K-FAC's captured g
    and ĝ (per-example preconditioning) on the statistics' share of the batch, with one conv
    layer's patches. Rank 0 gets the largest share: example i goes to rank i mod ranks."""
    batch = math.ceil(_largest_batch(spec) / spec.world_size)
    area = spec.model.kernel_size**2 if isinstance(spec.model, ConvNetSpec) else 1
    kept = layers[0].positions * layers[0].shape.inputs // area  # the input of the first layer
    kept += sum(layer.positions * layer.shape.outputs * _maps(layer) for layer in layers)
    kept += 2 * max(layer.positions * (layer.side_a + layer.side_g) for layer in layers)
    if is_kfac(spec.optimizer.name):
        outputs = sum(layer.positions * layer.side_g for layer in layers)
        patches = max(
            (layer.positions * layer.side_a for layer in layers if layer.positions > 1), default=0
        )
        kept += int(spec.optimizer.stats_fraction * (2 * outputs + patches))
    return batch * kept


def _maps(layer: _Layer) -> int:
    """Tensors of a layer's output size kept for backward: a Linear layer's output and its
    activation (which is the next layer's input); a conv stage's output, batch norm, activation
    and pooling."""
    return 2 if layer.positions == 1 else 4


def _probe_bytes(spec: RunSpec) -> int:
    """The snapshot's per-example gradients and P×P matrices, in float64."""
    if spec.snapshot_interval is None:
        return 0
    size = spec.probe.parameter_count(spec.layer_shapes())
    return 8 * (spec.probe.examples * size + PROBE_MATRICES * size * size)


# ---- time -------------------------------------------------------------------------------------


def step_flops(spec: RunSpec) -> float:
    """Floating-point operations of an average step, amortised (see the module doc)."""
    layers = _layers(spec)
    batch = _mean_batch(spec) / spec.nodes  # what the worker's ranks train on together
    forward = sum(2 * layer.positions * layer.shape.parameters for layer in layers)
    total = 3.0 * forward * batch  # forward + backward
    opt = spec.optimizer
    if is_kfac(opt.name):
        stats_batch = opt.stats_fraction * batch
        products = sum(
            2 * layer.positions * (layer.side_a**2 + layer.side_g**2) for layer in layers
        )
        total += (stats_batch * (2 * forward + products)) / opt.stats_interval
        cubes = sum(layer.side_a**3 + layer.side_g**3 for layer in layers)
        if opt.name == "kfac_tridiag":
            cubes *= 3  # conditional covariances and generalised eigenproblems (Appendix B)
        total += FACTOR_INVERSION_FLOPS * cubes / opt.inverse_interval / spec.nodes
        total += spec.processes * sum(
            2 * layer.shape.parameters * (layer.side_a + layer.side_g) for layer in layers
        )  # G⁻¹ V Ā⁻¹ on every rank
        if opt.lr is None:  # α, μ from the exact quadratic model (§7)
            total += opt.quadratic_fraction * batch * _output_directions_flops(spec, layers)
    if spec.eval_interval:
        total += forward * spec.dataset.info.n_test / spec.eval_interval
    if spec.snapshot_interval:
        size = spec.probe.parameter_count(spec.layer_shapes())
        examples = spec.probe.examples
        snapshot = examples * 3.0 * forward + 2.0 * examples * size**2
        snapshot += PROBE_MATRICES * FACTOR_INVERSION_FLOPS * size**3
        total += snapshot / spec.snapshot_interval
    return total


def _output_directions_flops(spec: RunSpec, layers: list[_Layer]) -> float:
    """Per example, J·Δ and J·δ₀ for the quadratic model (§7). Each direction v's tangent costs
    one product per layer for V ā and one for W ȧ, but the first layer's ȧ is 0
    (`kfac.linearisation`). A chain of K-FAC layers (`ModelSpec.is_chain`) reads ā off the
    training pass, so that is all; any other model recomputes it in a dual forward pass, one
    more product per layer and direction."""
    products = [2 * layer.positions * layer.shape.parameters for layer in layers]
    tangent = 2 * sum(products) - products[0]
    primal = 0 if spec.model.is_chain() else sum(products)
    return 2 * (tangent + primal)


# ---- shapes -----------------------------------------------------------------------------------


def _layers(spec: RunSpec) -> list[_Layer]:
    """The K-FAC layers with their spatial positions: a conv stage keeps its input's size (the
    padding is k//2) and is pooled after, so its T is the previous stage's pooled size."""
    shapes = spec.layer_shapes()
    model, image = spec.model, spec.dataset.info.image_shape
    if not isinstance(model, ConvNetSpec) or image is None:
        return [_Layer(shape, 1) for shape in shapes]
    sizes = [image[1] * image[2]] + [h * w for _, _, h, w in model.stages(image)]
    stages = len(model.stages(image))
    return [_Layer(shape, sizes[i] if i < stages else 1) for i, shape in enumerate(shapes)]


def _largest_batch(spec: RunSpec) -> int:
    """A growing batch (§13) is largest at the last step."""
    return batch_size_at(spec.batch_size, spec.total_steps(), spec.dataset.info.n_train)


def _mean_batch(spec: RunSpec) -> float:
    """The mean batch size over the run. A growing batch (§13) m_k = m₁·e^((k−1)/b) sums to
    m₁·(e^(K/b) − 1)/(e^(1/b) − 1) over its first K steps, then stays at its cap."""
    batch, n_train, total = spec.batch_size, spec.dataset.info.n_train, spec.total_steps()
    if isinstance(batch, int):
        return float(batch_size_at(batch, 1, n_train))
    cap = batch_size_at(batch, total, n_train)
    growing = min(total, max(0, math.ceil(1 + batch.growth * math.log(cap / batch.initial))))
    ratio = math.expm1(1 / batch.growth)
    summed = batch.initial * math.expm1(growing / batch.growth) / ratio
    return (min(summed, cap * growing) + cap * (total - growing)) / total


def _bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"
