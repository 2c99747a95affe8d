"""A K-FAC/KFC run that blows up ends `diverged`, not `failed` on a sampling error."""

from backend.spec import RunSpec
from worker.run_types import MemoryRecorder
from worker.training import train


def test_kfc_pre_with_a_huge_learning_rate_ends_diverged():
    """Without the KL clip, lr 100 and λ = 1e-3 blow the conv net up within a few steps; with
    statistics every step, the next step would sample the Fisher's targets from NaN logits."""
    spec = RunSpec.model_validate(
        {
            "dataset": "digits8x8",
            "model": {
                "name": "convnet",
                "channels": [4, 4],
                "pooling": ["max", "max"],
                "kernel_size": 3,
            },
            "optimizer": {
                "name": "kfc_pre",
                "lr": 100.0,
                "kl_clip": None,
                "damping": 1e-3,
                "stats_interval": 1,
            },
            "batch_size": 32,
            "steps": 60,
            "eval_interval": None,
            "checkpoint_interval": None,
            "device": "cpu",
        }
    )
    result = train(spec, MemoryRecorder())
    assert result.status == "diverged", result.reason
    assert result.reason == f"training loss is nan at step {result.step}"
