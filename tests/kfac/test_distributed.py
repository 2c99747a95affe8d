"""Data-parallel K-FAC (kfac.distributed): N gloo ranks at batch B/N follow one process at B.

Each world size is one `torch.multiprocessing` spawn whose ranks run every configuration in
turn (starting Python and torch dominates the cost), rendezvous through a FileStore in
tmp_path, and write their trajectories for the tests to compare with the single-process
reference computed here.  B = 20 makes unequal shards for 3 ranks (7, 7, 6), so a mean of the
ranks' means would fail the comparison.
"""

from __future__ import annotations

import copy
import datetime
import math
import statistics
import threading

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from backend.optimizer_specs import KFACSpec, KFACTridiagSpec, KFCPreSpec
from kfac import KFAC
from kfac.distributed import (
    Communicator,
    Job,
    ProcessGroupCommunicator,
    assign_owners,
    backend_for,
    side_by_side,
)

BATCH, STEPS, RESUME_AT = 20, 50, 25
pytestmark = pytest.mark.slow  # spawns worlds of 2 and 3 processes

TOLERANCE = 1e-6
# Intervals short enough that 50 steps hold many statistics, inverse and λ updates.
SHORT = dict(stats_interval=2, inverse_interval=5, damping_interval=5)
CONFIGS = {
    "kfac_block_diagonal": ("mlp", {**KFACSpec(**SHORT).kfac_kwargs(), "damping": 1.0}),
    "kfac_block_tridiagonal": (
        "mlp",
        {
            **KFACTridiagSpec(**SHORT, gamma_search=True, gamma_interval=10).kfac_kwargs(),
            "damping": 1.0,
        },
    ),
    "kfc_pre": ("conv", {**KFCPreSpec(**SHORT).kfac_kwargs(), "lr": 0.1}),
}


def make_model(kind: str) -> nn.Module:
    torch.manual_seed(3)
    if kind == "mlp":
        model = nn.Sequential(
            nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 4)
        )
    else:
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 5 * 5, 4)
        )
    return model.double()


