"""Data-parallel K-FAC over torch.distributed, with KAISA's split of the inverse work
(Pauloski et al. 2021).

The optimizer talks to a `Communicator` at a few points of its iteration; one process uses
the base class, whose collectives are identities (so its arithmetic is exactly the
single-process algorithm), and N ranks use `ProcessGroupCommunicator`:

- the global mini-batch of B examples is dealt out by `shard`, example i to rank i mod N, so
  every rank knows the global position of each of its examples (`positions`);
- batch means (the loss, the gradient, the Kronecker factors' estimates, the quadratic
  model's Fisher products, the loss after the step for ρ) are reduced by `average`: each
  rank contributes its local mean times its example count, one bucketed all-reduce sums them
  with the counts, and the sum is divided by the total.  With unequal shards (B = 10 over 3
  ranks) this is the global mean, not the mean of the ranks' means;
- the optimizer all-reduces the gradient itself (no DistributedDataParallel wrapper): its
  `step` runs the forward and backward passes, and it reduces the loss with the gradient;
- inverses are divided among the ranks by `share` (greedy by cost d³, largest first, onto
  the least loaded rank) and each rank broadcasts what it computed, one bucket per rank, so
  the inverse update costs about 1/N of the single-process one.  The block-tridiagonal
  pieces are divided the same way, one job per layer (`shared_tridiagonal_inverse`);
- the sampled targets of the true Fisher (§5) come from one generator that every rank seeds
  alike: each rank draws the noise of all the examples of the statistics subset and keeps
  its own examples' rows (`kfac.losses.sample_targets`).  Example i's target then depends on
  (seed, statistics step, i) alone, so the union over the ranks is the single-process draw,
  and the ranks' draws are distinct because their examples are.  The cost is B random
  numbers per rank per statistics step, nothing next to a forward pass; the generator state
  stays identical on every rank, so a state dict saved on any rank loads on any world size.

Every rank ends a step with the same parameters, factors, inverses, λ, γ and generator.
Batch norm is not synchronised (each rank normalises by its own shard), so the equivalence
of N ranks at B/N with one process at B holds for nets without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import cache, partial

import torch
import torch.distributed as dist

from kfac.inverses import Notes, spd_inverse
from kfac.tridiagonal import (
    KroneckerDifferenceInverse,
    TridiagonalLayerInverse,
    tridiagonal_inverse,
)


def backend_for(device: torch.device | str) -> str:
    """The torch.distributed backend of ranks on `device`: NCCL on CUDA, gloo otherwise.

    The one rule every launcher asks (worker.distributed); NCCL has no CPU tensors and gloo no
    fast GPU path."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@dataclass
class Job:
    """One piece of divisible work: `compute()` gives a tensor shaped like `like`, or None.

    `weight` is its cost when the job is not one d×d factorisation (see `cost`)."""

    compute: Callable[[], torch.Tensor | None]
    like: torch.Tensor
    weight: float | None = None

    @property
    def cost(self) -> float:
        """An inversion or eigendecomposition of a d×d matrix costs ~d³."""
        return float(self.like.shape[0]) ** 3 if self.weight is None else self.weight


class Communicator:
    """A single process: every collective is the identity and no byte moves."""

    rank = 0
    world_size = 1

    def __init__(self) -> None:
        self.traffic = {"bytes_all_reduced": 0.0, "bytes_broadcast": 0.0, "seconds": 0.0}

    # ------------------------------------------------------------------ the batch

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's examples of the global batch: i ≡ rank (mod N)."""
        return batch[self.rank :: self.world_size]

    def positions(self, count: int, device=None) -> torch.Tensor:
        """The global positions of this rank's first `count` examples."""
        return self.rank + self.world_size * torch.arange(count, device=device)

    def prefix(self, used: int) -> int:
        """How many of this rank's examples lie among the global batch's first `used`."""
        return max(0, math.ceil((used - self.rank) / self.world_size))

    # ------------------------------------------------------------------ collectives

    def average(self, tensors: list[torch.Tensor], count: int) -> tuple[list[torch.Tensor], int]:
        """The global means of per-rank means over `count` examples each, and the total count."""
        return tensors, count

    def share(self, jobs: list[Job]) -> list[torch.Tensor | None]:
        """Every job's result, each computed on one rank and broadcast to all; a rank runs
        its own `side_by_side` on its threads."""
        return side_by_side(jobs, torch.get_num_threads())

    def synchronise(self, tensors: list[torch.Tensor]) -> None:
        """Make `tensors` equal on every rank (rank 0's values), in place."""

    def gather(self, value: float) -> list[float]:
        """Every rank's `value`, by rank (for per-rank timings)."""
        return [value]

    def broadcast_object(self, value: object) -> object:
        """Rank 0's `value` (any picklable object, e.g. a checkpoint's state) on every rank."""
        return value

    def take_traffic(self) -> dict[str, float]:
        """The bytes moved and seconds spent in collectives since the last call."""
        traffic = dict(self.traffic)
        self.traffic = dict.fromkeys(traffic, 0.0)
        return traffic


