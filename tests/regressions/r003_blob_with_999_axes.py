"""A blob shape with 999 dims of 1 (a repeated dim field)."""

from __future__ import annotations

DESCRIPTION = ("BlobShape.dim repeated 999 times: numpy refused the reshape with "
               "'maximum supported dimension for an ndarray is currently 64' (ValueError)")
FOUND_BY = "fuzz.run seed 7 input 220 (golden/scale_factor_zero; tree: repeat field 1 x1000)"
FIXED_IN = "bnfuse/io/caffemodel/_index.py _scan_blob: over 32 axes (Caffe's kMaxBlobAxes) refused"
EXPECT = "CaffemodelError"

PROTOTXT = b'layer { name: "sc" type: "Scale" bottom: "x" top: "x" }\n'


def build() -> tuple[bytes, bytes | None]:
    """One Scale record whose only blob has shape (1,) * 998 + (2,)."""
    from bnfuse.proto import NetParameter

    net = NetParameter()
    blob = net.layer.add(name="sc", type="Scale").blobs.add()
    blob.shape.dim.extend([1] * 998 + [2])
    blob.data.extend([1.0, 2.0])
    return PROTOTXT, net.SerializeToString()
