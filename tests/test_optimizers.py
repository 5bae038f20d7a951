import re

import numpy as np
import pytest

import reference
from cnncli.layers import Parameter
from cnncli.optimizers import SGD, Adam, AdamW, CosineLR, OneCycleLR, StepLR


def run(optimizer_class, gradients, start, **settings):
    parameter = Parameter(start.copy())
    optimizer = optimizer_class({"w": parameter}, **settings)
    for grad in gradients:
        parameter.grad = grad
        optimizer.step()
    return parameter.value


GRADIENTS = [np.array([0.5, -1.0, 2.0]), np.array([0.1, 0.3, -0.7]), np.array([-0.2, 0.4, 0.9])]
START = np.array([1.0, -2.0, 0.5])


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_matches_its_formula(nesterov):
    lr, momentum, decay = 0.1, 0.9, 0.01
    p = reference.sgd_steps(START, GRADIENTS, lr, momentum, decay, nesterov)
    got = run(SGD, GRADIENTS, START, lr=lr, momentum=momentum, nesterov=nesterov,
              weight_decay=decay)
    np.testing.assert_allclose(got, p, rtol=1e-14)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_and_adamw_match_their_formula(decoupled):
    lr, b1, b2, eps, decay = 0.01, 0.9, 0.999, 1e-8, 0.1
    p = reference.adam_steps(START, GRADIENTS, lr, b1, b2, eps, decay, decoupled)
    got = run(AdamW if decoupled else Adam, GRADIENTS, START, lr=lr, weight_decay=decay)
    np.testing.assert_allclose(got, p, rtol=1e-14)


def test_frozen_parameters_are_skipped_even_after_the_optimizer_was_built():
    trained, frozen = Parameter(np.ones(2)), Parameter(np.ones(2))
    optimizer = SGD({"a": trained, "b": frozen}, lr=0.5, momentum=0.9)
    frozen.trainable = False
    trained.grad = frozen.grad = np.ones(2)
    optimizer.step()
    np.testing.assert_array_equal(frozen.value, np.ones(2))
    np.testing.assert_array_equal(trained.value, np.full(2, 0.5))
    optimizer.zero_grad()
    assert trained.grad is None and frozen.grad is None


def test_parameter_groups_have_their_own_rate():
    backbone, head = Parameter(np.zeros(1)), Parameter(np.zeros(1))
    optimizer = SGD([{"params": {"backbone": backbone}, "lr": 0.01}, {"params": {"head": head}}],
                    lr=0.1)
    backbone.grad = head.grad = np.ones(1)
    optimizer.step()
    assert backbone.value[0] == pytest.approx(-0.01) and head.value[0] == pytest.approx(-0.1)
    StepLR(optimizer, step_size=1, gamma=0.5).step()
    assert [group["lr"] for group in optimizer.groups] == pytest.approx([0.005, 0.05])


def test_adam_minimises_a_quadratic():
    parameter = Parameter(np.array([3.0, -4.0]))
    optimizer = Adam({"w": parameter}, lr=0.1)
    for _ in range(500):
        parameter.grad = 2 * parameter.value
        optimizer.step()
    assert np.abs(parameter.value).max() < 1e-2


def test_schedules():
    optimizer = SGD({"w": Parameter(np.zeros(1))}, lr=1.0)
    step = StepLR(optimizer, step_size=2, gamma=0.1)
    rates = [optimizer.lr]
    for _ in range(4):
        step.step()
        rates.append(optimizer.lr)
    assert rates == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    cosine = CosineLR(optimizer, total=4, min_factor=0.1)
    rates = [optimizer.lr]
    for _ in range(5):
        cosine.step()
        rates.append(optimizer.lr)
    assert rates[0] == pytest.approx(1) and rates[2] == pytest.approx(0.55)
    assert rates[4] == pytest.approx(0.1) and rates[5] == pytest.approx(0.1)
    cycle = OneCycleLR(optimizer, total=11, warmup=0.3, div=10, final_div=100)
    rates = [optimizer.lr]
    for _ in range(10):
        cycle.step()
        rates.append(optimizer.lr)
    assert rates[0] == pytest.approx(0.1) and max(rates) == pytest.approx(1.0)
    assert rates.index(max(rates)) == 3 and rates[-1] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(rates[:4], rates[1:4]))
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))


@pytest.mark.parametrize("call, message", [
    (lambda: SGD({"w": Parameter(np.zeros(1))}, lr=-1), "lr: expected a finite value >= 0, got -1"),
    (lambda: SGD({"w": Parameter(np.zeros(1))}, nesterov=True), "nesterov: needs a momentum > 0"),
    (lambda: SGD([], lr=0.1), "params: expected parameters"),
    (lambda: SGD([{"params": {"w": Parameter(np.zeros(1))}, "rate": 1}]),
     "params: unknown group setting 'rate'"),
    (lambda: Adam({"w": Parameter(np.zeros(1))}, beta1=1.0),
     "beta1, beta2: expected values in [0, 1), got 1.0, 0.999"),
    (lambda: StepLR(SGD({"w": Parameter(np.zeros(1))}), step_size=0),
     "step_size: expected an int >= 1, got 0"),
])
def test_optimizer_errors_name_the_problem(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_a_gradient_of_the_wrong_shape_is_refused():
    parameter = Parameter(np.zeros(3))
    optimizer = SGD({"dense.weight": parameter})
    parameter.grad = np.zeros(2)
    with pytest.raises(ValueError, match=re.escape("dense.weight: gradient of shape (2,) for a "
                                                   "parameter of shape (3,)")):
        optimizer.step()
