"""The corpus of hostile and broken inputs, made at test time (some are large).

Each maker writes its file (or folder) under ``folder`` and returns the path.
They reproduce what an attacker or an unlucky user hands the tool: a
PostScript program under an image name, pickles that nest 200,000 deep,
small files that declare gigabytes, FIFOs, names that are not text, and
terminal escape sequences in class names.
"""

import json
import os
import struct
import zipfile

import numpy as np
from PIL import Image

from cnncli.layers import Dense, GlobalAvgPool2D
from cnncli.model import Sequential
from cnncli.modelfile import save_model, serialize
from cnncli.preprocessing import Preprocessing
from torch_archive import (EMPTY_TUPLE, PROTO2, STOP, global_, state_dict_pickle, tensor,
                           text, write_archive)

# A PostScript program: Ghostscript, were it given this file, would write a
# file and then loop forever.
EPS_BODY = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
            b"(/tmp/cnncli-eps-ran) (w) file closefile\n{ } loop\nshowpage\n")


def eps_image(folder, name="x.png"):
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(EPS_BODY)
    return path


def image_folder(root, classes=("a", "b"), per_class=4, size=8, mode="L"):
    """A small valid image folder root/<class>/<n>.png."""
    rng = np.random.default_rng(0)
    for name in classes:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for index in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8), mode).save(
                os.path.join(root, name, f"{index}.png"))
    return root


def deep_tuple_key(folder, depth=200_000):
    """A .pt whose state dict has a key that is a tuple nested ``depth`` deep: hashing it
    recursed once per level in C."""
    pickle = (PROTO2 + b"}" + EMPTY_TUPLE + b"\x85" * depth + b"N" + b"s" + STOP)
    return write_archive(os.path.join(folder, "deep.pt"), pickle, {})


def deep_storage_key(folder, depth=1200):
    """A .pt whose storage key is a tuple nested ``depth`` deep (describing it recursed)."""
    key = EMPTY_TUPLE + b"\x85" * depth
    persistent_id = (b"(" + text("storage") + global_("torch", "FloatStorage") + key
                     + text("cpu") + b"K\x01" + b"t")
    pickle = (PROTO2 + b"}" + text("w") + global_("torch._utils", "_rebuild_tensor_v2")
              + b"(" + persistent_id + b"Q" + b"K\x00" + b"(K\x01t" + b"(K\x01t" + b"\x89"
              + b")" + b"t" + b"R" + b"s" + STOP)
    return write_archive(os.path.join(folder, "deepkey.pt"), pickle, {})


def shared_storage(folder, tensors=40, megabytes=32):
    """A .pt of ``tensors`` tensors that all view one storage of ``megabytes``: copying
    each would take ``tensors`` times the file."""
    count = (megabytes << 20) // 4
    entries = {f"t{index}": tensor("FloatStorage", "0", count, 0, (count,), (1,))
               for index in range(tensors)}
    return write_archive(os.path.join(folder, "shared.pt"), state_dict_pickle(entries),
                         {"0": bytes(count * 4)})


def huge_label(folder):
    path = os.path.join(folder, "label.npz")
    np.savez(path, x=np.zeros((3, 8, 8), np.uint8), y=np.array([0, 1, 10**12]))
    return path


def npy_header(shape, dtype="<f4"):
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def inflating_npz(folder, gigabytes=4):
    """A compressed .npz of a few kilobytes whose x declares ``gigabytes`` of float32: the
    reader allocated the declared array before reading a byte of it."""
    path = os.path.join(folder, "bomb.npz")
    count = (gigabytes << 30) // 4
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_header((count // 64, 8, 8)) + bytes(1 << 16))
        archive.writestr("y.npy", npy_header((count // 64,), "<i8") + bytes(1 << 12))
    return path


def malformed_npz_header(folder):
    """An .npz whose array header is 6 KB of junk, which numpy quotes whole in its error."""
    path = os.path.join(folder, "junk.npz")
    junk = b"{" + b"'descr': '<f4', 'shape': (" + b"9, " * 2000 + b"" + b"\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(junk)) + junk)
        archive.writestr("y.npy", npy_header((1,), "<i8") + bytes(8))
    return path


def large_pngs(folder, count=6, side=8000):
    """``count`` RGB PNGs of side x side (each within the pixel cap): held decoded all at
    once, they took count x 192 MB."""
    os.makedirs(folder, exist_ok=True)
    row = np.zeros((side, side, 3), np.uint8)
    row[::97, :, 0] = 255
    image = Image.fromarray(row)
    for index in range(count):
        image.save(os.path.join(folder, f"{index}.png"), compress_level=1)
    return folder


def tiny_model(folder, name="tiny.cnn", classes=("a", "b"), input_shape=(1, 8, 8),
               scale=1 / 255):
    """A small valid model file: global average pooling and a Dense head."""
    model = Sequential([GlobalAvgPool2D(), Dense(len(classes))], input_shape=input_shape)
    model.classes = list(classes)
    model.preprocessing = Preprocessing(input_shape[0], input_shape[1:], scale=scale)
    path = os.path.join(folder, name)
    save_model(model, path)
    return path


def rewrite_metadata(path, **changes):
    """Rewrite entries of a model file's header (JSON values), keeping its tensors."""
    import safetensors
    with safetensors.safe_open(path, framework="numpy") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    for key, value in changes.items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    with open(path, "wb") as out:
        out.write(serialize(tensors, metadata))
    return path


def huge_input_model(folder):
    """A 2 KB model file declaring inputs of 1x46340x46340 (2.1e9 values, 8.6 GB a sample)."""
    path = tiny_model(folder, "huge.cnn")
    with_shape = json.loads(model_metadata_of(path)["architecture"])
    with_shape["input_shape"] = [1, 46340, 46340]
    preprocessing = json.loads(model_metadata_of(path)["preprocessing"])
    preprocessing["size"] = [46340, 46340]
    return rewrite_metadata(path, architecture=with_shape, preprocessing=preprocessing)


def model_metadata_of(path):
    import safetensors
    with safetensors.safe_open(path, framework="numpy") as handle:
        return dict(handle.metadata())


def escape_model(folder):
    """A model whose class names carry terminal escape sequences: a window title, a screen
    clear, a colour."""
    return tiny_model(folder, "escape.cnn",
                      classes=("\x1b]0;pwned\x07cat", "\x1b[2J\x1b[31mdog"))

