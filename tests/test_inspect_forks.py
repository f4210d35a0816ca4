"""``bnfuse inspect`` lists the fork fields of every layer its decisions name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnfuse.cli import main

FORK_NET = """input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { scale_filler { type: "constant" value: 1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "p"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 ceil_mode: false } }
"""


def test_inspect_names_the_fork_fields_of_the_layers_it_mentions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prototxt = tmp_path / "fork.prototxt"
    prototxt.write_text(FORK_NET)
    report = tmp_path / "inspect.json"
    assert main(["inspect", str(prototxt), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    # The pooling layer's fork field is not listed: no fold decision names that layer;
    # it is a warning instead, since it changes the pooled size (the net's warnings end it).
    assert ("\nfork fields (not in BVLC Caffe's schema) of the layers above:\n"
            "  bn: batch_norm_param.scale_filler\n\nwarnings (1): ") in out
    assert out.endswith("\n  layer 'pool' (Pooling): fork field pooling_param.ceil_mode makes "
                        "the pooled size round down (floor); bnfuse honours it "
                        "(PoolGeometry.round_mode), but a reader of BVLC Caffe's schema drops "
                        "the field and gets another output size\n")
    written = json.loads(report.read_text())
    assert written["fork_fields"] == {"bn": ["batch_norm_param.scale_filler"]}
    assert [(w["kind"], w["layer"], w["field"]) for w in written["warnings"]] == [
        ("fork_field", "pool", "pooling_param.ceil_mode")]


def test_inspect_without_fork_fields_prints_no_section(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prototxt = tmp_path / "plain.prototxt"
    prototxt.write_text(FORK_NET.replace(
        "batch_norm_param { scale_filler { type: \"constant\" value: 1 } }", ""))
    assert main(["inspect", str(prototxt)]) == 0
    assert "fork fields" not in capsys.readouterr().out
