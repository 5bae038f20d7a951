"""A linear classifier fitted to convergence on fixed features: the "linear probe" that
starts transfer learning.

    head = fit_linear_head(features, labels, validation=(val_features, val_labels))
    model.head.weight.value[...] = head.weight      # (classes, features)
    model.head.bias.value[...] = head.bias

With a frozen backbone, training the new head is a convex problem: a
multinomial logistic regression on the backbone's features. Solved to
optimality (L-BFGS, with scikit-learn's objective and stopping
rule) it gives the best head the features allow
in a fraction of a second, where epochs of SGD from a random head stop short
of it and, once the backbone is unfrozen, distort the pretrained features
while the head is still wrong (Kumar et al., ICLR 2022: linear probing, then
fine-tuning).

The L2 strength is chosen from a grid of ``C`` (scikit-learn's inverse
strength: the loss is ``sum of cross-entropies + ||W||^2 / (2C)``) by the
held-out log-loss, taking the strongest within one standard error of the
lowest: on the validation part when it has at least
``MIN_VALIDATION`` samples, else (small data, where a few dozen validation
images would pick ``C`` by chance) by stratified k-fold cross-validation of
the training part, refitted on all of it. The validation part is never
trained on, so it stays a fair judge of the head.
Features are standardised for the solver (it converges in tens of iterations
instead of hundreds) and the scaling is folded back into the weights, so the
head takes the raw features. Solving runs with BLAS on one thread: the
matrices are small, and OpenBLAS' threads cost more than they bring here (10x
slower on two cores).

Why not scikit-learn's LogisticRegression and StratifiedKFold, which this
module used first: importing them took about a second (scipy.stats and the
rest of scikit-learn's utilities), a third of ``cnncli finetune lenet-mnist
optdigits``. The objective, its gradient and the folds are a few lines here,
and so is the solver (``_lbfgs``): SciPy's L-BFGS-B, used next, took a fifth
of a second to import (scipy.optimize brings linear programming and the FFT
with it), a tenth of a few-label fine-tune. The objective is smooth and
strictly convex in every direction that changes the predictions, which is
the case where plain L-BFGS with a backtracking line search is sound.
"""

import copy

import numpy as np
from threadpoolctl import threadpool_limits

from cnncli.functional import softmax

__all__ = ["LinearHead", "fit_linear_head", "C_GRID", "MIN_VALIDATION"]

# Inverse L2 strengths tried, from strong to weak regularisation (each fit
# starts from the previous one's solution).
C_GRID = tuple(float(value) for value in np.logspace(-3, 2, 6))

# Validation parts smaller than this choose C by cross-validation instead.
MIN_VALIDATION = 500

FOLDS = 3
MAX_ITERATIONS = 500

# The solver's tolerance (scikit-learn's default), and the looser one of the path that
# only compares strengths: the chosen one is then solved to the full tolerance.
TOLERANCE = 1e-4
PATH_TOLERANCE = 1e-3

# L-BFGS: the curvature pairs kept (SciPy's and scikit-learn's default), the stop on a
# relative decrease of the objective (SciPy's L-BFGS-B stopping rule as scikit-learn sets
# it), the step shrinking of the line search and the most steps it tries.
MEMORY = 10
FUNCTION_TOLERANCE = 64 * np.finfo(float).eps
SUFFICIENT_DECREASE = 1e-4
MAX_LINE_SEARCH = 50


class LinearHead:
    """The fitted head: ``weight`` (classes, features), ``bias`` (classes,), the ``C``
    chosen, how (``"validation"`` or ``"cross-validation"``), and its held-out
    ``log_loss`` and ``accuracy`` there."""

    def __init__(self, weight, bias, C, method, log_loss, accuracy):
        self.weight, self.bias = weight, bias
        self.C, self.method = C, method
        self.log_loss, self.accuracy = log_loss, accuracy

    def __repr__(self):
        return (f"LinearHead({self.weight.shape[0]} classes, {self.weight.shape[1]} features, "
                f"C={self.C:g} by {self.method}, held-out accuracy {self.accuracy:.4f})")


