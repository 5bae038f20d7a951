"""Write data/optdigits/: scikit-learn's bundled handwritten digits as PNG files.

    python scripts/make_optdigits.py

The 1797 8x8 images of the UCI "Optical Recognition of Handwritten Digits"
test set, as scikit-learn ships them (pixel values 0..16), are written as
8-bit grayscale PNGs (value * 255 / 16, rounded) in image-folder layout:
data/optdigits/{train,test}/<digit>/<index>.png, where <index> is the image's
position in sklearn.datasets.load_digits(). Two thirds of each class go to
train and one third to test, chosen by a fixed seed, so the files are the
same on every run.
"""

import os
import shutil

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                    "optdigits")


def main():
    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)
    indices = np.arange(len(pixels))
    train, test = train_test_split(indices, test_size=1 / 3, random_state=0,
                                   stratify=digits.target)
    for part in ("train", "test"):
        shutil.rmtree(os.path.join(ROOT, part), ignore_errors=True)
    for part, rows in (("train", train), ("test", test)):
        for index in sorted(rows):
            folder = os.path.join(ROOT, part, str(digits.target[index]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(pixels[index], mode="L").save(
                os.path.join(folder, f"{index:04d}.png"), optimize=True)
    print(f"{ROOT}: {len(train)} training and {len(test)} test images")


if __name__ == "__main__":
    main()
