"""The choices the optimizer offers, as enums (strings are accepted wherever an enum is)."""

from enum import StrEnum


class LossFamily(StrEnum):
    """The model's predictive distribution p(y|x); the loss is its negative log-likelihood."""

    CROSS_ENTROPY = "cross_entropy"  # categorical over logits
    BCE = "bce"  # independent Bernoulli over logits
    MSE = "mse"  # Gaussian with unit variance: 0.5 * ||y - z||^2


class FisherType(StrEnum):
    """Where the targets of the statistics' backward pass come from (paper §5)."""

    TRUE = "true"  # sampled from the model's predictive distribution
    EMPIRICAL = "empirical"  # the training targets


class InverseStructure(StrEnum):
    """The structured approximation of the inverse Fisher (paper §4)."""

    BLOCK_DIAGONAL = "block_diagonal"  # F̌⁻¹, §4.2
    BLOCK_TRIDIAGONAL = "block_tridiagonal"  # F̂⁻¹, §4.3 and Appendix B


class ProductPrecision(StrEnum):
    """The precision of the dense two-sided products G⁻¹[∇W ∇b]Ā⁻¹ of the block-diagonal F̌⁻¹∇h
    (§4.2): the bulk of a K-FAC step's cost when the ℓ2 term η > 0 turns the per-example form
    off (kfac.preconditioner)."""

    EXACT = "exact"  # in the parameters' dtype (the default)
    BFLOAT16 = "bfloat16"  # bfloat16 operands, float32 accumulation: ~4× faster with AMX, GPUs


class QuadraticSampling(StrEnum):
    """Which examples of the mini-batch the quadratic model's Fisher products use (§7)."""

    AUTO = "auto"  # CURVATURE for the categorical, FIRST otherwise (kfac.model_rows)
    CURVATURE = "curvature"  # the largest output curvature plus a uniform draw, weighted
    FIRST = "first"  # the batch's first examples, each weight 1
