"""What ships with cnncli: the pretrained models (``models/``, installed as ``cnncli.zoo``)
and the small datasets (``data/``, installed as ``cnncli.sample_data``), found by name
from any folder."""

import os

__all__ = ["zoo_folder", "zoo_models", "shipped_datasets"]


def zoo_folder():
    """The folder of the shipped pretrained models (installed with the package)."""
    from importlib import resources
    try:
        return str(resources.files("cnncli.zoo"))
    except ModuleNotFoundError:
        return None


def zoo_models():
    """[(name, path, card text)] of the shipped pretrained models."""
    folder = zoo_folder()
    if folder is None or not os.path.isdir(folder):
        return []
    found = []
    for entry in sorted(os.listdir(folder)):
        if entry.endswith(".cnn"):
            name = entry[:-4]
            card = os.path.join(folder, name + ".md")
            text = open(card, encoding="utf-8").read() if os.path.exists(card) else ""
            found.append((name, os.path.join(folder, entry), text))
    return found


def shipped_datasets():
    """{name: folder} of the image-folder datasets installed with cnncli (data/)."""
    from importlib import resources
    try:
        root = str(resources.files("cnncli.sample_data"))
    except ModuleNotFoundError:
        return {}
    if not os.path.isdir(root):
        return {}
    return {name: os.path.join(root, name) for name in sorted(os.listdir(root))
            if not name.startswith((".", "_")) and os.path.isdir(os.path.join(root, name))}