def _check(features, labels, classes):
    features = np.asarray(features, dtype=np.float32)
    features = features.reshape(len(features), -1)
    labels = np.asarray(labels)
    if len(features) != len(labels):
        raise ValueError(f"labels: expected {len(features)} (one per sample), got {len(labels)}")
    if not np.all(np.isfinite(features)):
        raise ValueError("features: some are NaN or infinite; the backbone's weights or the "
                         "data are broken")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels: expected class indices 0..{classes - 1}")
    return features, labels.astype(np.int64)


def _standardizer(features):
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    # Constant features (dead ReLU units) carry nothing; leave them at scale 1.
    scale[scale < 1e-8] = 1.0
    return mean, scale


class _Softmax:
    """A multinomial logistic regression over the classes present in the labels, fitted
    as scikit-learn's ``LogisticRegression(solver="lbfgs")`` fits it: the mean
    cross-entropy plus ``||W||^2 / (2 C n)`` (the intercepts not penalised), minimised
    by L-BFGS-B until the largest gradient component is below ``tol``. ``fit`` starts
    from the previous solution (a warm start along a path of strengths)."""

    def __init__(self, C, tol=TOLERANCE):
        self.C, self.tol = C, tol
        self.classes_ = self.coef_ = self.intercept_ = None

    def fit(self, features, labels):
        classes = np.unique(labels)
        features = np.asarray(features, dtype=np.float64)
        targets = (labels[:, None] == classes[None, :]).astype(np.float64)
        count, width = features.shape
        if self.coef_ is not None and np.array_equal(self.classes_, classes):
            start = np.concatenate([self.coef_.ravel(), self.intercept_])
        else:
            start = np.zeros(len(classes) * (width + 1))
        l2_strength = 1.0 / (self.C * count)
        solution = _lbfgs(lambda parameters: _loss_and_gradient(parameters, features, targets,
                                                                l2_strength), start, self.tol)
        self.classes_ = classes
        self.coef_ = solution[:len(classes) * width].reshape(len(classes), width)
        self.intercept_ = solution[len(classes) * width:]
        return self

    def predict_proba(self, features):
        scores = np.asarray(features, dtype=np.float64) @ self.coef_.T + self.intercept_
        return softmax(scores, dim=1, out=scores)


def _lbfgs(objective, start, gradient_tolerance, max_iterations=MAX_ITERATIONS):
    """The minimum of a smooth convex ``objective`` (parameters -> (value, gradient)) by
    limited-memory BFGS from ``start``: stops once the largest gradient component is at
    most ``gradient_tolerance``, or the value decreases by no more than
    ``FUNCTION_TOLERANCE`` of itself, or after ``max_iterations`` steps. Each step goes
    along the two-loop recursion's direction (Nocedal and Wright, Algorithm 7.4) as far
    as a backtracking line search finds a sufficient decrease (Armijo); a curvature pair
    is kept only where it is positive, which keeps the direction a descent direction."""
    position = np.array(start, dtype=np.float64)
    value, gradient = objective(position)
    pairs = []                                   # (s, y, 1 / y.s), oldest first
    for _ in range(max_iterations):
        if np.abs(gradient).max() <= gradient_tolerance:
            break
        direction = -_inverse_hessian_times(pairs, gradient)
        slope = gradient @ direction
        if slope >= 0:                           # cannot happen in exact arithmetic
            pairs.clear()
            direction, slope = -gradient, -(gradient @ gradient)
        # The first step, with no curvature known, moves one unit in the largest component.
        step = 1.0 if pairs else 1.0 / max(np.abs(gradient).max(), 1.0)
        for _ in range(MAX_LINE_SEARCH):
            trial = position + step * direction
            trial_value, trial_gradient = objective(trial)
            if trial_value <= value + SUFFICIENT_DECREASE * step * slope:
                break
            # The minimum of the quadratic through value, slope and trial_value, kept
            # within a tenth and a half of the step.
            curvature = trial_value - value - step * slope
            shrunk = -slope * step * step / (2 * curvature) if curvature > 0 else step / 2
            step = min(max(shrunk, step / 10), step / 2)
        else:
            break                                # no decrease left at this precision
        change, gradient_change = trial - position, trial_gradient - gradient
        curvature = change @ gradient_change
        if curvature > 1e-10 * (gradient_change @ gradient_change):
            pairs.append((change, gradient_change, 1.0 / curvature))
            if len(pairs) > MEMORY:
                pairs.pop(0)
        decrease = value - trial_value
        position, value, gradient = trial, trial_value, trial_gradient
        if decrease <= FUNCTION_TOLERANCE * max(abs(value), abs(value + decrease), 1.0):
            break
    return position