def side_by_side(jobs: list[Job], threads: int) -> list[torch.Tensor | None]:
    """The jobs' results in order, computed by `threads` threads of one BLAS thread each,
    dearest first, when the work divides (no job above 1/threads of it) and lies on the CPU;
    else one after the other on all the threads.

    LAPACK's Cholesky factorisation and potri on factors of a few hundred to a thousand rows
    barely use a second thread: the autoencoder's 16 inversions took 6.6 ms per step on one
    thread and 6.0 on two (docs/benchmarks.md "16, eighth pass").  torch.set_num_threads(1)
    in a pool thread sets that thread's OpenMP and MKL counts but also torch's process-wide
    one, which the caller's count is restored to afterwards."""
    costs = [job.cost for job in jobs]
    on_cpu = all(job.like.device.type == "cpu" for job in jobs)
    if threads < 2 or not on_cpu or max(costs, default=0.0) * threads > sum(costs):
        return [job.compute() for job in jobs]
    pool = _single_threaded_pool(threads)
    dearest_first = sorted(range(len(jobs)), key=lambda i: -costs[i])
    futures = {i: pool.submit(jobs[i].compute) for i in dearest_first}
    wait(futures.values())
    torch.set_num_threads(threads)
    return [futures[i].result() for i in range(len(jobs))]


@cache
def _single_threaded_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        threads, "kfac-share", initializer=torch.set_num_threads, initargs=(1,)
    )


def assign_owners(jobs: list[Job], world_size: int) -> list[int]:
    """The rank that computes each job: greedy longest-first onto the least loaded rank, ties
    to the lower rank, so every rank derives the same assignment without talking."""
    load = [0.0] * world_size
    owners = [0] * len(jobs)
    for index in sorted(range(len(jobs)), key=lambda i: (-jobs[i].cost, i)):
        owner = min(range(world_size), key=lambda r: (load[r], r))
        owners[index] = owner
        load[owner] += jobs[index].cost
    return owners


class ProcessGroupCommunicator(Communicator):
    """N ranks of a torch.distributed process group (gloo on CPU, NCCL on GPU).

    The group's timeout (set by `init_process_group`) bounds every collective, so a rank that
    dies makes the others raise instead of waiting for ever.
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised; call init_process_group")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def _global(self, rank: int) -> int:
        """A rank of the group as torch.distributed's collectives name it (the global rank)."""
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def _timed(self, key: str, buffer: torch.Tensor, collective: Callable[[], object]) -> None:
        start = time.perf_counter()
        collective()
        self.traffic["seconds"] += time.perf_counter() - start
        self.traffic[key] += float(buffer.numel() * buffer.element_size())

    def average(self, tensors, count):
        weighted = [t.reshape(-1) * count if count else t.new_zeros(t.numel()) for t in tensors]
        bucket = torch.cat([*weighted, tensors[0].new_tensor([float(count)])])
        self._timed("bytes_all_reduced", bucket, lambda: dist.all_reduce(bucket, group=self.group))
        total = bucket[-1]
        pieces = bucket[:-1].div_(total).split([t.numel() for t in tensors])
        return [p.view_as(t) for p, t in zip(pieces, tensors, strict=True)], int(total.item())

    def share(self, jobs):
        owners = assign_owners(jobs, self.world_size)
        results: list[torch.Tensor | None] = [None] * len(jobs)
        for owner in range(self.world_size):
            mine = [i for i, o in enumerate(owners) if o == owner]
            if not mine:
                continue
            # One bucket per owner: a flag (1 = computed, 0 = None) and the values, per job.
            sizes = [1 + jobs[i].like.numel() for i in mine]
            bucket = jobs[mine[0]].like.new_zeros(sum(sizes))
            parts = bucket.split(sizes)
            if owner == self.rank:  # this rank's own jobs, side by side as in one process
                values = side_by_side([jobs[i] for i in mine], torch.get_num_threads())
                for part, value in zip(parts, values, strict=True):
                    if value is not None:
                        part[0] = 1.0
                        part[1:] = value.reshape(-1)
            self._timed(
                "bytes_broadcast",
                bucket,
                lambda b=bucket, o=owner: dist.broadcast(b, self._global(o), self.group),
            )
            for i, part in zip(mine, parts, strict=True):
                if part[0] == 1.0:
                    results[i] = part[1:].view_as(jobs[i].like).clone()
        return results

    def synchronise(self, tensors):
        if not tensors:
            return
        bucket = torch.cat([t.detach().reshape(-1) for t in tensors])
        self._timed(
            "bytes_broadcast", bucket, lambda: dist.broadcast(bucket, self._global(0), self.group)
        )
        for t, part in zip(tensors, bucket.split([t.numel() for t in tensors]), strict=True):
            t.data.copy_(part.view_as(t))

    def gather(self, value):
        values = [None] * self.world_size
        dist.all_gather_object(values, value, group=self.group)
        return values

    def broadcast_object(self, value):
        holder = [value]
        dist.broadcast_object_list(holder, self._global(0), group=self.group)
        return holder[0]


