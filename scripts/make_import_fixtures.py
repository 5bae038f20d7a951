"""Make the fixtures of the import tests: narrow torchvision-layout ResNets with random
weights, saved by PyTorch both ways, and PyTorch's outputs for fixed inputs.

    python scripts/make_import_fixtures.py [--out tests/fixtures/torchvision]

Needs torch and safetensors (run once; the tests read the files without
torch). Each model is torchvision's architecture (scripts/torch_resnet.py)
at a reduced width so the files stay small, with random BatchNorm
statistics so every term of inference is exercised. Writes, per model,
``<name>.pt`` (torch.save of the state dict), ``<name>.safetensors``, and
``expected.npz`` with the inputs and PyTorch's eval-mode outputs.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_resnet import ResNet, randomize_batchnorm  # noqa: E402

MODELS = {"resnet18_w8": (18, 8), "resnet50_w4": (50, 4)}
CLASSES = 10
INPUT_SHAPE = (3, 64, 64)
SEED = 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join("tests", "fixtures", "torchvision"))
    folder = parser.parse_args().out
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.randn((2,) + INPUT_SHAPE, generator=generator)
    expected = {"inputs": inputs.numpy()}
    for name, (depth, width) in MODELS.items():
        model = ResNet(depth, classes=CLASSES, width=width)
        with torch.no_grad():
            randomize_batchnorm(model, generator)
        model.eval()
        state = model.state_dict()
        torch.save(state, os.path.join(folder, f"{name}.pt"))
        save_file({key: value.contiguous() for key, value in state.items()},
                  os.path.join(folder, f"{name}.safetensors"))
        with torch.no_grad():
            expected[name] = model(inputs).numpy()
    np.savez(os.path.join(folder, "expected.npz"), **expected)
    with open(os.path.join(folder, "made-with.json"), "w") as handle:
        json.dump({"torch": torch.__version__, "seed": SEED, "models": MODELS,
                   "classes": CLASSES, "input_shape": INPUT_SHAPE}, handle, indent=2)
        handle.write("\n")
    print(f"wrote {', '.join(MODELS)} to {folder}")


if __name__ == "__main__":
    main()
