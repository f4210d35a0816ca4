"""Single-assignment blob versions, checked on hand-written nets and random ones."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnfuse.errors import BnfuseError
from bnfuse.graph import BlobVersion, Graph, build_graph
from tests.growth import LINEAR_BOUND, growth


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
    assert g.reads[0] == (BlobVersion("data", 0, None),)
    assert g.reads[1] == (x0,) and g.reads[4] == (g.writes[1][0],)
    assert g.writers("x") == [0, 2, 4] and g.last_writer("x") == 4
    assert g.final_version("x") == x2


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
    assert g.writers("nope") == [] and g.last_writer("nope") is None


def test_large_net_is_linear_time() -> None:
    def chains(n: int) -> list[L]:
        layers = [L("input", "Input", (), ("data",))]
        prev = "data"
        for i in range(n):
            layers.append(L(f"conv{i}", "Convolution", (prev,), (f"c{i}",)))
            layers.append(L(f"bn{i}", "BatchNorm", (f"c{i}",), (f"c{i}",)))
            layers.append(L(f"scale{i}", "Scale", (f"c{i}",), (f"c{i}",)))
            layers.append(L(f"relu{i}", "ReLU", (f"c{i}",), (f"c{i}",)))
            prev = f"c{i}"
        return layers

    nets = {n: chains(n) for n in (500, 4000)}

    def graph(n: int) -> None:
        assert [v.name for v in build_graph(nets[n]).outputs()] == [f"c{n - 1}"]

    assert growth(graph, 500) < LINEAR_BOUND


def test_writers_and_last_writer() -> None:
    g = net(
        ("conv", "Convolution", ("data",), ("c",)),
        ("bn", "BatchNorm", ("c",), ("c",)),
        ("relu", "ReLU", ("c",), ("c",)),
        ("copy", "Split", ("c",), ("c_a", "c_b")),
        ("again", "Pooling", ("c_a",), ("c",)),  # the name c once more, from another input
    )
    assert g.writers("c") == [0, 1, 2, 4]
    assert g.last_writer("c") == 4
    assert g.writers("c_b") == [3] and g.last_writer("c_b") == 3
    assert g.writers("data") == [] and g.last_writer("data") is None  # a net input


def test_inputs_of_a_part_of_a_net() -> None:
    """The inputs of some layers taken alone: what a region of the local check is fed."""
    g = net(
        ("conv2", "Convolution", ("p",), ("b",)),
        ("sum", "Eltwise", ("b", "skip", "b"), ("s",)),
        ("relu", "ReLU", ("s",), ("s",)),
        ("cat", "Concat", ("s", "p"), ("out",)),
    )
    assert g.inputs() == [BlobVersion("p", 0, None), BlobVersion("skip", 0, None)]


def test_depths_count_weighted_layers_on_the_longest_path() -> None:
    g = net(
        ("input", "Input", (), ("data",)),
        ("conv1", "Convolution", ("data",), ("c1",)),
        ("bn1", "BatchNorm", ("c1",), ("c1",)),
        ("relu1", "ReLU", ("c1",), ("c1",)),
        ("conv2", "Convolution", ("c1",), ("c2",)),
        ("conv3", "Convolution", ("c2",), ("c3",)),
        ("sum", "Eltwise", ("c1", "c3"), ("s",)),  # the deeper branch counts
        ("fc", "InnerProduct", ("s",), ("out",)),
        ("shallow", "Convolution", ("data",), ("c1",)),  # c1 rewritten, one layer deep
    )
    weighted = {"Convolution", "InnerProduct"}
    depth = g.depths(lambda layer: layer.type in weighted)
    assert {str(v): d for v, d in depth.items()} == {
        "data#0": 0, "c1#0": 1, "c1#1": 1, "c1#2": 1, "c2#0": 2, "c3#0": 3, "s#0": 3,
        "out#0": 4, "c1#3": 1,
    }
    assert depth[g.final_version("c1")] == 1
    assert set(g.depths(lambda layer: False).values()) == {0}
    # A net input read without an Input layer is depth 0 too.
    bare = net(("conv", "Convolution", ("x",), ("y",)))
    assert {str(v): d for v, d in bare.depths(lambda layer: True).items()} == {"x#0": 0,
                                                                              "y#0": 1}


def test_between_finds_the_layers_sandwiched_by_a_region() -> None:
    g = net(
        ("input", "Input", (), ("data",)),  # 0: only upstream
        ("conv1", "Convolution", ("data",), ("a",)),  # 1
        ("relu1", "ReLU", ("a",), ("a",)),  # 2
        ("side", "Pooling", ("a",), ("side",)),  # 3: downstream of 1, feeds only 7
        ("pool", "Pooling", ("a",), ("p",)),  # 4
        ("conv2", "Convolution", ("p",), ("b",)),  # 5
        ("relu2", "ReLU", ("b",), ("b",)),  # 6: only downstream
        ("head", "Convolution", ("side",), ("h",)),  # 7
    )
    assert g.between({1, 5}) == {2, 4}
    assert g.between({1, 7}) == {2, 3}
    assert g.between({1, 5, 7}) == {2, 3, 4}
    assert g.between({5, 7}) == set()  # separate branches: nothing lies between them
    assert g.between({1}) == set() and g.between(set()) == set()


def test_between_follows_versions_not_names() -> None:
    g = net(
        ("a", "Convolution", ("in",), ("x",)),  # region
        ("r", "ReLU", ("x",), ("t",)),  # reads a's x, but nothing in the region reads t
        ("b", "Pooling", ("in",), ("x",)),  # a new x, not computed from a's
        ("c", "Convolution", ("x",), ("y",)),  # region: reads b's x
    )
    assert g.between({0, 3}) == set()
    assert g.between({0, 1, 3}) == set()
    assert g.between({0, 2, 3}) == set()


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
    # Every read is of the latest earlier write (or a net input): replay the history of
    # each name (None stands for "read before any write") and check each read against it.
    history: dict[str, list[int | None]] = {}
    for i, layer in enumerate(layers):
        for bottom, version in zip(layer.bottoms, g.reads[i], strict=True):
            seen = history.setdefault(bottom, [None])
            assert version == BlobVersion(bottom, len(seen) - 1, seen[-1])
            assert i in g.readers(version)
            producer = g.producer(version)
            assert producer is None or producer < i
        for top in layer.tops:
            history.setdefault(top, []).append(i)
    for name, seen in history.items():
        assert g.writers(name) == [w for w in seen if w is not None]
        assert g.last_writer(name) == seen[-1]


@settings(max_examples=200, deadline=None)
@given(layers=random_net(), weighted=st.sets(st.integers(0, 24)),
       region=st.sets(st.integers(0, 24)))
def test_depths_and_between_agree_with_a_walk_by_name(layers: list[L], weighted: set[int],
                                                      region: set[int]) -> None:
    """Walking the layers in order with one entry per name sees each name's latest version."""
    g = build_graph(layers)
    marked = {id(layers[i]) for i in weighted if i < len(layers)}
    depth = g.depths(lambda layer: id(layer) in marked)
    by_name: dict[str, int] = {}
    producer: dict[str, int] = {}
    sources: list[list[int]] = []
    for i, layer in enumerate(layers):
        base = max((by_name.get(b, 0) for b in layer.bottoms), default=0)
        sources.append([producer[b] for b in layer.bottoms if b in producer])
        for top in layer.tops:
            by_name[top] = base + (1 if i in weighted else 0)
            producer[top] = i
    for name, value in by_name.items():
        assert depth[g.final_version(name)] == value
    # Between: reachable from the region going down, and reaching it going up.
    chosen = {i for i in region if i < len(layers)}
    down: set[int] = set()
    for i in range(len(layers)):
        if i not in chosen and any(s in chosen or s in down for s in sources[i]):
            down.add(i)
    up: set[int] = set()
    for i in reversed(range(len(layers))):
        if i in chosen or i in up:
            up.update(s for s in sources[i] if s not in chosen)
    assert g.between(chosen) == down & up
