"""Decoding one image file, safely: the decoders cnncli trusts, the sizes it accepts.

    with open_image("cat.png") as image:      # header read, pixels not decoded yet
        print(image.size)
    pixels = load_image("cat.png", channels=3, size=(224, 224))   # (3, 224, 224) uint8

What is trusted. Pillow can hand some formats to other programs (EPS, PS and
PDF go to Ghostscript, which runs them as code), so files are opened with
an explicit list of decoders, ``IMAGE_FORMATS``, all in-process: a file of
any other format is refused whatever its name. Only regular files are
opened (a FIFO named ``x.png`` would block forever), without following a
device. An image is refused, before its pixels are decoded, when it has
more pixels than ``limits.MAX_IMAGE_PIXELS`` or a colour mode outside
``IMAGE_MODES``. Anything a decoder raises for a damaged file becomes a
``DataError`` naming the file, and Pillow's own warnings are not printed.

Images are made upright first (their EXIF orientation, as image viewers
apply it), then converted to the channels and size the caller needs.
"""

import contextlib
import os
import stat
import warnings

import numpy as np

from cnncli.limits import MAX_IMAGE_PIXELS, cut

__all__ = ["DataError", "IMAGE_EXTENSIONS", "IMAGE_FORMATS", "IMAGE_MODES", "open_image",
           "load_image", "image_header", "image_to_array"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm")
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")

GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
IMAGE_MODES = GRAYSCALE_MODES + ("P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")

EXIF_ORIENTATION = 0x0112


class DataError(ValueError):
    """A problem with input data; the message names the file (or array) and the problem."""


def _open_regular(path):
    """A binary file object for ``path`` if it is a regular file; DataError otherwise.

    Opened without blocking, so a FIFO is seen for what it is instead of
    waiting for a writer.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise DataError(f"{path}: not a regular file (a pipe, socket or device)")
    return os.fdopen(descriptor, "rb")


@contextlib.contextmanager
def open_image(path):
    """The PIL image of an image file, header read and checked, pixels not yet decoded.

    Any problem with the file, found here or while the block decodes or
    converts it, raises DataError naming the file.
    """
    from PIL import Image, UnidentifiedImageError
    path = os.fspath(path)
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        raise DataError(f"{path}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)})")
    with _open_regular(path) as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(handle, formats=IMAGE_FORMATS)
            with image:
                _check_header(path, image)
                yield image
        except DataError:
            raise
        except UnidentifiedImageError:
            raise DataError(f"{path}: not a readable image (not one of "
                            f"{', '.join(IMAGE_FORMATS)}, or corrupt)") from None
        except Exception as error:
            # Decoders fail on damaged files in many ways (OSError, SyntaxError,
            # struct.error, ValueError...): each means the file is bad.
            raise DataError(f"{path}: corrupt or unreadable image ({cut(error)})") from None


def _check_header(path, image):
    too_many = MAX_IMAGE_PIXELS.exceeded(image.width * image.height,
                                         f"{path}: the image ({image.width}x{image.height})")
    if too_many:
        raise DataError(too_many)
    if image.mode not in IMAGE_MODES:
        raise DataError(f"{path}: colour mode {cut(image.mode, 20)} is not supported (expected "
                        "grayscale, RGB, RGBA, palette, CMYK or YCbCr)")


def _orientation(image):
    """The EXIF orientation (1 = upright), read without decoding the pixels."""
    # Pillow decodes a whole PNG to look for EXIF data after the pixels; EXIF
    # before them is in the header's info.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return image.getexif().get(EXIF_ORIENTATION, 1)


def _is_grayscale(image):
    """Whether an image has no colour: a grayscale mode, or a palette of grays only."""
    if image.mode in ("P", "PA"):
        pixels = np.asarray(image.convert("RGB"))
        return bool(np.all(pixels[..., 0] == pixels[..., 1])
                    and np.all(pixels[..., 1] == pixels[..., 2]))
    return image.mode in GRAYSCALE_MODES


def image_header(path, colour=True, verify=False):
    """(height, width, grayscale) of an image file as it would load, upright.

    Read from the header; only a palette image is decoded, to see whether
    its colours are grays (``colour=False`` skips that and gives None), and
    every image when ``verify`` asks to find damaged pixel data now.
    """
    with open_image(path) as image:
        if verify:
            image.load()
        quarter_turn = _orientation(image) in (5, 6, 7, 8)
        height, width = (image.width, image.height) if quarter_turn else \
            (image.height, image.width)
        return height, width, (_is_grayscale(image) if colour else None)


def load_image(path, channels, size):
    """(channels, height, width) uint8 pixels of an image file: decoded, made upright,
    converted to ``channels`` (1 or 3) and resized to ``size`` (height, width)."""
    from PIL import ImageOps
    with open_image(path) as image:
        image.load()
        if _orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
        return image_to_array(image, channels, size)


def image_to_array(image, channels, size):
    """(channels, height, width) uint8 pixels of a PIL image, converted and resized."""
    from PIL import Image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float grayscale: scale to 8 bits rather than clip.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray(np.clip(values / top * 255 + 0.5, 0, 255).astype(np.uint8))
    if image.mode in ("CMYK", "YCbCr"):
        image = image.convert("RGB")
    if image.mode in ("P", "PA") or (image.mode == "LA" and channels == 3):
        image = image.convert("RGBA")
    image = image.convert("L" if channels == 1 else "RGB")
    if (image.height, image.width) != tuple(size):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