def make_batches(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """STEPS global batches of BATCH examples, the same on every rank, labelled by a linear
    teacher."""
    generator = torch.Generator().manual_seed(7)
    shape = (6,) if kind == "mlp" else (2, 5, 5)
    inputs = torch.randn(STEPS, BATCH, *shape, generator=generator, dtype=torch.float64)
    teacher = torch.randn(math.prod(shape), 4, generator=generator, dtype=torch.float64)
    return inputs, (inputs.flatten(2) @ teacher).argmax(-1)  # learnable labels


def train(name: str, communicator: Communicator, start: int = 0, state=None) -> dict:
    """Steps start+1..STEPS of configuration `name`, each rank on its shard of every batch;
    the model and optimizer state after step RESUME_AT, the losses and the final parameters."""
    kind, options = CONFIGS[name]
    model = make_model(kind)
    optimizer = KFAC(model, "cross_entropy", seed=5, communicator=communicator, **options)
    if state is not None:
        # Optimizer.load_state_dict keeps the given tensors, and spawn hands every rank the
        # same shared-memory copy: each rank needs its own.
        state = copy.deepcopy(state)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    inputs, targets = make_batches(kind)
    losses, saved, traffic, variances = [], None, [], []
    for step in range(start, STEPS):
        loss = optimizer.step(communicator.shard(inputs[step]), communicator.shard(targets[step]))
        losses.append(float(loss))
        traffic.append(optimizer.diagnostics)
        variances.append(optimizer.counters["row_variance"])
        if step + 1 == RESUME_AT:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            saved = copy.deepcopy(state)  # the live tensors go on changing
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {
        "losses": losses,
        "parameters": flat,
        "saved": saved,
        "diagnostics": traffic,
        "row_variances": variances,
    }


def _rank(rank: int, world: int, store_path: str, out: str, references: dict) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    try:
        communicator = ProcessGroupCommunicator()
        results = {}
        for name in CONFIGS:
            results[name] = train(name, communicator)
            # Resumed from the single-process checkpoint: a state dict loads on any world size.
            resumed = train(name, communicator, RESUME_AT, references[name])
            results[name]["resumed"] = resumed["parameters"]
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def references() -> dict:
    return {name: train(name, Communicator()) for name in CONFIGS}


@pytest.fixture(scope="module", params=[2, 3])
def ranks(request, references, tmp_path_factory) -> tuple[int, list[dict]]:
    world = request.param
    folder = tmp_path_factory.mktemp(f"world{world}")
    saved = {name: reference["saved"] for name, reference in references.items()}
    out = str(folder / "result")
    mp.start_processes(
        _rank, args=(world, str(folder / "store"), out, saved), nprocs=world, start_method="spawn"
    )
    return world, [torch.load(f"{out}.{r}", weights_only=False) for r in range(world)]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_n_ranks_at_b_over_n_follow_one_process_at_b(ranks, references, name):
    world, results = ranks
    reference = references[name]
    for rank, result in enumerate(results):
        error = relative(result[name]["parameters"], reference["parameters"])
        assert error < TOLERANCE, f"{name}, rank {rank} of {world}: relative error {error:.2e}"
        for step, (ours, theirs) in enumerate(
            zip(result[name]["losses"], reference["losses"], strict=True), 1
        ):
            assert math.isclose(ours, theirs, rel_tol=TOLERANCE), (name, rank, step, ours, theirs)
    # The trajectory goes somewhere: the last ten mini-batch losses against the first (one
    # batch's loss swings by 2× here, e.g. 0.43 → 2.03 at the last step with η = 1e-5).
    assert statistics.fmean(reference["losses"][-10:]) < reference["losses"][0]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dicts_round_trip_between_world_sizes(ranks, references, name):
    world, results = ranks
    reference = references[name]
    for rank, result in enumerate(results):  # one process's checkpoint, resumed on N ranks
        error = relative(result[name]["resumed"], reference["parameters"])
        assert error < TOLERANCE, f"{name}: resumed on rank {rank} of {world}: {error:.2e}"
    # rank 0's checkpoint, resumed in one process
    resumed = train(name, Communicator(), RESUME_AT, results[0][name]["saved"])
    error = relative(resumed["parameters"], reference["parameters"])
    assert error < TOLERANCE, f"{name}: {world}-rank checkpoint resumed alone: {error:.2e}"


def test_the_row_variance_is_the_one_process_s(ranks, references):
    """The adaptive configurations' s² (kfac.model_rows: the drawn rows' moments, spread over
    the ranks and all-reduced with the Fisher) is the single process's at every step; the
    batch of 20 is below the 32-row floor, so the parameters alone would not show it."""
    world, results = ranks
    for name in ("kfac_block_diagonal", "kfac_block_tridiagonal"):
        expected = references[name]["row_variances"]
        assert all(v is not None and v > 0 for v in expected[1:]), name
        for rank, result in enumerate(results):
            for step, (ours, theirs) in enumerate(
                zip(result[name]["row_variances"], expected, strict=True), 1
            ):
                same = ours == theirs or math.isclose(ours, theirs, rel_tol=TOLERANCE)
                assert same, (name, world, rank, step, ours, theirs)


def test_communication_is_reported_per_step(ranks):
    """Bytes all-reduced every step (loss and gradient at least), broadcast on inverse steps;
    one process reports nothing."""
    world, results = ranks
    diagnostics = results[0]["kfac_block_diagonal"]["diagnostics"]
    parameters = results[0]["kfac_block_diagonal"]["parameters"].numel()
    assert all(d["communication_bytes_all_reduced"] >= 8 * parameters for d in diagnostics)
    inverse_steps = [
        d["communication_bytes_broadcast"] for i, d in enumerate(diagnostics) if i % 5 == 0
    ]
    assert all(b > 0 for b in inverse_steps)
    assert diagnostics[1]["communication_bytes_broadcast"] == 0
    alone = train("kfac_block_diagonal", Communicator())["diagnostics"]
    assert not any(name.startswith("communication_") for d in alone for name in d)


def test_block_tridiagonal_pieces_are_divided_and_broadcast(ranks):
    """Every inverse step broadcasts each layer's piece once, from the rank that computed it:
    Σ(i|i+1)⁻¹'s bases K_A, K_G and scale, the couplings Kᵀ Ψ, and the last layer's Ā⁻¹, G⁻¹,
    each with its flag (8 bytes a value in float64)."""
    world, results = ranks
    model = make_model("mlp")
    linears = [m for m in model if isinstance(m, nn.Linear)]
    a = [m.in_features + 1 for m in linears]  # the bias as a homogeneous coordinate
    g = [m.out_features for m in linears]
    # The couplings and the scale keep the r = min(d, d') rows that can be non-zero.
    rank_a = [min(a[i], a[i + 1]) for i in range(len(linears) - 1)]
    rank_g = [min(g[i], g[i + 1]) for i in range(len(linears) - 1)]
    values = sum(
        rank_a[i] * a[i + 1]
        + rank_g[i] * g[i + 1]
        + a[i] ** 2
        + g[i] ** 2
        + rank_g[i] * rank_a[i]
        + 1
        for i in range(len(linears) - 1)
    )
    values += a[-1] ** 2 + 1 + g[-1] ** 2 + 1
    diagnostics = results[0]["kfac_block_tridiagonal"]["diagnostics"]
    # Inverse steps 6, 16, 26 (step 1 also synchronises the parameters; steps 11, 21, 31 try
    # three γ, §6.6, and invert four times).
    for step in (6, 16, 26):
        assert diagnostics[step - 1]["communication_bytes_broadcast"] == 8 * values, step
    assert diagnostics[11 - 1]["communication_bytes_broadcast"] == 4 * 8 * values
    assert diagnostics[7 - 1]["communication_bytes_broadcast"] == 0


def test_the_backend_is_nccl_on_cuda_and_gloo_elsewhere():
    assert backend_for("cuda") == backend_for(torch.device("cuda", 1)) == "nccl"
    assert backend_for("cpu") == backend_for(torch.device("cpu")) == "gloo"
    assert backend_for("meta") == "gloo"


def test_inverses_are_divided_greedily_by_cost():
    """Largest first onto the least loaded rank, ties to the lower rank."""
    jobs = [Job(lambda: None, torch.zeros(d, d)) for d in (3, 8, 5, 6, 4)]
    assert assign_owners(jobs, 2) == [1, 0, 1, 1, 1]
    assert assign_owners(jobs, 3) == [2, 0, 2, 1, 2]
    assert assign_owners(jobs, 1) == [0] * 5


def test_one_process_runs_divisible_jobs_side_by_side_one_blas_thread_each():
    """The 16 factors of a net come back in order, each its job's own result, computed on the
    pool's threads with one BLAS thread each; the caller's thread count is restored.  Work that
    one job dominates, or one thread, stays on the caller's thread with all its threads."""
    caller = threading.current_thread()

    def job(d: int) -> Job:
        def compute() -> torch.Tensor:
            seen[d] = (threading.current_thread() is caller, torch.get_num_threads())
            return torch.full((d, d), float(d))

        return Job(compute, torch.zeros(d, d))

    sizes = [785, 1000, 1001, 500, 501, 250, 251, 30, 31, 250, 251, 500, 501, 1000, 1001, 784]
    before = torch.get_num_threads()
    for threads, sizes_, on_caller in (
        (2, sizes, False),
        (2, [1000, 30, 31], True),  # d³ of 1000 is more than half the work
        (1, sizes, True),
    ):
        seen = {}
        results = side_by_side([job(d) for d in sizes_], threads)
        assert [float(r[0, 0]) for r in results] == [float(d) for d in sizes_]
        assert {c for c, _ in seen.values()} == {on_caller}
        assert {n for _, n in seen.values()} == ({before} if on_caller else {1})
        assert torch.get_num_threads() == (threads if not on_caller else before)
        torch.set_num_threads(before)


def test_shards_deal_examples_round_robin_and_count_the_subsets():
    batch = torch.arange(10)
    communicator = Communicator()
    communicator.rank, communicator.world_size = 2, 3
    assert communicator.shard(batch).tolist() == [2, 5, 8]
    assert communicator.positions(2).tolist() == [2, 5]
    assert [communicator.prefix(used) for used in (1, 2, 3, 6, 10)] == [0, 0, 1, 2, 3]
