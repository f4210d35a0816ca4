"""A corrupt caffemodel whose layer name holds a newline and a terminal escape."""

from __future__ import annotations

DESCRIPTION = ("A blob error in a layer whose name (from the damaged file) holds '\\n' and "
               "'\\x1b[31m': the CaffemodelError message was printed over two lines with the "
               "escape sequence raw, breaking the one-line rule and the user's terminal")
FOUND_BY = "bounded fuzz seed 2024 input 6566 (golden/global_stats_off; nested garbage)"
FIXED_IN = "bnfuse/io/caffemodel/_index.py _scan_blob: the layer name is shown with errors.excerpt"
EXPECT = "CaffemodelError"

PROTOTXT = b'layer { name: "sc" type: "Scale" bottom: "x" top: "x" }\n'


def build() -> tuple[bytes, bytes | None]:
    """One record named 'bad\\nname\\x1b[31m' whose blob has shape (2,) and 3 values."""
    from bnfuse.proto import NetParameter

    net = NetParameter()
    blob = net.layer.add(name="bad\nname\x1b[31m", type="Scale").blobs.add()
    blob.shape.dim.append(2)
    blob.data.extend([1.0, 2.0, 3.0])
    return PROTOTXT, net.SerializeToString()