def _inverse_hessian_times(pairs, gradient):
    """The L-BFGS estimate of the inverse Hessian times ``gradient`` from the curvature
    ``pairs`` (the two-loop recursion), scaled by the newest pair's y.s / y.y."""
    vector = gradient.copy()
    coefficients = []
    for change, gradient_change, inverse in reversed(pairs):
        coefficient = inverse * (change @ vector)
        vector -= coefficient * gradient_change
        coefficients.append(coefficient)
    if pairs:
        _, gradient_change, inverse = pairs[-1]
        vector *= 1.0 / (inverse * (gradient_change @ gradient_change))
    for (change, gradient_change, inverse), coefficient in zip(pairs, reversed(coefficients)):
        vector += change * (coefficient - inverse * (gradient_change @ vector))
    return vector


def _loss_and_gradient(parameters, features, targets, l2_strength):
    """The objective of ``_Softmax`` and its gradient, for weights and intercepts flattened
    into ``parameters``."""
    classes, width = targets.shape[1], features.shape[1]
    weight = parameters[:classes * width].reshape(classes, width)
    scores = features @ weight.T + parameters[classes * width:]
    scores -= scores.max(axis=1, keepdims=True)
    exponentials = np.exp(scores)
    totals = exponentials.sum(axis=1, keepdims=True)
    count = len(features)
    loss = (np.log(totals[:, 0]) - (scores * targets).sum(axis=1)).sum() / count
    loss += 0.5 * l2_strength * (weight ** 2).sum()
    residual = (exponentials / totals - targets) / count
    gradient = np.concatenate([(residual.T @ features + l2_strength * weight).ravel(),
                               residual.sum(axis=0)])
    return loss, gradient


def _held_out_losses(solver, features, labels):
    """Each sample's cross-entropy under ``solver``, and whether it was classified right."""
    probabilities = solver.predict_proba(features)
    full = np.zeros((len(labels), solver.classes_.max() + 1))
    full[:, solver.classes_] = probabilities
    picked = full[np.arange(len(labels)), labels]
    return -np.log(np.maximum(picked, 1e-15)), full.argmax(axis=1) == labels


def _path(train, train_labels, held_out, held_labels, stop_early=False):
    """Per-sample held-out losses and hits (C, samples) for every C of the grid, fitted
    with warm starts, and the fitted solver of each C tried. With ``stop_early`` the path
    ends once the mean held-out loss has risen twice in a row (weaker strengths only
    overfit more); the C not tried get infinite losses."""
    solver = _Softmax(C_GRID[0], tol=PATH_TOLERANCE)
    losses = np.full((len(C_GRID), len(held_labels)), np.inf)
    hits = np.zeros((len(C_GRID), len(held_labels)), dtype=bool)
    solvers = []
    for index, C in enumerate(C_GRID):
        solver.C = C
        solver.fit(train, train_labels)
        losses[index], hits[index] = _held_out_losses(solver, held_out, held_labels)
        solvers.append(copy.deepcopy(solver))
        means = losses[:index + 1].mean(axis=1)
        if stop_early and index >= 2 and means[-1] > means[-2] > means[-3]:
            break
    return losses, hits, solvers


