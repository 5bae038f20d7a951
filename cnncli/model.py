"""Sequential: a stack of layers that behaves like a list.

    model = Sequential(input_shape=(1, 28, 28), seed=0)
    model.add(Conv2D(32, 5, padding="same"))
    model.add(ReLU())
    model.add(MaxPool2D(2))
    model.add(Flatten())
    model.add(Dense(10))
    model.summary()

Each layer is built as it is added, for the output shape of the layer before
it, so shapes are checked at once and ``summary()`` knows every output shape.
``model[-1] = Dense(5)`` replaces the classifier head with a freshly
initialised layer; ``model[:4]`` is a feature extractor sharing the same
layers. Parameters are named ``<layer name>.<parameter>``.
"""

import math
import re

import numpy as np

from cnncli.inference import KeptPlan, training_backward, training_forward
from cnncli.layers import LeakyReLU, Layer, ReLU
from cnncli.state import IncompatibleWeightsError, LoadReport, load_state

__all__ = ["Sequential", "plan", "LoadReport", "IncompatibleWeightsError"]

# Values per sample any layer may take or produce: the kernels index with 32-bit ints.
MAX_ELEMENTS = 2**31 - 1


def _snake_case(name):
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower()


def name_layer(layer, taken):
    """Give ``layer`` a name not in ``taken`` (``conv2d_1``, ``conv2d_2``...) unless it has one."""
    if layer.name is None:
        base = _snake_case(type(layer).__name__)
        count = 1
        while f"{base}_{count}" in taken:
            count += 1
        layer.name = f"{base}_{count}"
    elif not isinstance(layer.name, str) or not layer.name:
        raise ValueError(f"name: expected a non-empty string, got {layer.name!r}")
    elif layer.name in taken:
        raise ValueError(f"name: a layer named {layer.name!r} is already in this model")
    if "." in layer.name:
        raise ValueError(f"name: layer names may not contain '.', got {layer.name!r}")


