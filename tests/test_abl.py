"""ABL's pure pieces: the LGA loss, the paper's lowest-loss isolation, and the unlearning losses.

(Isolation and unlearning as a whole are tested with the defense's stage.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backdoorlab.defenses.abl import forget_loss, unlearning_loss
from backdoorlab.defenses.isolation import isolate_lowest, lga_loss


def grad_of_true_logit(loss_fn, true_logit: float, weight: float = 1.0) -> float:
    """d loss / d (logit of the true class), for a 2-class example with loss -log softmax."""
    logits = torch.tensor([[true_logit, 0.0]], requires_grad=True)
    loss_fn(logits, torch.tensor([0]), torch.tensor([weight])).backward()
    return logits.grad[0, 0].item()


def logit_for_loss(loss: float) -> float:
    # for logits [a, 0] and label 0: CE = log(1 + e^-a)  ->  a = -log(e^loss - 1)
    return -float(np.log(np.expm1(loss)))


# ------------------------------------------------------------------ LGA

@pytest.mark.parametrize("per_example", [True, False])
def test_lga_descends_above_gamma_and_ascends_below_it(per_example):
    loss_fn = lga_loss(gamma=0.5, per_example=per_example)
    above = grad_of_true_logit(loss_fn, logit_for_loss(0.8))
    below = grad_of_true_logit(loss_fn, logit_for_loss(0.2))
    # gradient descent moves a logit against its gradient: a negative gradient raises the
    # true-class logit (loss goes down), a positive one lowers it (loss goes up)
    assert above < 0
    assert below > 0


def test_lga_per_example_flips_each_loss_below_gamma_while_batch_lga_flips_only_the_mean():
    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 0])  # losses ~0.049 and ~3.049: one below gamma = 1, one above; mean above
    per_example = lga_loss(1.0, per_example=True)(logits, y, torch.ones(2))
    assert per_example.item() == pytest.approx((-0.04859 + 3.04859) / 2, abs=1e-4)
    batch = lga_loss(1.0, per_example=False)(logits, y, torch.ones(2))
    assert batch.item() == pytest.approx((0.04859 + 3.04859) / 2, abs=1e-4)


# ------------------------------------------------------------------ the paper's isolation

def test_isolation_takes_the_lowest_loss_fraction_sorted_by_index():
    losses = np.array([0.9, 0.01, 0.5, 0.02, 3.0, 0.03, 1.0, 2.0, 0.7, 0.6])
    assert isolate_lowest(losses, 0.3).tolist() == [1, 3, 5]
    assert isolate_lowest(np.array([0.3, 0.2, 0.1]), 0.67).tolist() == [1, 2]


def test_isolation_takes_at_least_one_example_and_never_more_than_there_are():
    losses = np.array([0.9, 0.01, 0.5])
    assert isolate_lowest(losses, 0.001).tolist() == [1]
    assert isolate_lowest(losses, 1.0).tolist() == [0, 1, 2]


# ------------------------------------------------------------------ unlearning

@pytest.mark.parametrize("logits,label", [([2.0, 0.5, -1.0], 0), ([0.1, 0.2, 0.3], 2), ([-3.0, 4.0, 1.0], 1)])
def test_forget_loss_is_minus_log_of_one_minus_the_label_probability(logits, label):
    z = torch.tensor([logits])
    p = F.softmax(z, 1)[0, label].item()
    assert forget_loss(z, torch.tensor([label])).item() == pytest.approx(-np.log(1 - p), rel=1e-5)


def test_forget_loss_stays_finite_where_the_label_is_certain():
    z = torch.tensor([[60.0, 0.0]], requires_grad=True)  # p(label) rounds to 1 in float32: 1 - p is 0
    loss = forget_loss(z, torch.tensor([0]))
    assert loss.item() == pytest.approx(60.0, rel=1e-4)  # -log(1 - p) = -log(e^0 / (e^60 + e^0)) ~ 60
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_forgetting_pushes_a_confident_example_away_from_its_label_where_ascent_barely_moves_it():
    confident = logit_for_loss(1e-4)  # p(label) ~ 0.9999
    forget = grad_of_true_logit(unlearning_loss("forget"), confident, weight=-1.0)
    ascent = grad_of_true_logit(unlearning_loss("ascent"), confident, weight=-1.0)
    assert forget > 0.5  # descent lowers the true logit at full speed
    assert 0 < ascent < 1e-3  # cross-entropy's gradient has all but vanished there


def test_forgetting_stops_by_itself_once_an_example_is_forgotten():
    forgotten = logit_for_loss(9.0)  # p(label) ~ 1e-4
    assert 0 < grad_of_true_logit(unlearning_loss("forget"), forgotten, weight=-1.0) < 1e-3


def test_ascent_raises_the_loss_of_unlearned_examples_until_the_cap():
    ascend = -1.0
    for cap in (0.0, 2.0):
        assert grad_of_true_logit(unlearning_loss("ascent", cap), logit_for_loss(0.5), ascend) > 0
    past_cap = logit_for_loss(3.0)
    assert grad_of_true_logit(unlearning_loss("ascent", cap=2.0), past_cap, ascend) == 0
    assert grad_of_true_logit(unlearning_loss("ascent", cap=0.0), past_cap, ascend) > 0  # 0: no cap


@pytest.mark.parametrize("objective", ["forget", "ascent"])
def test_positively_weighted_examples_are_learned_with_plain_cross_entropy(objective):
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]])
    y = torch.tensor([0, 2])
    weight = torch.tensor([1.0, 2.0])
    expected = (F.cross_entropy(logits, y, reduction="none") * weight).mean()
    assert unlearning_loss(objective, cap=2.0)(logits, y, weight).item() == pytest.approx(expected.item())


def test_unlearning_loss_mixes_unlearned_and_learned_examples_in_one_batch():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([0, 0])
    ce = F.cross_entropy(logits[:1], y[:1]).item()
    forget = forget_loss(logits[:1], y[:1]).item()
    mixed = unlearning_loss("forget")(logits, y, torch.tensor([-1.0, 1.0])).item()
    assert mixed == pytest.approx((forget + ce) / 2)
