"""Losses: each call returns the mean loss over the batch and its gradient.

    loss, grad = SoftmaxCrossEntropy()(logits, labels)
    model.backward(grad)

Fusing the value and the gradient keeps the arithmetic stable (softmax and
log never meet as separate steps) and saves a pass.
"""

import numpy as np

from cnncli import functional as F

__all__ = ["SoftmaxCrossEntropy", "BinaryCrossEntropy", "MeanSquaredError"]


def _outputs(outputs, ndim_name):
    outputs = np.asarray(outputs)
    if outputs.dtype not in (np.float32, np.float64):
        raise ValueError(f"outputs: expected dtype float32 or float64, got {outputs.dtype}")
    if outputs.ndim != 2:
        raise ValueError(f"outputs: expected a 2-D array {ndim_name}, got shape {outputs.shape}")
    if outputs.shape[0] == 0:
        raise ValueError("outputs: expected at least one sample, got an empty batch")
    return outputs


class SoftmaxCrossEntropy:
    """Cross-entropy of softmax(logits) against integer class labels.

    ``loss = mean_n(logsumexp(z_n) - z_n[y_n])``, computed with the maximum
    subtracted so any finite logits work; the gradient is
    ``(softmax(z) - onehot(y)) / N``.

    With ``from_logits=False`` the outputs are already probabilities (a model
    ending in a softmax): ``loss = mean_n(-log p_n[y_n])``, with p clipped to
    [eps, 1], and the gradient ``-onehot(y) / p / N`` (zero where clipped),
    which the softmax's own backward turns into ``(p - onehot(y)) / N``.
    """

    def __init__(self, from_logits=True, eps=1e-7):
        if not isinstance(from_logits, (bool, np.bool_)):
            raise ValueError(f"from_logits: expected True or False, got {from_logits!r}")
        self.from_logits = bool(from_logits)
        self.eps = float(eps)

    def __call__(self, logits, labels):
        logits = _outputs(logits, "(N, classes) of logits" if self.from_logits else
                          "(N, classes) of probabilities")
        labels = np.asarray(labels)
        count, classes = logits.shape
        if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: expected {count} integer class indices, got "
                             f"{labels.dtype} array of shape {labels.shape}")
        bad = (labels < 0) | (labels >= classes)
        if bad.any():
            raise ValueError(f"labels: expected values in [0, {classes}), got "
                             f"{labels[bad][:5].tolist()}")
        if not self.from_logits:
            return self._of_probabilities(logits, labels)
        shifted = logits - logits.max(axis=1, keepdims=True)
        exponentials = np.exp(shifted)
        totals = exponentials.sum(axis=1, keepdims=True)
        rows = np.arange(count)
        loss = float(np.mean(np.log(totals[:, 0]) - shifted[rows, labels]))
        grad = exponentials / totals
        grad[rows, labels] -= 1
        grad /= count
        return loss, grad

    def _of_probabilities(self, probabilities, labels):
        count = len(labels)
        rows = np.arange(count)
        picked = probabilities[rows, labels]
        clipped = np.clip(picked, self.eps, 1.0)
        grad = np.zeros_like(probabilities)
        grad[rows, labels] = np.where(picked < self.eps, 0.0, -1.0 / clipped) / count
        return float(np.mean(-np.log(clipped))), grad


class BinaryCrossEntropy:
    """Binary cross-entropy for targets in [0, 1], one column per independent output.

    With ``from_logits=True`` (the default, and the stable choice) the outputs
    are logits z and ``loss = max(z, 0) - z*t + log(1 + exp(-|z|))``, whose
    gradient is ``(sigmoid(z) - t) / size``. With ``from_logits=False`` the
    outputs are probabilities, clipped to [eps, 1 - eps].
    """

    def __init__(self, from_logits=True, eps=1e-7):
        self.from_logits = bool(from_logits)
        self.eps = float(eps)

    def __call__(self, outputs, targets):
        outputs = _outputs(outputs, "(N, outputs)")
        targets = np.asarray(targets, dtype=outputs.dtype)
        if targets.shape != outputs.shape:
            raise ValueError(f"targets: expected shape {outputs.shape}, got {targets.shape}")
        if targets.size and (targets.min() < 0 or targets.max() > 1):
            raise ValueError(f"targets: expected values in [0, 1], got range "
                             f"[{targets.min()}, {targets.max()}]")
        size = outputs.size
        if self.from_logits:
            loss = np.maximum(outputs, 0) - outputs * targets + np.log1p(np.exp(-np.abs(outputs)))
            return float(loss.mean()), (F.sigmoid(outputs) - targets) / size
        p = np.clip(outputs, self.eps, 1 - self.eps)
        loss = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
        grad = (p - targets) / (p * (1 - p)) / size
        # Where the clip is active the loss no longer depends on the output.
        grad[(outputs < self.eps) | (outputs > 1 - self.eps)] = 0
        return float(loss.mean()), grad.astype(outputs.dtype)


class MeanSquaredError:
    """``mean((outputs - targets)**2)``; gradient ``2 * (outputs - targets) / size``."""

    def __call__(self, outputs, targets):
        outputs = np.asarray(outputs)
        if outputs.dtype not in (np.float32, np.float64):
            raise ValueError(f"outputs: expected dtype float32 or float64, got {outputs.dtype}")
        targets = np.asarray(targets, dtype=outputs.dtype)
        if targets.shape != outputs.shape:
            raise ValueError(f"targets: expected shape {outputs.shape}, got {targets.shape}")
        if outputs.size == 0:
            raise ValueError("outputs: expected at least one value, got an empty array")
        difference = outputs - targets
        return float(np.mean(difference * difference)), 2 * difference / outputs.size
