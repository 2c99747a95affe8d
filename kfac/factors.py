"""Running estimates of the Kronecker factors (paper §5).

Each factor is an exponentially decaying average of its per-batch estimates with weight
ε = min(1 − 1/k, decay) on the old value at the k-th update, so the first few updates are plain
averages of everything seen so far instead of being biased towards the zero start.
"""

import torch


def running_average_weight(update_count: int, decay: float) -> float:
    """ε for the `update_count`-th update (counting from 1)."""
    return min(1.0 - 1.0 / update_count, decay)


def update_running_average(
    average: torch.Tensor | None, estimate: torch.Tensor, update_count: int, decay: float
) -> torch.Tensor:
    """ε·average + (1 − ε)·estimate, in place when there is an average to update."""
    if average is None or update_count == 1:
        return estimate.clone()
    epsilon = running_average_weight(update_count, decay)
    return average.mul_(epsilon).add_(estimate, alpha=1.0 - epsilon)


# d from which `second_moment` multiplies only the blocks on and above the diagonal: the
# autoencoder's factors of side 785–1001, at batch 256 and 1,000 (two threads, an AMD EPYC),
# took 0.72–0.88 of XᵀX's time in three column blocks; at side 501 it was 0.90–1.0.
SYMMETRIC_BLOCKS_FROM = 512
SYMMETRIC_BLOCKS = 3


def second_moment(rows: torch.Tensor, count: int) -> torch.Tensor:
    """E[x xᵀ] = XᵀX / count from rows X (N, d): the factors Ā = E[āāᵀ], G = E[ggᵀ] (§5).

    XᵀX is symmetric, so for d ≥ SYMMETRIC_BLOCKS_FROM only its column blocks on and above the
    diagonal are multiplied, k = SYMMETRIC_BLOCKS of them: (k + 1)/2k of the multiply-adds,
    2/3 at k = 3; the blocks below are the transposes.  The same sums over the same rows (on
    the EPYC bitwise the same entries), and the result exactly symmetric.
    """
    side = rows.shape[1]
    if side < SYMMETRIC_BLOCKS_FROM:
        return rows.T @ rows / count
    moment = rows.new_empty(side, side)
    edges = [side * i // SYMMETRIC_BLOCKS for i in range(SYMMETRIC_BLOCKS + 1)]
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        # (end − start, side − start): the diagonal block and everything right of it
        on_and_right = (rows[:, start:end].T @ rows[:, start:]).div_(count)
        moment[start:end, start:] = on_and_right
        moment[end:, start:end] = on_and_right[:, end - start :].T
    return moment


def cross_moment(rows_left: torch.Tensor, rows_right: torch.Tensor) -> torch.Tensor:
    """E[x yᵀ] from per-example rows x (N, d_x) and y (N, d_y): the off-diagonal factors
    Ā(i−1, i) and G(i, i+1) of the block-tridiagonal approximation (paper §4.3)."""
    return rows_left.T @ rows_right / rows_left.shape[0]
