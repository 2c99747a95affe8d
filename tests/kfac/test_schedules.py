import pytest
import torch
from torch import nn

from kfac.schedules import IterateAverage, exponential_batch_size


def test_batch_size_grows_exponentially_to_the_final_size():
    sizes = [exponential_batch_size(k, 100, 1600, 5) for k in range(1, 8)]
    assert sizes == [100, 200, 400, 800, 1600, 1600, 1600]


def test_batch_size_refuses_bad_arguments():
    with pytest.raises(ValueError):
        exponential_batch_size(0, 100, 1000, 10)


def test_iterate_average_is_the_running_mean_then_decays():
    model = nn.Linear(1, 1, bias=False)
    average = IterateAverage(model, decay=0.5)
    values = [1.0, 3.0, 5.0]
    for v in values:
        with torch.no_grad():
            model.weight.fill_(v)
        average.update(model)
    # ξ₁ = 0, ξ₂ = 1/2, ξ₃ = min(2/3, 1/2): ((1 + 3)/2)/2 + 5/2 = 3.5
    assert average.average[0].item() == pytest.approx(3.5)
    with average.swap_into(model):
        assert model.weight.item() == pytest.approx(3.5)
    assert model.weight.item() == 5.0
