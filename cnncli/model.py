"""Sequential: a stack of layers that behaves like a list.

    model = Sequential(input_shape=(1, 28, 28), seed=0)
    model.add(Conv2D(32, 5, padding="same"))
    model.add(ReLU())
    model.add(MaxPool2D(2))
    model.add(Flatten())
    model.add(Dense(10))
    print(model.summary())

Each layer is built as it is added, for the output shape of the layer before
it, so shapes are checked at once and ``summary()`` knows every output shape.
``model[-1] = Dense(5)`` replaces the classifier head with a freshly
initialised layer; ``model[:4]`` is a feature extractor sharing the same
layers. Parameters are named ``<layer name>.<parameter>``.
"""

import re

import numpy as np

from cnncli.layers import LeakyReLU, Layer, ReLU

__all__ = ["Sequential"]


def _snake_case(name):
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower()


class Sequential:
    """Layers applied one after the other.

    Parameters
    ----------
    layers : iterable of Layer, optional
    input_shape : tuple of int, optional
        Shape of one input without the batch axis, e.g. (3, 227, 227). Layers
        are built as they are added once it is known.
    seed : int
        Seeds the initialisation of every layer (and dropout masks): the same
        seed gives the same model.
    dtype : numpy dtype
        float32 (default) or float64 (for gradient checks).
    """

    def __init__(self, layers=(), input_shape=None, seed=0, dtype=np.float32, name=None):
        self.name = name
        self.seed = int(seed)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.input_shape = None if input_shape is None else tuple(int(v) for v in input_shape)
        self._layers = []
        self._builds = 0
        # The layer the last add() built, while nothing has used it yet: a
        # ReLU added right after it may still switch it to He initialisation.
        self._fresh = None
        for layer in layers:
            self.add(layer)

    # -- list behaviour -------------------------------------------------------------
    def add(self, layer):
        """Append a layer, building it for the current output shape."""
        self._check_layer(layer)
        self._layers.append(layer)
        position = len(self._layers) - 1
        self._name_layer(position)
        fresh, self._fresh = self._fresh, None
        if not self._build_from(position):
            return
        if isinstance(layer, (ReLU, LeakyReLU)) and fresh is not None and fresh[0] is \
                self._layers[position - 1]:
            before, build_number = fresh
            before.build(before.input_shape, rng=np.random.default_rng([self.seed, build_number]),
                         dtype=self.dtype, init="he_normal")
        self._fresh = (layer, self._builds) if getattr(layer, "init", None) == "auto" else None

    def pop(self):
        """Remove and return the last layer."""
        if not self._layers:
            raise IndexError("pop from an empty Sequential")
        return self._layers.pop()

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            part = Sequential(seed=self.seed, dtype=self.dtype)
            part._layers = self._layers[index]
            part.input_shape = part._layers[0].input_shape if part._layers else None
            return part
        if isinstance(index, str):
            for layer in self._layers:
                if layer.name == index:
                    return layer
            raise KeyError(f"no layer named {index!r}; layers: {[l.name for l in self._layers]}")
        return self._layers[index]

    def __setitem__(self, index, layer):
        """Replace a layer: the new one is built fresh (seeded) for the same input."""
        self._check_layer(layer)
        position = range(len(self._layers))[index]
        previous = self._layers[position]
        if layer.name is None:
            layer.name = previous.name
        self._layers[position] = layer
        self._fresh = None
        try:
            self._build_from(position)
        except ValueError:
            self._layers[position] = previous
            raise

    @property
    def layers(self):
        return list(self._layers)

    # -- building -------------------------------------------------------------------
    def _check_layer(self, layer):
        if not isinstance(layer, Layer):
            raise ValueError(f"layer: expected a cnncli Layer, got {type(layer).__name__}")
        if any(layer is existing for existing in self._layers):
            raise ValueError(f"layer: {layer.describe()} is already in this model")

    def _name_layer(self, position):
        layer = self._layers[position]
        names = {other.name for other in self._layers if other is not layer}
        if layer.name is None:
            base = _snake_case(type(layer).__name__)
            count = 1
            while f"{base}_{count}" in names:
                count += 1
            layer.name = f"{base}_{count}"
        elif layer.name in names:
            raise ValueError(f"name: a layer named {layer.name!r} is already in this model")
        if "." in layer.name:
            raise ValueError(f"name: layer names may not contain '.', got {layer.name!r}")

    def _weight_init(self, position):
        """He initialisation for a layer a ReLU follows, Glorot otherwise."""
        following = self._layers[position + 1] if position + 1 < len(self._layers) else None
        return "he_normal" if isinstance(following, (ReLU, LeakyReLU)) else "glorot_uniform"

    def _build_from(self, position):
        """(Re)build the layer at `position`, then check the shapes after it still fit.

        Returns False when the model has no input shape yet (nothing built).
        """
        if self.input_shape is None:
            if not self._layers[0].built:
                return False
            self.input_shape = self._layers[0].input_shape
        shape = self.input_shape if position == 0 else self._layers[position - 1].output_shape
        layer = self._layers[position]
        self._builds += 1
        rng = np.random.default_rng([self.seed, self._builds])
        shape = layer.build(shape, rng=rng, dtype=self.dtype, init=self._weight_init(position))
        for later in self._layers[position + 1:]:
            if later.input_shape != shape:
                raise ValueError(f"{later.describe()}: built for input {later.input_shape}, but "
                                 f"the layer before it now outputs {shape}")
            shape = later.output_shape
        return True

    @property
    def output_shape(self):
        return self._layers[-1].output_shape if self._layers else self.input_shape

    # -- parameters -------------------------------------------------------------------
    def parameters(self, trainable_only=False):
        """All parameters by dotted name (``conv2d_1.weight``), in layer order."""
        return {f"{layer.name}.{key}": parameter
                for layer in self._layers for key, parameter in layer.parameters().items()
                if parameter.trainable or not trainable_only}

    def buffers(self):
        """Saved, untrained state by dotted name (``batch_norm2d_1.running_mean``)."""
        return {f"{layer.name}.{key}": buffer
                for layer in self._layers for key, buffer in layer.buffers().items()}

    def regularized(self):
        """(parameter, regularizer) pairs of every layer, nested blocks included."""
        return [pair for layer in self._layers for pair in layer.regularized()]

    def regularize(self):
        """Add the penalty gradients of trainable weights to their gradients; return the penalty.

        Frozen weights neither pay a penalty nor get its gradient.
        """
        penalty = 0.0
        for parameter, regularizer in self.regularized():
            if not parameter.trainable:
                continue
            penalty += regularizer.penalty(parameter.value)
            if parameter.grad is not None:
                parameter.grad = parameter.grad + regularizer.gradient(parameter.value)
        return penalty

    @property
    def weights(self):
        """The parameter arrays, in layer order (as Keras' ``model.weights``)."""
        return [parameter.value for parameter in self.parameters().values()]

    def count_parameters(self):
        """(trainable, frozen) numbers of scalar parameters."""
        trainable = frozen = 0
        for parameter in self.parameters().values():
            if parameter.trainable:
                trainable += parameter.size
            else:
                frozen += parameter.size
        return trainable, frozen

    def freeze(self, upto=None):
        """Freeze every layer, or the layers up to and including ``upto`` (a name or index)."""
        last = len(self._layers) - 1 if upto is None else self._position(upto)
        for layer in self._layers[:last + 1]:
            layer.freeze()

    def unfreeze(self):
        for layer in self._layers:
            layer.unfreeze()

    def _position(self, key):
        if isinstance(key, str):
            for position, layer in enumerate(self._layers):
                if layer.name == key:
                    return position
            raise KeyError(f"no layer named {key!r}; layers: {[l.name for l in self._layers]}")
        return range(len(self._layers))[key]

    # -- passes -------------------------------------------------------------------------
    def _ready(self):
        if not self._layers:
            raise RuntimeError("the model has no layers")
        if not self._layers[0].built:
            raise RuntimeError("the model has no input shape: pass input_shape=(C, H, W) to "
                               "Sequential, or build its first layer")

    def forward(self, x, training=False, need_input_grad=False):
        """Run the layers in order; with training=True, keep what backward needs.

        Layers below the lowest trainable one run in inference mode and keep
        nothing, since no gradient reaches them (a frozen backbone is
        deterministic), unless ``need_input_grad`` asks for the gradient with
        respect to the input (then pass it to ``backward`` too).
        """
        self._ready()
        self._fresh = None
        x = np.asarray(x)
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        lowest = self._lowest_needed(need_input_grad) if training else len(self._layers)
        for position, layer in enumerate(self._layers):
            x = layer.forward(x, training=training and position >= lowest)
        return x

    __call__ = forward

    def _lowest_needed(self, need_input_grad):
        """Index of the lowest layer a backward pass must reach."""
        if need_input_grad:
            return 0
        for position, layer in enumerate(self._layers):
            if layer.trainable:
                return position
        return len(self._layers)

    def backward(self, grad_output, need_input_grad=False):
        """Back-propagate from the output, filling ``Parameter.grad`` of trainable parameters.

        Without ``need_input_grad`` the pass stops at the lowest layer with a
        trainable parameter: nothing below it is computed, that layer computes
        no input gradient, and None is returned. With it, every layer is
        traversed and the gradient with respect to the input is returned.
        """
        lowest = self._lowest_needed(need_input_grad)
        grad = grad_output
        for position in range(len(self._layers) - 1, lowest - 1, -1):
            grad = self._layers[position].backward(
                grad, need_input_grad=need_input_grad or position > lowest)
        return grad if need_input_grad else None

    # -- training (Keras-style shortcuts to cnncli.training) -----------------------------
    def fit(self, x, y, epochs=1, batch_size=32, **options):
        """Train the model; see ``cnncli.training.fit``. Returns a History."""
        from cnncli import training
        return training.fit(self, x, y, epochs=epochs, batch_size=batch_size, **options)

    def evaluate(self, x, y, **options):
        """Loss and accuracy on (x, y); see ``cnncli.training.evaluate``."""
        from cnncli import training
        return training.evaluate(self, x, y, **options)

    def predict_proba(self, x, **options):
        from cnncli import training
        return training.predict_proba(self, x, **options)

    def predict(self, x, **options):
        from cnncli import training
        return training.predict(self, x, **options)

    # -- description ----------------------------------------------------------------------
    def summary(self):
        """The architecture as a table: layers, output shapes, parameter counts."""
        rows = [("Layer (type)", "Output shape", "Param #")]
        for layer in self._layers:
            count = sum(p.size for p in layer.parameters().values())
            state = "" if layer.trainable or not layer.parameters() else " (frozen)"
            shape = ("None",) + tuple(layer.output_shape) if layer.built else ("?",)
            rows.append((f"{layer.name} ({type(layer).__name__}){state}",
                         "(" + ", ".join(map(str, shape)) + ")", f"{count:,}"))
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        line = "-" * (sum(widths) + 6)
        lines = [f'Model: "{self.name or "sequential"}"', line]
        for index, row in enumerate(rows):
            lines.append(f"{row[0]:<{widths[0]}}   {row[1]:<{widths[1]}}   {row[2]:>{widths[2]}}")
            if index == 0:
                lines.append(line)
        trainable, frozen = self.count_parameters()
        lines += [line, f"Total params: {trainable + frozen:,}",
                  f"Trainable params: {trainable:,}", f"Non-trainable params: {frozen:,}"]
        return "\n".join(lines)

    def __repr__(self):
        inner = "".join(f"\n  ({layer.name}): {layer!r}" for layer in self._layers)
        return f"Sequential({inner}\n)" if inner else "Sequential()"