def plan(layers, input_shape, max_values=MAX_ELEMENTS):
    """Names, state shapes and output shape of ``layers`` applied to ``input_shape``.

    Nothing is built or allocated: returns ``({dotted name: shape}, output_shape)``
    for the parameters and buffers a model of these layers would create, so a
    model file can be checked against its architecture before loading it.
    Unnamed layers get the names ``Sequential`` would give them. A layer whose
    output has more than ``max_values`` values per sample raises ValueError.
    """
    taken = set()
    expected = {}
    shape = tuple(input_shape)
    for layer in layers:
        name_layer(layer, taken)
        taken.add(layer.name)
        output_shape = tuple(layer.compute_output_shape(shape))
        if math.prod(output_shape) > max_values:
            raise ValueError(f"{layer.describe()}: outputs {output_shape} per sample, more than "
                             f"the limit of {max_values:,} values")
        for key, state_shape in layer.state_shapes(shape).items():
            expected[f"{layer.name}.{key}"] = tuple(state_shape)
        shape = output_shape
    return expected, shape


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

    Attributes saved with the model besides its layers and weights:
    ``classes`` (a name per output, or None), ``preprocessing`` (a
    ``cnncli.preprocessing.Preprocessing``, or None) and ``provenance`` (a dict
    saying how the model was made: dataset, command, seed, accuracy...).
    """

    def __init__(self, layers=(), input_shape=None, seed=0, dtype=np.float32, name=None):
        self.name = name
        self.classes = None
        self.preprocessing = None
        self.provenance = {}
        self.seed = int(seed)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.input_shape = None if input_shape is None else tuple(int(v) for v in input_shape)
        self._layers = []
        self._builds = 0
        self._plan = KeptPlan()
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
        self._fresh = None
        return self._layers.pop()

    def insert(self, index, layer):
        """Insert a layer before position ``index`` (as ``list.insert``), built fresh for
        the output of the layer before it; the layers after it must take its output, as
        for assignment, or nothing changes."""
        self._check_layer(layer)
        position = max(0, min(index + len(self._layers) if index < 0 else index,
                              len(self._layers)))
        self._layers.insert(position, layer)
        self._fresh = None
        try:
            self._name_layer(position)
            self._build_from(position)
        except ValueError:
            del self._layers[position]
            raise

    def __delitem__(self, index):
        """Remove the layer at ``index`` (``del model[2]``). The layers after it must take
        what now comes before them: a layer with weights that no longer fits is refused
        (nothing changes); layers without state follow the new shape."""
        if isinstance(index, slice):
            raise TypeError("del model[index]: give one position; remove layers one by one")
        position = range(len(self._layers))[index]
        removed = self._layers.pop(position)
        self._fresh = None
        if self.input_shape is None or position == len(self._layers):
            return
        try:
            for later, later_input in self._followers(position, self._input_at(position)):
                self._build(later, later_input, None)
        except ValueError:
            self._layers.insert(position, removed)
            raise

    def get_layer(self, name=None, index=None):
        """A layer by name or by position, as Keras' ``get_layer``."""
        if (name is None) == (index is None):
            raise ValueError("get_layer: give a name or an index, not both or neither")
        return self[name] if name is not None else self._layers[index]

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

    def named_layers(self, prefix=""):
        """(dotted name, layer) of every layer, the layers inside blocks included, in order:
        ``layer1_0``, then ``layer1_0.body.conv1``... The one walk over a model's tree."""
        for layer in self._layers:
            name = prefix + layer.name
            yield name, layer
            for branch, inner in layer.children():
                yield from inner.named_layers(f"{name}.{branch}.")

    def forward_layer_by_layer(self, x, visit, prefix=""):
        """Inference with every layer run on its own, blocks entered and nothing fused,
        calling ``visit(dotted name, layer, output)`` after each layer; returns the output.

        The same values as ``forward`` (which fuses some pairs for speed), with every
        layer's own output seen: what pictures of feature maps need.
        """
        for layer in self._layers:
            name = prefix + layer.name
            if layer.children():
                x = layer.forward_layer_by_layer(x, visit, name + ".")
            else:
                x = layer.forward(x)
            visit(name, layer, x)
        return x

    # -- building -------------------------------------------------------------------
    def _check_layer(self, layer):
        if not isinstance(layer, Layer):
            raise ValueError(f"layer: expected a cnncli Layer, got {type(layer).__name__}")
        if any(layer is existing for existing in self._layers):
            raise ValueError(f"layer: {layer.describe()} is already in this model")

    def _name_layer(self, position):
        layer = self._layers[position]
        name_layer(layer, {other.name for other in self._layers if other is not layer})

    def _weight_init(self, position):
        """He initialisation for a layer a ReLU follows, Glorot otherwise."""
        following = self._layers[position + 1] if position + 1 < len(self._layers) else None
        return "he_normal" if isinstance(following, (ReLU, LeakyReLU)) else "glorot_uniform"

    def _build_from(self, position):
        """(Re)build the layer at `position`, then check the shapes after it still fit.

        Returns False when the model has no input shape yet (nothing built).
        """
        first = self._layers[0]
        requested = first.requested_input_shape
        if self.input_shape is not None and requested is not None \
                and requested != self.input_shape:
            raise ValueError(f"input_shape: the model has {self.input_shape}, its first layer "
                             f"{first.describe()} asks for {requested}")
        if self.input_shape is None:
            if requested is not None:
                self.input_shape = requested
            elif not first.built:
                return False
            else:
                self.input_shape = first.input_shape
        input_shape = self._input_at(position)
        layer = self._layers[position]
        # Check the layers after it first, so that a refused change leaves the
        # model as it was.
        follow = self._followers(position + 1, tuple(layer.compute_output_shape(input_shape)))
        self._build(layer, input_shape, self._weight_init(position))
        for later, later_input in follow:
            self._build(later, later_input, None)
        return True

    def build(self, input_shape):
        """Build every layer for inputs of ``input_shape`` (one sample: no batch axis), as
        Keras' ``model.build``. A model without an input shape builds itself this way on
        its first call, ``model(x)``."""
        if self.input_shape is not None:
            raise ValueError(f"build: the model is already built for inputs {self.input_shape}")
        shape = tuple(int(v) for v in input_shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"input_shape: expected positive sizes, got {input_shape!r}")
        self.input_shape = shape
        try:
            for position, layer in enumerate(self._layers):
                self._build(layer, self._input_at(position), self._weight_init(position))
        except ValueError:
            self.input_shape = None
            raise

    def _input_at(self, position):
        return self.input_shape if position == 0 else self._layers[position - 1].output_shape

    def _followers(self, position, shape):
        """(layer, new input shape) of the layers from ``position`` on that must be rebuilt
        when the layer before them outputs ``shape``. Layers without state (a Softmax or
        Dropout after a replaced head) follow the new shape; a layer with weights or
        buffers that no longer fits raises ValueError."""
        follow = []
        for later in self._layers[position:]:
            if later.input_shape == shape:
                break
            if later.parameters() or later.buffers():
                raise ValueError(f"{later.describe()}: built for input {later.input_shape}, but "
                                 f"the layer before it now outputs {shape}")
            follow.append((later, shape))
            shape = tuple(later.compute_output_shape(shape))
        return follow

    def _build(self, layer, input_shape, init):
        """Build ``layer`` with the next seeded generator of this model."""
        self._builds += 1
        rng = np.random.default_rng([self.seed, self._builds])
        return layer.build(input_shape, rng=rng, dtype=self.dtype, init=init)

    @property
    def output_shape(self):
        return self._layers[-1].output_shape if self._layers else self.input_shape

    # -- parameters -------------------------------------------------------------------
    def named_parameters(self, trainable_only=False):
        """(dotted name, Parameter) pairs of every parameter (``conv2d_1.weight``), in layer
        order, as PyTorch's ``named_parameters``: ``dict(model.named_parameters())`` maps
        names to parameters. Optimizers take it as it is and keep their state by name."""
        return [(f"{layer.name}.{key}", parameter)
                for layer in self._layers for key, parameter in layer.parameters().items()
                if parameter.trainable or not trainable_only]

    def parameters(self, trainable_only=False):
        """Every Parameter, in layer order (``named_parameters`` gives their names)."""
        return [parameter for _, parameter in self.named_parameters(trainable_only)]

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

    def state_dict(self):
        """Copies of every parameter and buffer by dotted name, layer by layer: what a model
        file holds."""
        return {name: array.copy() for name, array in self.state_arrays().items()}

    def state_arrays(self):
        """{dotted name: the model's own array} of every parameter and buffer (no copies)."""
        arrays = {}
        for layer in self._layers:
            arrays.update({f"{layer.name}.{key}": parameter.value
                           for key, parameter in layer.parameters().items()})
            arrays.update({f"{layer.name}.{key}": buffer
                           for key, buffer in layer.buffers().items()})
        return arrays

    @property
    def head(self):
        """The last layer with parameters: the classifier that transfer learning replaces."""
        for layer in reversed(self._layers):
            if layer.parameters():
                return layer
        return None

    def load_state_dict(self, state, strict=True, allow_backbone_mismatch=False):
        """Copy arrays from ``state`` (dotted name -> array) into the model's parameters and buffers.

        Strict (the default): every name must be present on both sides with
        the same shape, or nothing is loaded and ``IncompatibleWeightsError``
        names the missing, unexpected and mis-shaped tensors.

        ``strict=False`` loads every tensor whose name and shape match and
        reports the rest. Mismatches are expected in the head (the last layer
        with parameters, here and in ``state``), which a new task replaces;
        anywhere else they mean the wrong model or architecture, so they are
        refused unless ``allow_backbone_mismatch=True``.

        Float arrays are converted to the model's dtype. Returns a LoadReport.
        """
        return load_state(self, state, strict, allow_backbone_mismatch)

    def load_weights(self, path, strict=True, allow_backbone_mismatch=False):
        """Load the weights of a model file (or any safetensors file) by name; see load_state_dict.

        Only the tensors are used: the file's architecture does not need to
        match, only the names and shapes. Returns a LoadReport.
        """
        from cnncli.modelfile import read_tensors
        return self.load_state_dict(read_tensors(path), strict=strict,
                                    allow_backbone_mismatch=allow_backbone_mismatch)

    def save(self, path, overwrite=True, provenance=None):
        """Write the model (architecture, weights, classes, preprocessing, provenance) atomically.

        ``provenance`` adds entries to ``self.provenance`` in the file.
        """
        from cnncli.modelfile import save_model
        save_model(self, path, overwrite=overwrite, provenance=provenance)

    @property
    def weights(self):
        """The parameter arrays, in layer order (as Keras' ``model.weights``)."""
        return [parameter.value for parameter in self.parameters()]

    def count_parameters(self):
        """(trainable, frozen) numbers of scalar parameters."""
        trainable = frozen = 0
        for parameter in self.parameters():
            if parameter.trainable:
                trainable += parameter.size
            else:
                frozen += parameter.size
        return trainable, frozen

    def freeze(self, *layers, upto=None):
        """Freeze layers: those given (names, indices or Layer objects), the layers up to and
        including ``upto``, or, with neither, every layer.

        Frozen parameters get no gradient and no optimizer update; a frozen
        BatchNorm uses its running statistics and keeps them.
        """
        for layer in self._select(layers, upto):
            layer.freeze()

    def unfreeze(self, *layers, upto=None):
        """Unfreeze the layers given, those up to ``upto``, or every layer."""
        for layer in self._select(layers, upto):
            layer.unfreeze()

    def _select(self, layers, upto):
        if layers and upto is not None:
            raise ValueError("freeze: give layers or upto=, not both")
        if upto is not None:
            return self._layers[:self.index(upto) + 1]
        if not layers:
            return list(self._layers)
        return [self._layers[self.index(key)] for key in layers]

    def index(self, key):
        """The position of a layer, given the layer, its name or a position (as
        ``list.index``); KeyError naming the model's layers otherwise."""
        if isinstance(key, Layer):
            for position, layer in enumerate(self._layers):
                if layer is key:
                    return position
            raise KeyError(f"{key.describe()} is not a layer of this model")
        if isinstance(key, str):
            for position, layer in enumerate(self._layers):
                if layer.name == key:
                    return position
            raise KeyError(f"no layer named {key!r}; layers: {[l.name for l in self._layers]}")
        return range(len(self._layers))[key]

    # -- passes -------------------------------------------------------------------------
    def _ready(self, x=None):
        if not self._layers:
            raise RuntimeError("the model has no layers")
        if self.input_shape is None and x is not None and np.ndim(x) >= 2 \
                and not self._layers[0].built:
            self.build(np.shape(x)[1:])
        if not self._layers[0].built:
            raise RuntimeError("the model has no input shape: pass input_shape=(C, H, W) to "
                               "Sequential, or build its first layer")

    def forward(self, x, training=False, need_input_grad=False):
        """Run the layers in order; with training=True, keep what backward needs.

        Layers below the lowest trainable one run in inference mode, as an
        inference plan that fuses some pairs (``cnncli.inference``; the layers
        above fuse a ReLU with the max pooling after it, exactly), and keep
        nothing, since no gradient reaches them; a Dropout among them still
        drops (it shapes what the trainable layers learn from). ``need_input_grad``
        asks for the gradient with respect to the input instead (then pass it to
        ``backward`` too): every layer then runs in training mode.
        """
        self._ready(x)
        self._fresh = None
        x = np.asarray(x, dtype=self.dtype)
        lowest = self._lowest_needed(need_input_grad) if training else len(self._layers)
        for step in self._plan.steps(self._layers[:lowest], dropping=training):
            x = step(x)
        return training_forward(self._layers[lowest:], x) if training else x

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
        grad = training_backward(self._layers[lowest:], grad_output, need_input_grad)
        return grad if need_input_grad else None

    # -- training (Keras-style shortcuts to cnncli.training) -----------------------------
    def fit(self, x, y, epochs=1, batch_size=32, verbose="auto", **options):
        """Train the model; see ``cnncli.training.fit`` (``validation_split``,
        ``validation_data``, callbacks...). ``verbose`` as Keras: 0 silent, 1 (the
        default, "auto") a progress line, 2 one line per epoch. Returns a History."""
        from cnncli import training
        return training.fit(self, x, y, epochs=epochs, batch_size=batch_size,
                            verbose=1 if verbose == "auto" else verbose, **options)

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

    def extract_features(self, x, upto=None, batch_size=256):
        """Outputs of the layers up to and including ``upto``, flattened to (N, features).

        ``upto`` is a layer name or index; by default everything below the
        head (the last layer with parameters), so the result is the
        representation a new classifier (or a scikit-learn estimator) learns
        from. Runs in inference mode, in batches.
        """
        from cnncli import training
        features = training.predict_outputs(self.feature_part(upto), x, batch_size=batch_size)
        return features.reshape(len(features), -1)

    def feature_part(self, upto=None):
        """The layers up to and including ``upto`` (a name or index; by default everything
        below the head), as a model sharing them: what ``extract_features`` runs."""
        if upto is None:
            if self.head is None:
                raise ValueError("upto: the model has no layer with parameters; name the layer "
                                 "to cut at")
            last = self.index(self.head) - 1
        else:
            last = self.index(upto)
        if last < 0:
            raise ValueError("upto: the head is the first layer; nothing comes before it")
        return self[:last + 1]

    # -- description ----------------------------------------------------------------------
    def summary(self, print_fn=print):
        """Print the architecture as Keras does: layers, output shapes, parameter counts
        (trainable and not) and their size; returns the same text, for programs.
        ``print_fn`` receives each line (None: print nothing, only return the text)."""
        from cnncli.summary import summary_text
        text = summary_text(self)
        if print_fn is not None:
            for line in text.splitlines():
                print_fn(line)
        return text

    def __repr__(self):
        inner = "".join(f"\n  ({layer.name}): {layer!r}" for layer in self._layers)
        return f"Sequential({inner}\n)" if inner else "Sequential()"
