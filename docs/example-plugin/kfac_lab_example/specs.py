"""The plugin's specs: imported by the API, so pydantic and kfac-lab's spec bases only.

Every field is a hyper-parameter that appears, with its default and range, in the lab's
new-comparison form (generated from the API's JSON schema) and is validated on create.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.architectures import DenseModelSpec
from backend.datasets import DatasetInfo


class SkinnyMLPSpec(DenseModelSpec):
    """A classifier with one narrow hidden layer of `width` SiLU units."""

    builder: ClassVar[str] = "kfac_lab_example.train:build_skinny_mlp"
    name: Literal["skinny_mlp"] = "skinny_mlp"
    width: int = Field(16, ge=1, le=1024, description="hidden units")
    loss: Literal["cross_entropy"] = "cross_entropy"

    def layer_dims(self, input_dim: int, n_classes: int) -> list[int]:
        return [input_dim, self.width, n_classes]


TWO_SPIRALS = DatasetInfo(
    input_dim=2,
    n_classes=2,
    n_train=800,
    n_test=200,
    description="two interleaved noisy spirals in the plane (seeded, generated)",
    builder="kfac_lab_example.train:load_two_spirals",
)


class DiagonalFisherSpec(BaseModel):
    """θ ← θ − α (F̂ + λ)⁻¹ ∇h with F̂ a moving average of the diagonal of the true Fisher."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    builder: ClassVar[str] = "kfac_lab_example.train:build_diagonal_fisher"

    name: Literal["diag_fisher"] = "diag_fisher"
    lr: float = Field(0.05, gt=0, le=10, description="α")
    damping: float = Field(1e-3, gt=0, le=1e3, description="λ")
    decay: float = Field(0.95, ge=0, lt=1, description="of the moving average of F̂")
