"""The pycaffe way to fold BatchNorm: load the net in Caffe, edit ``net.params``, save.

This is the other baseline bnfuse is measured against where pycaffe exists: the
original net is loaded with ``caffe.Net(prototxt, caffemodel, caffe.TEST)``, the
folded prototxt (written by the protobuf baseline's chain finder, so both
baselines fold the same chains) is loaded as a second ``caffe.Net``, weights are
copied across with the fold arithmetic of :mod:`bnfuse.folding.arith`, and
``net.save`` writes the caffemodel. It needs ``import caffe`` to work; the
benchmark skips it (and says so) when it does not.

Usage::

    python benchmarks/baseline_pycaffe.py IN.prototxt IN.caffemodel OUT.prototxt OUT.caffemodel
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

# The bnfuse source tree next to this file, as in the protobuf baseline.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from google.protobuf import text_format

from bnfuse.folding import arith
from bnfuse.proto import NetParameter


def fold_files(prototxt: str, caffemodel: str, out_prototxt: str, out_caffemodel: str) -> None:
    """Fold with pycaffe doing all weight I/O."""
    import caffe  # imported here: the module is only ever run where pycaffe exists
    from baseline_protobuf import _chains

    caffe.set_mode_cpu()
    net = NetParameter()
    text_format.Parse(Path(prototxt).read_text(), net)
    chains = _chains(net)
    removed = set()
    for producer, bn, scale in chains:
        last = scale if scale is not None else bn
        producer.top[0] = last.top[0]
        if producer.type == "Convolution":
            producer.convolution_param.bias_term = True
        else:
            producer.inner_product_param.bias_term = True
        removed |= {bn.name} | ({scale.name} if scale is not None else set())
    for i in reversed(range(len(net.layer))):
        if net.layer[i].name in removed:
            del net.layer[i]
    Path(out_prototxt).write_text(text_format.MessageToString(net))

    source = caffe.Net(prototxt, caffemodel, caffe.TEST)
    target = caffe.Net(out_prototxt, caffe.TEST)
    folded = {producer.name: (producer, bn, scale) for producer, bn, scale in chains}
    for name, blobs in target.params.items():
        old = [np.array(b.data) for b in source.params[name]]
        if name in folded:
            producer, bn, scale = folded[name]
            stats = [np.array(b.data) for b in source.params[bn.name]]
            mean, var = arith.caffe_batchnorm_stats(*stats[:3])
            gamma = beta = None
            if scale is not None:
                scale_blobs = [np.array(b.data) for b in source.params[scale.name]]
                gamma = scale_blobs[0]
                beta = scale_blobs[1] if len(scale_blobs) > 1 else None
            affine = arith.affine_from_batchnorm(mean, var, bn.batch_norm_param.eps,
                                                 gamma, beta)
            bias = old[1] if len(old) > 1 else None
            if producer.type == "Convolution":
                old = list(arith.fold_into_convolution(old[0], bias, affine))
            else:
                old = list(arith.fold_into_inner_product(
                    old[0], bias, affine, producer.inner_product_param.transpose))
        for blob, values in zip(blobs, old, strict=True):
            blob.data[...] = values.reshape(blob.data.shape)
    target.save(out_caffemodel)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    fold_files(*args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
