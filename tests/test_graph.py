"""Single-assignment blob versions, checked on hand-written nets and random ones."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfuse.errors import BnfuseError
from bnfuse.graph import BlobVersion, Graph, build_graph


@dataclass(frozen=True)
class L:
    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]


def net(*specs: tuple[str, str, tuple[str, ...], tuple[str, ...]]) -> Graph:
    return build_graph([L(*spec) for spec in specs])


def test_in_place_chain_gets_one_version_per_write() -> None:
    g = net(
        ("input", "Input", (), ("data",)),
        ("conv", "Convolution", ("data",), ("conv1",)),
        ("bn", "BatchNorm", ("conv1",), ("conv1",)),
        ("scale", "Scale", ("conv1",), ("conv1",)),
        ("relu", "ReLU", ("conv1",), ("conv1",)),
    )
    versions = g.versions_of("conv1")
    assert [v.version for v in versions] == [0, 1, 2, 3]
    assert [v.producer for v in versions] == [1, 2, 3, 4]
    for layer in (2, 3, 4):
        assert g.reads[layer] == (versions[layer - 2],)
        assert g.writes[layer] == (versions[layer - 1],)
        assert g.readers(versions[layer - 2]) == [layer]
    assert g.final_version("conv1") == versions[3]
    assert g.outputs() == [versions[3]]
    assert not g.is_output(versions[0])
    assert g.inputs() == []  # "data" is produced by the Input layer


def test_renamed_tops_and_branches() -> None:
    g = net(
        ("conv", "Convolution", ("data",), ("c",)),
        ("bn", "BatchNorm", ("c",), ("c_bn",)),
        ("relu", "ReLU", ("c_bn",), ("c_bn",)),
        ("left", "Convolution", ("c_bn",), ("l",)),
        ("right", "Pooling", ("c_bn",), ("r",)),
        ("cat", "Concat", ("l", "r"), ("out",)),
    )
    relu_out = g.writes[2][0]
    assert g.readers(relu_out) == [3, 4]
    assert g.readers(g.writes[0][0]) == [1]
    assert [str(v) for v in g.reads[5]] == ["l#0", "r#0"]
    assert [v.name for v in g.outputs()] == ["out"]
    assert g.inputs() == [BlobVersion("data", 0, None)]
    assert g.producer(g.reads[0][0]) is None


def test_blob_read_twice_by_one_layer_counts_once() -> None:
    g = net(("a", "ReLU", ("x",), ("y",)), ("sum", "Eltwise", ("y", "y"), ("z",)))
    assert g.readers(g.writes[0][0]) == [1]
    assert g.reads[1] == (g.writes[0][0], g.writes[0][0])


def test_duplicate_name_rewritten_later() -> None:
    g = net(
        ("a", "Convolution", ("data",), ("x",)),
        ("b", "ReLU", ("x",), ("y",)),
        ("c", "Convolution", ("y",), ("x",)),  # reuses the name "x"
        ("d", "ReLU", ("x",), ("z",)),
        ("e", "Pooling", ("y",), ("x",)),  # and again; nobody reads this one
    )
    x0, x1, x2 = g.versions_of("x")
    assert (x0.producer, x1.producer, x2.producer) == (0, 2, 4)
    assert g.readers(x0) == [1] and g.readers(x1) == [3] and g.readers(x2) == []
    assert g.reads[3] == (x1,)
    assert g.is_output(x2) and not g.is_output(x1)
    assert {v.name for v in g.outputs()} == {"x", "z"}
    assert g.version_at("x", 0) is None
    assert g.version_at("x", 1) == x0 and g.version_at("x", 3) == x1 and g.version_at("x", 5) == x2
    assert g.version_at("data", 3) == BlobVersion("data", 0, None)


def test_unread_earlier_version_is_lost_not_an_output() -> None:
    g = net(("a", "ReLU", ("in",), ("x",)), ("b", "ReLU", ("in",), ("x",)))
    first, last = g.versions_of("x")
    assert not g.is_output(first) and g.is_output(last)


def test_lookup_errors() -> None:
    g = net(("a", "ReLU", ("x",), ("y",)))
    with pytest.raises(BnfuseError, match="no blob named 'nope'"):
        g.final_version("nope")
    with pytest.raises(BnfuseError, match="does not belong"):
        g.readers(BlobVersion("y", 7, 0))
    assert g.versions_of("nope") == ()
    assert g.layer_count == 1 and g.layer_name(0) == "a"


def test_large_net_is_linear_time() -> None:
    layers = [L("input", "Input", (), ("data",))]
    prev = "data"
    for i in range(5000):
        layers.append(L(f"conv{i}", "Convolution", (prev,), (f"c{i}",)))
        layers.append(L(f"bn{i}", "BatchNorm", (f"c{i}",), (f"c{i}",)))
        layers.append(L(f"scale{i}", "Scale", (f"c{i}",), (f"c{i}",)))
        layers.append(L(f"relu{i}", "ReLU", (f"c{i}",), (f"c{i}",)))
        prev = f"c{i}"
    start = time.perf_counter()
    g = build_graph(layers)
    outputs = g.outputs()
    elapsed = time.perf_counter() - start
    assert [v.name for v in outputs] == ["c4999"]
    assert elapsed < 2.0  # 20,001 layers; about 0.1 s on the development machine


# --------------------------------------------------------------------------- property test


@st.composite
def random_net(draw: st.DrawFn) -> list[L]:
    names = ["a", "b", "c", "d", "e"]
    count = draw(st.integers(0, 25))
    layers = []
    for i in range(count):
        bottoms = tuple(draw(st.lists(st.sampled_from(names), max_size=3)))
        tops = tuple(draw(st.lists(st.sampled_from(names), max_size=2)))
        layers.append(L(f"l{i}", "Any", bottoms, tops))
    return layers


@settings(max_examples=200, deadline=None)
@given(layers=random_net())
def test_outputs_follow_caffes_available_blob_rule(layers: list[L]) -> None:
    """Caffe: a read removes a name from 'available', a write adds it; leftovers are outputs."""
    available: set[str] = set()
    last_writer: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for bottom in layer.bottoms:
            available.discard(bottom)
        for top in layer.tops:
            available.add(top)
            last_writer[top] = i
    g = build_graph(layers)
    assert {v.name for v in g.outputs()} == available
    for v in g.outputs():
        assert v.producer == last_writer[v.name] and v == g.final_version(v.name)
    # Every read is of the latest earlier write (or a net input).
    for i, layer in enumerate(layers):
        for bottom, version in zip(layer.bottoms, g.reads[i], strict=True):
            assert version.name == bottom and version == g.version_at(bottom, i)
            assert i in g.readers(version)
            producer = g.producer(version)
            assert producer is None or producer < i
