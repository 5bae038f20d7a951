import re

import numpy as np
import pytest

from cnncli.blocks import Residual
from cnncli.gradcheck import check_gradient
from cnncli.layers import Conv2D, Dense, Flatten, ReLU
from cnncli.model import Sequential
from cnncli.optimizers import SGD
from cnncli.regularizers import L1, L2, L1L2
from cnncli.training import fit


@pytest.mark.parametrize("regularizer", [L1(0.3), L2(0.2), L1L2(0.1, 0.4)])
def test_penalty_gradient_matches_finite_differences(regularizer):
    weight = np.random.default_rng(0).standard_normal((3, 4))
    weight[np.abs(weight) < 1e-3] = 0.5          # away from |w|'s kink at 0
    check_gradient(lambda: np.array(regularizer.penalty(weight)), weight,
                   regularizer.gradient(weight), np.array(1.0))
    assert L2(0.5).penalty(np.array([1.0, -2.0])) == pytest.approx(2.5)
    assert L1(0.5).penalty(np.array([1.0, -2.0])) == pytest.approx(1.5)


def data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def trained_dense(regularizer):
    x, y = data()
    model = Sequential([Dense(16, regularizer=regularizer), ReLU(), Dense(2)], input_shape=(6,))
    history = fit(model, x, y, epochs=20, batch_size=16,
                  optimizer=SGD(model.parameters(), lr=0.05))
    return model, history


def test_l2_shrinks_and_l1_sparsifies_the_weights():
    plain, _ = trained_dense(None)
    shrunk, history = trained_dense(L2(0.05))
    sparse, _ = trained_dense(L1(0.02))
    # Seeded run: L2 brings the summed |w| to about 0.68x, L1 puts about 11% of
    # the weights within 1e-2 of zero (about 1% without it).
    assert np.abs(shrunk[0].weight.value).sum() < 0.8 * np.abs(plain[0].weight.value).sum()
    assert np.mean(np.abs(sparse[0].weight.value) < 1e-2) > 0.08
    assert np.mean(np.abs(plain[0].weight.value) < 1e-2) < 0.03
    # The reported loss includes the penalty.
    assert history["loss"][-1] > L2(0.05).penalty(shrunk[0].weight.value)


def test_frozen_weights_pay_no_penalty():
    model = Sequential([Dense(4, regularizer=L2(1.0)), Dense(2, regularizer=L1(1.0))],
                       input_shape=(3,))
    model[0].freeze()
    model[1].weight.grad = np.zeros_like(model[1].weight.value)
    penalty = model.regularize()
    assert penalty == pytest.approx(L1(1.0).penalty(model[1].weight.value))
    assert model[0].weight.grad is None
    np.testing.assert_array_equal(model[1].weight.grad, np.sign(model[1].weight.value))


def test_penalties_inside_residual_blocks_are_found():
    model = Sequential([Residual([Conv2D(2, 3, padding=1, regularizer=L2(0.1))]), Flatten()],
                       input_shape=(2, 4, 4))
    (parameter, regularizer), = model.regularized()
    assert parameter is model[0].body[0].weight and regularizer.l2 == 0.1


def test_regularizer_errors():
    with pytest.raises(ValueError, match=re.escape("l2: expected a finite strength >= 0, got -1")):
        L2(-1)
    with pytest.raises(ValueError, match="regularizer: expected L1, L2 or L1L2"):
        Dense(3, regularizer=0.01)
