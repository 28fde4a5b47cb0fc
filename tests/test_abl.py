"""ABL: the LGA loss, the isolation ranking and the unlearning loss."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backdoorlab.abl import ascent_loss, isolate_lowest, lga_loss


def grad_of_true_logit(loss_fn, true_logit: float) -> float:
    """d loss / d (logit of the true class), for a 2-class example with loss -log softmax."""
    logits = torch.tensor([[true_logit, 0.0]], requires_grad=True)
    loss_fn(logits, torch.tensor([0]), torch.ones(1)).backward()
    return logits.grad[0, 0].item()


def logit_for_loss(loss: float) -> float:
    # for logits [a, 0] and label 0: CE = log(1 + e^-a)  ->  a = -log(e^loss - 1)
    return -float(np.log(np.expm1(loss)))


@pytest.mark.parametrize("per_example", [True, False])
def test_lga_descends_above_gamma_and_ascends_below_it(per_example):
    loss_fn = lga_loss(gamma=0.5, per_example=per_example)
    above = grad_of_true_logit(loss_fn, logit_for_loss(0.8))
    below = grad_of_true_logit(loss_fn, logit_for_loss(0.2))
    # gradient descent moves a logit against its gradient: a negative gradient raises the
    # true-class logit (loss goes down), a positive one lowers it (loss goes up)
    assert above < 0
    assert below > 0


def test_lga_equals_cross_entropy_above_gamma_and_its_negative_below():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 0])  # losses ~0.049 and ~3.049
    per_example = lga_loss(1.0, per_example=True)(logits, y, torch.ones(2))
    assert per_example.item() == pytest.approx((-0.04859 + 3.04859) / 2, abs=1e-4)
    batch = lga_loss(1.0, per_example=False)(logits, y, torch.ones(2))
    assert batch.item() == pytest.approx((0.04859 + 3.04859) / 2, abs=1e-4)


def test_isolation_takes_the_lowest_loss_fraction():
    losses = np.array([0.9, 0.01, 0.5, 0.02, 3.0, 0.03, 1.0, 2.0, 0.7, 0.6])
    assert isolate_lowest(losses, 0.3).tolist() == [1, 3, 5]
    assert isolate_lowest(losses, 0.001).tolist() == [1]  # at least one


def test_ascent_loss_pushes_isolated_examples_up_until_the_cap():
    uncapped = ascent_loss(cap=0.0)
    capped = ascent_loss(cap=2.0)
    ascend = torch.tensor([-1.0])
    for loss_fn in (uncapped, capped):
        logits = torch.tensor([[logit_for_loss(0.5), 0.0]], requires_grad=True)
        loss_fn(logits, torch.tensor([0]), ascend).backward()
        assert logits.grad[0, 0] > 0  # descent on this lowers the true logit: the loss rises
    logits = torch.tensor([[logit_for_loss(3.0), 0.0]], requires_grad=True)
    capped(logits, torch.tensor([0]), ascend).backward()
    assert logits.grad.abs().max() == 0  # past the cap it is left alone
    logits = torch.tensor([[logit_for_loss(3.0), 0.0]], requires_grad=True)
    uncapped(logits, torch.tensor([0]), ascend).backward()
    assert logits.grad[0, 0] > 0


def test_ascent_loss_descends_on_positively_weighted_clean_examples():
    logits = torch.tensor([[logit_for_loss(3.0), 0.0]], requires_grad=True)
    ascent_loss(cap=2.0)(logits, torch.tensor([0]), torch.tensor([1.0])).backward()
    assert logits.grad[0, 0] < 0
