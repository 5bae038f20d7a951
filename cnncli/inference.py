"""Inference plans: how a run of layers that no gradient reaches is computed, with
neighbouring pairs fused where that gives the same values for less work; and the
training pass, with the one fusion that also keeps the gradients exact.

    for step in inference_steps(layers):
        x = step(x)

The fusions, each exact:

- ReLU then max pooling runs as pooling then ReLU. ReLU is monotone, so it
  commutes with a maximum; applied after the pool, it touches a quarter of
  the values (for 2x2 pools).
- A convolution then a BatchNorm runs as one scaled convolution. In
  inference a BatchNorm is a per-channel affine map, which folds into the
  convolution's weights and bias: one pass over the output instead of two.
- A ReLU after a convolution (or after a convolution and its BatchNorm)
  runs inside the convolution, on each sample's output while it is in cache:
  no pass and no array of its own. A ReLU that a max pooling follows fuses
  with the pooling instead (it then touches a quarter of the values).

``Sequential.forward`` uses a plan for the layers below the lowest one a
backward pass must reach; each fused layer's kept state is cleared, as its
own inference forward would.

Above it, ``training_forward`` and ``training_backward`` run the layers in
training mode, a ReLU and the max pooling after it again as pooling then
ReLU: the pooled maximum is positive exactly when the window's first maximum
is, so both the values and the gradients (the window's first maximum gets
the output gradient where it is positive) are the same bits as unfused, and
ReLU's forward and backward touch a quarter of the values. A BatchNorm2D and
a ReLU after it (not fused with a pooling) run as one pass: the ReLU applied
to each value as the normalisation writes it, and in the backward its mask
applied as the normalisation's sums read the gradient (a ResNet block's
first normalisation: a pass over the activations less each way, and no
array for the ReLU's output). The same bits as the two layers apart.
"""

from functools import partial

from cnncli.layers import BatchNorm2D, Conv2D, Dropout, MaxPool2D, ReLU

__all__ = ["inference_steps", "KeptPlan", "FUSIONS", "training_forward", "training_backward"]

# A step is a module-level function with its layers bound by functools.partial, not a
# closure: a model that keeps its plan can then be deep-copied, the copy's plan bound to
# the copy's layers.


def _relu_then_max_pool(relu, pool, x):
    relu.clear_cache()
    return relu.function(pool.forward(x))


def _convolution_then_batchnorm(convolution, batchnorm, x):
    batchnorm.clear_cache()
    return convolution.forward_fused(x, *batchnorm.inference_affine())


def _convolution_then_relu(convolution, relu, x):
    relu.clear_cache()
    return convolution.forward_fused(x, relu=True)


def _convolution_batchnorm_relu(convolution, batchnorm, relu, x):
    batchnorm.clear_cache()
    relu.clear_cache()
    return convolution.forward_fused(x, *batchnorm.inference_affine(), relu=True)


# (exact layer types of the run, the fused step), longest runs first: subclasses may
# change the arithmetic, so they are not fused. A run ending in a ReLU is not fused
# where a max pooling follows it: the ReLU fuses with the pooling instead.
FUSIONS = {(Conv2D, BatchNorm2D, ReLU): _convolution_batchnorm_relu,
           (ReLU, MaxPool2D): _relu_then_max_pool,
           (Conv2D, BatchNorm2D): _convolution_then_batchnorm,
           (Conv2D, ReLU): _convolution_then_relu}


def _single(layer, x):
    return layer.forward(x)


def _dropping(dropout, x):
    """A Dropout that drops (training) but keeps nothing: no gradient comes back to it."""
    out = dropout.forward(x, training=True)
    dropout.clear_cache()
    return out


def _fusion_at(layers, position):
    """The longest run of FUSIONS starting at ``position``, as (layers, fuse), or None.
    A convolution with an activation of its own fuses with nothing."""
    for length in (3, 2):
        run = tuple(layers[position:position + length])
        fuse = FUSIONS.get(tuple(type(layer) for layer in run))
        if fuse is None or len(run) < length or getattr(run[0], "activation", None):
            continue
        after = layers[position + length] if position + length < len(layers) else None
        if type(run[-1]) is ReLU and type(after) is MaxPool2D:
            continue
        return run, fuse
    return None


