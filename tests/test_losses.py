import re

import numpy as np
import pytest
from sklearn.metrics import log_loss

from cnncli.gradcheck import check_gradient
from cnncli.losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy


def check_loss_gradient(loss, outputs, targets):
    _, grad = loss(outputs, targets)
    check_gradient(lambda: np.array(loss(outputs, targets)[0]), outputs, grad, np.array(1.0))


def test_softmax_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 4)) * 3
    labels = rng.integers(0, 4, 6)
    value, _ = SoftmaxCrossEntropy()(logits, labels)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert value == pytest.approx(log_loss(labels, probabilities, labels=range(4)), rel=1e-10)
    check_loss_gradient(SoftmaxCrossEntropy(), logits, labels)


def test_softmax_cross_entropy_is_stable_for_extreme_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=np.float32)
    value, grad = SoftmaxCrossEntropy()(logits, np.array([1, 2]))
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    assert value == pytest.approx(1e4, rel=1e-6)   # sample 0: 2e4 nats, sample 1: 0


def test_binary_cross_entropy_from_logits_and_probabilities():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((5, 3)) * 4
    targets = rng.integers(0, 2, (5, 3)).astype(np.float64)
    value, _ = BinaryCrossEntropy()(logits, targets)
    probabilities = 1 / (1 + np.exp(-logits))
    expected = -np.mean(targets * np.log(probabilities) + (1 - targets) * np.log(1 - probabilities))
    assert value == pytest.approx(expected, rel=1e-10)
    assert BinaryCrossEntropy(from_logits=False)(probabilities, targets)[0] == pytest.approx(
        expected, rel=1e-6)
    check_loss_gradient(BinaryCrossEntropy(), logits, targets)
    check_loss_gradient(BinaryCrossEntropy(from_logits=False), probabilities, targets)
    extreme = BinaryCrossEntropy()(np.array([[1e4, -1e4]]), np.array([[0.0, 1.0]]))
    assert np.isfinite(extreme[0]) and extreme[0] == pytest.approx(1e4)


def test_mean_squared_error():
    rng = np.random.default_rng(2)
    outputs, targets = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    assert MeanSquaredError()(outputs, targets)[0] == pytest.approx(np.mean((outputs - targets) ** 2))
    check_loss_gradient(MeanSquaredError(), outputs, targets)


@pytest.mark.parametrize("call, message", [
    (lambda: SoftmaxCrossEntropy()(np.zeros((2, 3)), np.array([0, 3])),
     "labels: expected values in [0, 3), got [3]"),
    (lambda: SoftmaxCrossEntropy()(np.zeros((2, 3)), np.array([0.0, 1.0])),
     "labels: expected 2 integer class indices, got float64 array of shape (2,)"),
    (lambda: SoftmaxCrossEntropy()(np.zeros(3), np.array([0])),
     "outputs: expected a 2-D array (N, classes) of logits, got shape (3,)"),
    (lambda: BinaryCrossEntropy()(np.zeros((2, 1)), np.array([[0.5], [2.0]])),
     "targets: expected values in [0, 1], got range [0.5, 2.0]"),
    (lambda: MeanSquaredError()(np.zeros((2, 2)), np.zeros((2, 3))),
     "targets: expected shape (2, 2), got (2, 3)"),
])
def test_loss_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_functional_softmax_and_sigmoid_match_the_definitions_and_never_overflow():
    from cnncli import functional as F
    rng = np.random.default_rng(3)
    z = rng.normal(size=(5, 7))
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(F.softmax(z, dim=1), expected, rtol=1e-12)
    np.testing.assert_allclose(F.softmax(z.T, dim=0), expected.T, rtol=1e-12)
    np.testing.assert_allclose(F.sigmoid(z), 1 / (1 + np.exp(-z)), rtol=1e-12)
    huge = np.array([[1000.0, -1000.0, 0.0]], dtype=np.float32)
    assert np.isfinite(F.softmax(huge)).all() and F.softmax(huge)[0, 0] == 1
    assert F.sigmoid(huge).tolist() == [[1.0, 0.0, 0.5]]
    inplace = z.copy()
    assert F.softmax(inplace, dim=1, out=inplace) is inplace
    np.testing.assert_allclose(inplace, expected, rtol=1e-12)
