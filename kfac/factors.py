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


def cross_moment(rows_left: torch.Tensor, rows_right: torch.Tensor) -> torch.Tensor:
    """E[x yᵀ] from per-example rows x (N, d_x) and y (N, d_y): the off-diagonal factors
    Ā(i−1, i) and G(i, i+1) of the block-tridiagonal approximation (paper §4.3)."""
    return rows_left.T @ rows_right / rows_left.shape[0]
