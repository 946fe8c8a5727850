"""Fashion-MNIST (Debian ``dataset-fashion-mnist``): 28x28 grey images of 10 kinds of clothing in
idx gz files (60,000 train, 10,000 test), and the natural descriptions lamra uses as their text.

Each class has eight descriptions written for this data set; ``DESCRIPTION_SPLITS`` says which go
to train, val and test, so no description is shared between splits.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = "dataset-fashion-mnist"
FILES = {  # source split -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DESCRIPTIONS = {
    "T-shirt/top": ("a short-sleeved t-shirt", "a plain cotton tee", "a casual top with short sleeves",
                    "a simple crew-neck t-shirt", "a sleeveless summer top", "a t-shirt laid out flat",
                    "a basic short-sleeve top", "a loose-fitting tee shirt"),
    "Trouser": ("a pair of trousers", "long straight-leg pants", "a pair of slim jeans", "full-length slacks",
                "a pair of casual trousers", "a pair of long pants", "denim jeans seen from the front",
                "a pair of wide-leg trousers"),
    "Pullover": ("a long-sleeved pullover", "a warm knitted sweater", "a wool jumper", "a cosy sweatshirt",
                 "a knit pullover with long sleeves", "a thick winter sweater", "a crew-neck jumper",
                 "a hooded sweatshirt without a zip"),
    "Dress": ("a summer dress", "a knee-length dress", "a sleeveless dress", "a long evening gown",
              "a casual one-piece dress", "a fitted cocktail dress", "a flowing maxi dress", "a short party dress"),
    "Coat": ("a winter coat", "a warm jacket with a zip", "a long overcoat", "a padded outdoor jacket",
             "a buttoned wool coat", "a rain jacket", "a heavy coat with long sleeves", "a zip-up parka"),
    "Sandal": ("an open summer sandal", "a strappy sandal", "a flat beach sandal", "a high-heeled sandal",
               "a light open-toe shoe", "a sandal with thin straps", "a flip-flop style sandal",
               "an open shoe for warm weather"),
    "Shirt": ("a button-up shirt", "a long-sleeved collared shirt", "a formal dress shirt", "a checked flannel shirt",
              "a shirt with a collar and buttons", "a casual button-down shirt", "a work shirt with a pocket",
              "a blouse with long sleeves"),
    "Sneaker": ("a sports sneaker", "a running shoe", "a low-top trainer", "a canvas sneaker",
                "a lace-up athletic shoe", "a pair of trainers seen from the side", "a casual sneaker",
                "a shoe for running and sport"),
    "Bag": ("a handbag", "a leather bag with a handle", "a shoulder bag", "a tote bag", "a small purse",
            "a bag with a strap", "a shopping bag", "a backpack"),
    "Ankle boot": ("an ankle boot", "a short leather boot", "a heeled ankle boot", "a winter boot",
                   "a boot that covers the ankle", "a suede bootie", "a chelsea boot", "a lace-up ankle boot"),
}
# Which descriptions of each class (by position) each split uses: none in two splits.
DESCRIPTION_SPLITS = {"train": (0, 1, 2, 3, 4), "val": (5,), "test": (6, 7)}


@dataclass
class FashionMNIST:
    """One source split: ``images`` (N, 28, 28) uint8 and ``labels`` (N,) uint8."""

    images: "object"  # numpy array
    labels: "object"

    def __len__(self) -> int:
        return len(self.labels)


def descriptions(label: int, split: str) -> list[str]:
    texts = DESCRIPTIONS[CLASSES[label]]
    return [texts[i] for i in DESCRIPTION_SPLITS[split]]


def _read_idx(path: Path, magic: int, dims: int):
    import numpy as np

    if not path.is_file():
        raise InputError(f"Fashion-MNIST file not found (install {PACKAGE})", file=str(path))
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    header = 4 + 4 * dims
    if len(data) < header:
        raise InputError("truncated idx file", file=str(path))
    found, *shape = struct.unpack(f">{1 + dims}I", data[:header])
    if found != magic:
        raise InputError(f"not an idx file of {dims} dimension(s): magic {found:#x}, expected {magic:#x}",
                         file=str(path))
    count = 1
    for size in shape:
        count *= size
    if len(data) - header != count:
        raise InputError(f"expected {count} bytes of data after the header for shape {tuple(shape)}, "
                         f"got {len(data) - header}", file=str(path))
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load(root: str | Path, source_split: str) -> FashionMNIST:
    """The ``train`` or ``t10k`` (test) split of the idx gz files under ``root``."""
    image_name, label_name = FILES[source_split]
    root = Path(root)
    images = _read_idx(root / image_name, 0x803, 3)
    labels = _read_idx(root / label_name, 0x801, 1)
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} labels", file=str(root / label_name))
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise InputError(f"label {int(labels.max())} is not a Fashion-MNIST class (0-9)", file=str(root / label_name))
    return FashionMNIST(images, labels)


def write_idx(path: str | Path, array) -> None:
    """Write a uint8 array as an idx gz file (tests build tiny sources with it)."""
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    magic = 0x800 + array.ndim
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(header + array.tobytes())


def to_image(pixels, size: int):
    """A 28x28 grey array as an RGB ``size`` x ``size`` PIL image (the item light on black, as in
    the data set), enlarged with bicubic resampling."""
    from PIL import Image

    image = Image.fromarray(pixels)  # uint8 (28, 28): mode "L"
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image.convert("RGB")