def _strongest_within_one_error(losses):
    """The index of the strongest regularisation whose mean held-out loss is within one
    standard error of the lowest (the "one-standard-error rule"): as good as the best
    within the noise of the estimate, and with smaller weights, whose logits leave the
    fine-tuning that follows a gradient to learn from (a head fitted to zero training
    loss on a few dozen images leaves it none)."""
    means = losses.mean(axis=1)
    best = int(np.argmin(means))
    error = losses[best].std() / np.sqrt(losses.shape[1])
    return int(np.flatnonzero(means <= means[best] + error)[0])


def _folds(labels, seed):
    """(train rows, held-out rows) of each of up to FOLDS stratified folds: each class's
    samples, shuffled by ``seed``, dealt out in turn (continuing from where the previous
    class stopped, so the folds' sizes differ by one at most). A class with fewer samples
    than folds is missing from some folds' training rows; it is still used."""
    counts = np.bincount(labels)
    folds = max(2, min(FOLDS, int(counts[counts > 0].min())))
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for label in np.flatnonzero(counts):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold_of[rows] = (dealt + np.arange(len(rows))) % folds
        dealt += len(rows)
    return [(np.flatnonzero(fold_of != fold), np.flatnonzero(fold_of == fold))
            for fold in range(folds)]


def fit_linear_head(features, labels, classes, validation=None, seed=0):
    """Fit a multinomial logistic regression (``classes`` outputs) on ``features``
    (N, ...), flattened, to convergence, with its L2 strength chosen on held-out data
    (see the module notes). ``validation`` is (features, labels) or None; ``seed``
    shuffles the cross-validation folds. Returns a ``LinearHead`` whose weights act on
    the raw features, in float64. Classes absent from the data get a bias that keeps
    them from being predicted.
    """
    features, labels = _check(features, labels, classes)
    if len(np.unique(labels)) < 2:
        raise ValueError("labels: a classifier needs samples of at least 2 classes")
    if validation is not None:
        val_features, val_labels = _check(*validation, classes)
    mean, scale = _standardizer(features)
    standard = (features - mean) / scale
    with threadpool_limits(1, user_api="blas"):
        if validation is not None and len(val_labels) >= MIN_VALIDATION:
            losses, hits, solvers = _path(standard, labels, (val_features - mean) / scale,
                                          val_labels, stop_early=True)
            chosen = _strongest_within_one_error(losses)
            # Polished to the full tolerance from where the path left it.
            solver = solvers[chosen]
            solver.tol = TOLERANCE
            solver.fit(standard, labels)
            method = "validation"
        else:
            losses = np.zeros((len(C_GRID), len(labels)))
            hits = np.zeros((len(C_GRID), len(labels)), dtype=bool)
            for train_rows, test_rows in _folds(labels, seed):
                losses[:, test_rows], hits[:, test_rows], _ = _path(
                    standard[train_rows], labels[train_rows], standard[test_rows],
                    labels[test_rows])
            chosen = _strongest_within_one_error(losses)
            solver = _Softmax(C_GRID[chosen]).fit(standard, labels)
            method = "cross-validation"
    return _head(solver, classes, mean, scale, C_GRID[chosen], method,
                 float(losses[chosen].mean()), float(hits[chosen].mean()))


def _head(solver, classes, mean, scale, C, method, log_loss, accuracy):
    """The solver's coefficients as a head on the raw features, for every class."""
    coef, intercept = solver.coef_, solver.intercept_
    weight = np.zeros((classes, len(mean)))
    # A class with no samples gets a very low bias: never predicted, as it was never seen.
    bias = np.full(classes, -1e4)
    weight[solver.classes_] = coef / scale
    bias[solver.classes_] = intercept - weight[solver.classes_] @ mean
    return LinearHead(weight, bias, C, method, log_loss, accuracy)
