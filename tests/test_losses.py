import math

import pytest
import torch

from vcb_utils.losses import InfoNCELoss, SigmoidLoss, make_loss


def test_sigmoid_loss_equals_hand_formula():
    scores = torch.tensor([[0.9, 0.1, -0.2], [0.3, 0.8, 0.0], [0.2, -0.1, 0.7]])
    t, b = 4.0, -2.0
    expected = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if i == j else -1.0
            logit = t * scores[i, j].item() + b
            expected += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
    expected /= 3
    loss = SigmoidLoss(scale_init=t, bias_init=b)(scores)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_infonce_equals_hand_formula():
    scores = torch.tensor([[0.9, 0.1], [0.3, 0.8]])
    t = 5.0

    def ce(row, target):
        logits = [t * x for x in row]
        return -logits[target] + math.log(sum(math.exp(x) for x in logits))

    rows = [scores[i].tolist() for i in range(2)]
    cols = [scores[:, j].tolist() for j in range(2)]
    expected = (sum(ce(rows[i], i) for i in range(2)) + sum(ce(cols[j], j) for j in range(2))) / 4
    assert InfoNCELoss(scale_init=t)(scores).item() == pytest.approx(expected, rel=1e-6)


def test_scale_and_bias_learn():
    loss = SigmoidLoss()
    loss(torch.rand(4, 4)).backward()
    assert loss.log_scale.grad is not None and loss.bias.grad is not None
    assert loss.log_scale.item() == pytest.approx(math.log(10.0))


def test_bad_inputs():
    with pytest.raises(ValueError, match="square"):
        SigmoidLoss()(torch.rand(3, 4))
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("triplet", 10.0, -10.0)
