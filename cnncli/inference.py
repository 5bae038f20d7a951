"""Inference plans: how a run of layers that no gradient reaches is computed, with
neighbouring pairs fused where that gives the same values for less work.

    for step in inference_steps(layers):
        x = step(x)

The fusions, each exact:

- ReLU then max pooling runs as pooling then ReLU. ReLU is monotone, so it
  commutes with a maximum; applied after the pool, it touches a quarter of
  the values (for 2x2 pools).
- A convolution then a BatchNorm runs as one scaled convolution. In
  inference a BatchNorm is a per-channel affine map, which folds into the
  convolution's weights and bias: one pass over the output instead of two.

``Sequential.forward`` uses a plan for the layers below the lowest one a
backward pass must reach; each fused layer's kept state is cleared, as its
own inference forward would.
"""

from cnncli.layers import BatchNorm2D, Conv2D, MaxPool2D, ReLU

__all__ = ["inference_steps", "FUSIONS"]


def _relu_then_max_pool(relu, pool):
    def step(x):
        relu.clear_cache()
        return relu.function(pool.forward(x))
    return step


def _convolution_then_batchnorm(convolution, batchnorm):
    def step(x):
        batchnorm.clear_cache()
        return convolution.forward_scaled(x, *batchnorm.inference_affine())
    return step


# (exact layer types of the pair, the fused step): subclasses may change the
# arithmetic, so they are not fused.
FUSIONS = {(ReLU, MaxPool2D): _relu_then_max_pool,
           (Conv2D, BatchNorm2D): _convolution_then_batchnorm}


def _single(layer):
    return lambda x: layer.forward(x)


def inference_steps(layers):
    """Functions ``x -> y`` that together run ``layers`` in inference mode, in order."""
    steps = []
    position = 0
    while position < len(layers):
        pair = tuple(layers[position:position + 2])
        fuse = FUSIONS.get(tuple(type(layer) for layer in pair))
        if fuse is not None and len(pair) == 2:
            steps.append(fuse(*pair))
            position += 2
        else:
            steps.append(_single(layers[position]))
            position += 1
    return steps
