"""Named, ready-to-run experiments (`GET /api/presets`, `kfac-lab run --preset NAME`).

Each preset is an experiment in the compact comparison form — a `base` run × `optimizers` ×
`seeds` — kept as plain data, so that `expand_preset` can merge a request's overrides into it
before validation and every error still names the field at fault. Importing this module
imports neither torch nor FastAPI.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from pydantic import BaseModel

from backend.spec import ExperimentSpec, RunSpec


class Preset(BaseModel):
    description: str
    experiment: dict[str, Any]


_SGD_M = {"name": "sgd_momentum", "lr": 0.01, "momentum": 0.9}
_ADAM = {"name": "adam", "lr": 1e-3}
_PAPER_AUTOENCODER = {"name": "autoencoder", "encoder": [1000, 500, 250, 30]}
_PAPER_CONVNET = {"name": "convnet"}  # 3 × (5×5 conv, 3×3/2 pooling): 32, 32, 64 filters
_OFFLINE_CONVNET = {"name": "convnet", "width_scale": 0.5}  # 16, 16, 32 filters


_QUARTER_AUTOENCODER_RUN = {  # the lab's quick autoencoder run: 784-250-125-62-8-…-784
    "dataset": "digits_offline",
    "model": {**_PAPER_AUTOENCODER, "width_scale": 0.25},
    "batch_size": 256,
    "steps": 300,
    "eval_interval": 50,
    "checkpoint_interval": 100,
}
_CIFAR10_RUN = {  # the KFC paper's CIFAR-10 training, for a GPU worker
    "dataset": "cifar10",
    "batch_size": 128,
    "steps": 10_000,
    "eval_interval": 250,
    "snapshot_interval": 1000,
    "checkpoint_interval": 500,
}


def _preset(
    description: str,
    name: str,
    optimizers: list[dict[str, Any]],
    seeds: tuple[int, ...] | list[int] = (0,),
    **run: Any,
) -> Preset:
    """A preset whose experiment is in the comparison form: a base run (the run fields `run`)
    × `optimizers` × `seeds`."""
    experiment = {"name": name, "base": run, "optimizers": optimizers, "seeds": list(seeds)}
    return Preset(description=description, experiment=experiment)


PRESETS: dict[str, Preset] = {
    "smoke": _preset(
        "K-FAC against SGD with momentum at lr 0.01 on a quarter-width MNIST autoencoder "
        "(784-250-125-62-8-62-125-250-784) trained on the offline MNIST digits, 300 steps "
        "of batch 256, three curvature snapshots per run. About a minute on 2 CPU cores; "
        "K-FAC ends far below SGD (about 100 nats per image against about 170). One lr is "
        "no tuned baseline: the autoencoder_race preset sweeps SGD's and Adam's.",
        "smoke",
        [{"name": "kfac"}, _SGD_M],
        **_QUARTER_AUTOENCODER_RUN,
        snapshot_interval=100,
    ),
    "mnist_autoencoder": _preset(
        "Paper §13: the deep autoencoder 784-1000-500-250-30-250-500-1000-784 (sigmoid "
        "units, linear code, Bernoulli output, sparse initialisation) on the full MNIST "
        "training set, with the exponentially increasing mini-batch size m_k = "
        "min(1000·exp((k−1)/b), 60000) reaching the full set near step 500, and iterate "
        "averaging for evaluation. K-FAC against SGD with momentum and Adam. Needs the MNIST "
        "IDX files in KFAC_DATA_DIR (`kfac-lab data fetch mnist`, or the override "
        '{"dataset": {"name": "mnist", "download": true}}); meant for a GPU worker.',
        "mnist autoencoder (paper §13)",
        [{"name": "kfac"}, _SGD_M, _ADAM],
        dataset="mnist",
        model=_PAPER_AUTOENCODER,
        batch_size={"kind": "exponential", "initial": 1000, "growth": round(499 / math.log(60), 1)},
        steps=3000,
        eval_interval=100,
        snapshot_interval=250,
        checkpoint_interval=100,
        iterate_averaging=0.99,
    ),
    "digits_autoencoder": _preset(
        "The paper's MNIST autoencoder at full width on the offline MNIST digits (no "
        "download), batch 256: K-FAC against SGD with momentum and Adam — the setting of "
        "the convergence benchmark.",
        "digits autoencoder",
        [{"name": "kfac"}, _SGD_M, _ADAM],
        dataset="digits_offline",
        model=_PAPER_AUTOENCODER,
        batch_size=256,
        steps=1000,
        eval_interval=100,
        snapshot_interval=250,
    ),
    "autoencoder_race": _preset(
        "The race the lab is for: K-FAC with its defaults against SGD with momentum and "
        "Adam, each baseline swept over its learning rate (SGD-m 0.003/0.01/0.03/0.1, "
        "Adam 0.0003/0.001/0.003/0.01), 3 seeds each (27 runs), on the quarter-width MNIST "
        "autoencoder over the offline MNIST digits, 300 steps of batch 256. The comparison "
        "table gives each configuration's final loss as mean ± sd over the seeds, marks "
        "each optimizer's best learning rate, and the steps and seconds K-FAC takes to "
        "reach the best baseline's final loss.",
        "autoencoder race",
        [
            {"name": "kfac"},
            {**_SGD_M, "sweep": {"lr": [0.003, 0.01, 0.03, 0.1]}},
            {**_ADAM, "sweep": {"lr": [3e-4, 1e-3, 3e-3, 1e-2]}},
        ],
        seeds=[0, 1, 2],
        **_QUARTER_AUTOENCODER_RUN,
    ),
    "diag_vs_tridiag": _preset(
        "Block-diagonal (§4.2) against block-tridiagonal (§4.3) K-FAC on a half-width "
        "MNIST autoencoder over the offline digits, two seeds each; the snapshots show how "
        "well each inverse matches (F̃ + λI)⁻¹.",
        "block-diagonal vs block-tridiagonal",
        [{"name": "kfac"}, {"name": "kfac_tridiag"}],
        seeds=[0, 1],
        dataset="digits_offline",
        model={**_PAPER_AUTOENCODER, "width_scale": 0.5},
        batch_size=256,
        steps=500,
        eval_interval=50,
        snapshot_interval=100,
    ),
    "digits_classifier": _preset(
        "An MLP classifier (64-128-64-10, tanh) on scikit-learn's 8×8 digits: K-FAC "
        "against SGD with momentum and Adam, with test accuracy. Seconds on a CPU.",
        "8x8 digits classifier",
        [{"name": "kfac"}, {**_SGD_M, "lr": 0.1}, _ADAM],
        dataset="digits8x8",
        model={"name": "mlp", "hidden": [128, 64]},
        batch_size=128,
        steps=300,
        eval_interval=25,
        snapshot_interval=100,
    ),
    "conv_smoke": _preset(
        "KFC-pre (the KFC direction inside SGD with momentum, fixed lr and λ) against SGD "
        "with momentum on the offline conv task: the paper's conv net at half width "
        "(5×5 conv layers of 16, 16 and 32 filters, 3×3/2 pooling, softmax) on the offline "
        "MNIST digits as 28×28×1 images, batch 128, 60 steps, one curvature snapshot per "
        "run. About a minute on 2 CPU cores.",
        "conv smoke",
        [{"name": "kfc_pre"}, {**_SGD_M, "lr": 0.05}],
        dataset="digits_offline",
        model=_OFFLINE_CONVNET,
        batch_size=128,
        steps=60,
        eval_interval=20,
        snapshot_interval=60,
        checkpoint_interval=30,
        probe={"units": 8, "examples": 64},
    ),
    "cifar10_kfc_pre": _preset(
        "KFC-pre vs SGD on CIFAR-10 (paper): the KFC paper's CIFAR-10 conv net (three 5×5 "
        "conv layers of 32, 32 and 64 filters with 3×3/2 pooling, softmax output) trained "
        "with KFC-pre and with SGD with momentum, batch 128; the paper reports KFC-pre "
        "reaching a given training error in about 20× fewer iterations. Needs the CIFAR-10 "
        "python batches in KFAC_DATA_DIR; meant for a GPU worker.",
        "KFC-pre vs SGD on CIFAR-10 (paper)",
        [{"name": "kfc_pre"}, {**_SGD_M, "lr": 0.05}],
        model=_PAPER_CONVNET,
        **_CIFAR10_RUN,
    ),
    "cifar10_batchnorm": _preset(
        "KFC vs SGD, BatchNorm: the paper's CIFAR-10 conv net with batch normalisation "
        "after every conv layer; BN's scale and shift get the plain update, the conv and "
        "softmax layers KFC. KFC-pre and KFC (adaptive α, μ and λ) against SGD with "
        "momentum — the paper's claim is that KFC-pre still beats SGD with BN. Needs the "
        "CIFAR-10 python batches in KFAC_DATA_DIR; meant for a GPU worker.",
        "KFC vs SGD, BatchNorm",
        [{"name": "kfc_pre"}, {"name": "kfc"}, {**_SGD_M, "lr": 0.05}],
        model={**_PAPER_CONVNET, "batch_norm": True},
        **_CIFAR10_RUN,
    ),
}

_EXPERIMENT_KEYS = {"name", "description", "optimizers", "seeds"}
OVERRIDE_KEYS = sorted(_EXPERIMENT_KEYS | set(RunSpec.model_fields))
"""The keys `expand_preset` takes (published in the OpenAPI document)."""


def expand_preset(name: str, overrides: dict[str, Any] | None = None) -> ExperimentSpec:
    """The preset `name` as a validated experiment, with `overrides` applied first.

    Keys `name`, `description`, `optimizers` and `seeds` replace the experiment's; any other
    key is a run field, deep-merged into the base run (`{"steps": 50}`,
    `{"model": {"width_scale": 0.5}}`). Raises KeyError for an unknown preset and
    pydantic.ValidationError (naming e.g. `base.steps`) for a bad override.
    """
    experiment = copy.deepcopy(PRESETS[name].experiment)
    experiment.setdefault("description", PRESETS[name].description)
    for key, value in (overrides or {}).items():
        if key in _EXPERIMENT_KEYS:
            experiment[key] = value
        else:
            experiment["base"] = _merge(experiment["base"], {key: value})
    return ExperimentSpec.model_validate(experiment)


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