def inference_steps(layers, dropping=False):
    """Functions ``x -> y`` that together run ``layers`` in inference mode, in order.

    With ``dropping`` (the frozen layers below the trainable ones, in a training
    pass) Dropout layers still drop: what the trainable layers learn from must be
    the dropped-out activations, wherever the Dropout sits below them.
    """
    steps = []
    position = 0
    while position < len(layers):
        if dropping and isinstance(layers[position], Dropout):
            steps.append(partial(_dropping, layers[position]))
            position += 1
            continue
        found = _fusion_at(layers, position)
        if found is not None:
            run, fuse = found
            steps.append(partial(fuse, *run))
            position += len(run)
        else:
            steps.append(partial(_single, layers[position]))
            position += 1
    return steps


class KeptPlan:
    """``inference_steps`` of a run of layers, worked out again only when the layers (or
    their activations) change: a Sequential keeps one, since working the fusions out
    cost 16 us a call, a tenth of LeNet's first convolution at batch 1. The key holds the
    layers themselves, so a deep copy of the model keeps a plan of its own layers."""

    def __init__(self):
        self._key, self._steps = None, None

    def steps(self, layers, dropping=False):
        key = (tuple((layer, getattr(layer, "activation", None)) for layer in layers),
               dropping)
        if self._key != key:
            self._key, self._steps = key, inference_steps(layers, dropping=dropping)
        return self._steps


def _pooled_relu_pairs(layers):
    """Positions p where layers[p] is a ReLU and layers[p + 1] a MaxPool2D (exact types)."""
    return {position for position in range(len(layers) - 1)
            if type(layers[position]) is ReLU and type(layers[position + 1]) is MaxPool2D}


def _normalised_relu_pairs(layers, pooled):
    """Positions p where layers[p] is a BatchNorm2D and layers[p + 1] a ReLU (exact types)
    that does not fuse with a max pooling (``pooled``)."""
    return {position for position in range(len(layers) - 1)
            if type(layers[position]) is BatchNorm2D and type(layers[position + 1]) is ReLU
            and position + 1 not in pooled}


def training_forward(layers, x):
    """Run ``layers`` in training mode, each keeping what its backward needs."""
    fused = _pooled_relu_pairs(layers)
    normalised = _normalised_relu_pairs(layers, fused)
    position = 0
    while position < len(layers):
        if position in fused:
            relu, pool = layers[position], layers[position + 1]
            x = relu.forward_any_shape(pool.forward(x, training=True), training=True)
            position += 2
        elif position in normalised:
            # One pass: the BatchNorm keeps the ReLU's output, its backward's mask.
            layers[position + 1].clear_cache()
            x = layers[position].forward_then_relu(x)
            position += 2
        else:
            x = layers[position].forward(x, training=True)
            position += 1
    return x


def training_backward(layers, grad, need_input_grad):
    """Back-propagate through ``layers`` after ``training_forward``; the lowest computes
    its input gradient only if ``need_input_grad``."""
    fused = _pooled_relu_pairs(layers)
    normalised = _normalised_relu_pairs(layers, fused)
    position = len(layers) - 1
    while position >= 0:
        if position - 1 in normalised:
            # The BatchNorm's backward takes the ReLU's output gradient.
            position -= 1
            grad = layers[position].backward(grad, need_input_grad=need_input_grad
                                             or position > 0)
        elif position - 1 in fused:
            # ReLU ran last, so its backward runs first; the pooling takes the pair's input.
            grad = layers[position - 1].backward(grad)
            position -= 1
            grad = layers[position + 1].backward(grad, need_input_grad=need_input_grad
                                                 or position > 0)
        else:
            grad = layers[position].backward(grad, need_input_grad=need_input_grad
                                             or position > 0)
        position -= 1
    return grad
