"""A model large enough that a fold of it is still writing when a test interrupts it.

The model is the hostile fuzzer's (:func:`fuzz.hostile.medium_model`: two
``channels``-wide 3x3 convolutions around a BatchNorm + Scale, built with the
generated protobuf classes, each blob's packed ``data`` handed to protobuf's parser
as bytes so that millions of floats take no seconds); this module writes it to files.
"""

from __future__ import annotations

from pathlib import Path

from fuzz.hostile import medium_model


def write_big_model(folder: Path, channels: int = 640, seed: int = 0,
                    name: str = "big") -> tuple[Path, Path]:
    """``name``.prototxt and .caffemodel in ``folder`` (640 channels: about 30 MB)."""
    model = medium_model(channels, seed)
    prototxt, caffemodel = folder / f"{name}.prototxt", folder / f"{name}.caffemodel"
    prototxt.write_bytes(model.prototxt)
    caffemodel.write_bytes(model.caffemodel or b"")
    return prototxt, caffemodel