# ----------------------------------------------------------------------------- block-tridiagonal


def shared_tridiagonal_inverse(
    communicator: Communicator,
    input_factors: list[torch.Tensor],
    output_factors: list[torch.Tensor],
    input_cross: list[torch.Tensor],
    output_cross: list[torch.Tensor],
    notes: Notes,
    names: list[str],
) -> list[TridiagonalLayerInverse] | None:
    """`kfac.tridiagonal.tridiagonal_inverse` with its work divided among the ranks (§4.3, App. B).

    Layer i < l's piece (Σ(i|i+1)⁻¹ in its eigenbasis and the couplings Kᵀ Ψ(i,i+1)) depends
    on layers i and i+1 alone, so it is `tridiagonal_inverse` of that two-layer slice, whose
    first piece it is, the same arithmetic as in the whole; the last layer's piece is Ā_l⁻¹ and
    G_l⁻¹.  Each piece is one job (the Cholesky factors of layer i+1 are then computed by the
    owners of both i and i+1: a d³/3 more next to the two eigendecompositions of the piece),
    packed flat for the broadcast.  As in the whole, one failed piece fails them all (None: the
    caller falls back to the block-diagonal inverse).  One process computes the whole at once.
    """
    if communicator.world_size == 1:
        return tridiagonal_inverse(input_factors, output_factors, input_cross, output_cross, notes)
    last = len(input_factors) - 1
    jobs = [
        _pair_job(
            input_factors[i : i + 2],
            output_factors[i : i + 2],
            input_cross[i],
            output_cross[i],
            notes,
            f"{names[i]}–{names[i + 1]}",
        )
        for i in range(last)
    ]
    jobs += [
        Job(partial(spd_inverse, factor, notes, f"{names[last]} {key}"), factor)
        for key, factor in (("A", input_factors[last]), ("G", output_factors[last]))
    ]
    results = communicator.share(jobs)
    if any(result is None for result in results):
        return None
    pieces = []
    for i, flat in enumerate(results[:last]):
        shapes = _piece_shapes(input_factors[i : i + 2], output_factors[i : i + 2])
        coupling_a, coupling_g, basis_a, basis_g, scale = (
            part.view(shape)
            for part, shape in zip(flat.split([math.prod(s) for s in shapes]), shapes, strict=True)
        )
        conditional = KroneckerDifferenceInverse(basis_a, basis_g, scale)
        pieces.append(TridiagonalLayerInverse(coupling_a, coupling_g, conditional))
    pieces.append(TridiagonalLayerInverse(input_inverse=results[-2], output_inverse=results[-1]))
    return pieces


def _piece_shapes(pair_a: list[torch.Tensor], pair_g: list[torch.Tensor]) -> list[tuple]:
    """The shapes of a piece's coupling_a, coupling_g, basis_a, basis_g and scale (the
    couplings and the scale keep only their r = min(d, d') rows that can be non-zero)."""
    (a, a_next), (g, g_next) = (len(m) for m in pair_a), (len(m) for m in pair_g)
    rank_a, rank_g = min(a, a_next), min(g, g_next)
    return [(rank_a, a_next), (rank_g, g_next), (a, a), (g, g), (rank_g, rank_a)]


def _pair_job(
    pair_a: list[torch.Tensor],
    pair_g: list[torch.Tensor],
    cross_a: torch.Tensor,
    cross_g: torch.Tensor,
    notes: Notes,
    label: str,
) -> Job:
    """The job of layer i's piece from layers i, i+1 (see `shared_tridiagonal_inverse`)."""

    def compute() -> torch.Tensor | None:
        local = Notes()  # the slice calls its layers 0 and 1: say which they are
        pieces = tridiagonal_inverse(pair_a, pair_g, [cross_a], [cross_g], local)
        for message in local.messages:
            notes.add(f"{label} (as layers 0, 1): {message}")
        if pieces is None:
            return None
        piece = pieces[0]
        conditional = piece.conditional
        parts = (
            piece.coupling_a,
            piece.coupling_g,
            conditional.basis_a,
            conditional.basis_g,
            conditional.scale,
        )
        return torch.cat([part.reshape(-1) for part in parts])

    shapes = _piece_shapes(pair_a, pair_g)
    like = pair_a[0].new_empty(sum(math.prod(s) for s in shapes))
    # Two Cholesky factorisations per side and layer and one eigendecomposition per side.
    weight = float(sum(len(m) ** 3 for m in (*pair_a, *pair_g)))
    return Job(compute, like, weight)
