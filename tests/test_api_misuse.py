"""Wrong arguments to the public API end in bnfuse's own TypeError or BnfuseError.

Found by the hostile fuzzer's API scenario (``fuzz/hostile.py``): each of these used to
escape as an ``AttributeError``, an ``IndexError``, a numpy ``ValueError`` or a
``TypeError`` raised deep inside, naming no function of bnfuse.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import bnfuse


@pytest.fixture
def net() -> bnfuse.Net:
    return bnfuse.load(bnfuse.example_path(), bnfuse.example_path("caffemodel"))


LAYER_METHODS: list[tuple[str, Callable[[bnfuse.Net, object], object]]] = [
    ("remove_layer", lambda n, bad: n.remove_layer(bad)),  # type: ignore[arg-type]
    ("set_top", lambda n, bad: n.set_top(bad, 0, "x")),  # type: ignore[arg-type]
    ("set_bottom", lambda n, bad: n.set_bottom(bad, 0, "x")),  # type: ignore[arg-type]
    ("set_type", lambda n, bad: n.set_type(bad, "ReLU")),  # type: ignore[arg-type]
    ("set_field", lambda n, bad: n.set_field(bad, ("relu_param", "negative_slope"), 0.1)),  # type: ignore[arg-type]
    ("clear_field", lambda n, bad: n.clear_field(bad, "relu_param")),  # type: ignore[arg-type]
    ("set_blobs", lambda n, bad: n.set_blobs(bad, [])),  # type: ignore[arg-type]
    ("rename_layer", lambda n, bad: n.rename_layer(bad, "y")),  # type: ignore[arg-type]
    ("index", lambda n, bad: n.index(bad)),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("method", "call"), LAYER_METHODS, ids=[m for m, _ in LAYER_METHODS])
@pytest.mark.parametrize("bad", [None, "conv1", 3, np.arange(2)], ids=repr)
def test_net_methods_want_a_layer(net: bnfuse.Net, method: str,
                                  call: Callable[[bnfuse.Net, object], object],
                                  bad: object) -> None:
    with pytest.raises(TypeError) as info:
        call(net, bad)
    assert str(info.value) == (f"Net.{method}: layer must be a Layer of this net (from "
                               f"net.layers or net.layer(name)), not {type(bad).__name__}")


def test_a_layer_of_another_net_is_refused(net: bnfuse.Net) -> None:
    other = bnfuse.load(bnfuse.example_path()).layer("conv1")
    with pytest.raises(bnfuse.BnfuseError,
                       match=r"^Net.remove_layer: layer 'conv1' is not part of this net$"):
        net.remove_layer(other)


@pytest.mark.parametrize("index", [1.5, "0", None, np.arange(2), float("nan")], ids=repr)
def test_top_and_bottom_positions_are_integers(net: bnfuse.Net, index: object) -> None:
    conv = net.layer("conv1")
    for method in ("set_top", "set_bottom"):
        with pytest.raises(TypeError, match=rf"^Net.{method}: index must be an integer, not "):
            getattr(net, method)(conv, index, "x")


def test_top_and_bottom_positions_exist(net: bnfuse.Net) -> None:
    conv = net.layer("conv1")
    with pytest.raises(bnfuse.BnfuseError,
                       match=r"^Net.set_top: layer 'conv1' has 1 tops, no top 1$"):
        net.set_top(conv, 1, "x")
    with pytest.raises(bnfuse.BnfuseError,
                       match=r"^Net.set_bottom: layer 'conv1' has 1 bottoms, no bottom -1$"):
        net.set_bottom(conv, -1, "x")
    with pytest.raises(TypeError, match=r"^Net.set_top: blob must be a str, not int$"):
        net.set_top(conv, 0, 5)  # type: ignore[arg-type]
    with pytest.raises(bnfuse.BnfuseError, match=r"^Net.rename_layer: name must not be empty$"):
        net.rename_layer(conv, "")
    assert conv.tops == ("conv1",)  # nothing was changed by the refused calls


@pytest.mark.parametrize("path", [(), "convolution_param", [1, 2], ("convolution_param", "")],
                         ids=repr)
def test_set_field_wants_a_path_of_names(net: bnfuse.Net, path: object) -> None:
    with pytest.raises(TypeError, match=r"^Net.set_field: path must be a non-empty sequence"):
        net.set_field(net.layer("conv1"), path, 1)  # type: ignore[arg-type]


def test_set_field_and_blobs_want_plain_values(net: bnfuse.Net) -> None:
    conv = net.layer("conv1")
    with pytest.raises(TypeError,
                       match=r"^Net.set_field: value must be a bool, int, float or str, not list$"):
        net.set_field(conv, ("convolution_param", "num_output"), [1])  # type: ignore[arg-type]
    net.set_field(conv, ("convolution_param", "num_output"), np.int64(16))  # numpy scalars pass
    assert conv.param.convolution_param.num_output == 16
    with pytest.raises(TypeError, match=r"^Net.set_blobs: blobs must be a list of arrays, not "
                                        r"ndarray$"):
        net.set_blobs(conv, np.zeros((2, 2)))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^Net.set_blobs: blob 0 must hold real numbers, not "
                                        r"object$"):
        net.set_blobs(conv, [np.array([None, 1])])
    with pytest.raises(TypeError, match=r"^Net.set_blobs: blob 1 must hold real numbers, not "
                                        r"complex128$"):
        net.set_blobs(conv, [np.zeros(3), np.zeros(3, complex)])


def test_param_spec_arguments(net: bnfuse.Net) -> None:
    conv = net.layer("conv1")
    with pytest.raises(TypeError, match=r"^Net.set_param_spec_count: count must be an integer"):
        net.set_param_spec_count(conv, "1")  # type: ignore[arg-type]
    with pytest.raises(bnfuse.BnfuseError,
                       match=r"^Net.set_param_spec_count: count must be at least 0, got -1$"):
        net.set_param_spec_count(conv, -1)
    with pytest.raises(bnfuse.BnfuseError, match=r"^Net.add_param_spec: layer 'conv1' has \d+ "
                                                 r"param entries, no entry 9$"):
        net.add_param_spec(conv, like=9)


def test_layer_lookup_and_example_path_want_strings(net: bnfuse.Net) -> None:
    with pytest.raises(TypeError, match=r"^Net.layer: name must be a str, not ndarray$"):
        net.layer(np.array(["conv1", "conv2"]))  # type: ignore[arg-type]
    with pytest.raises(bnfuse.BnfuseError, match=r"the net has no layer named 'xxxxxxxx") as info:
        net.layer("x" * 10_000)
    assert len(str(info.value)) < 200  # the name is quoted in part
    with pytest.raises(TypeError, match=r"^example_path: kind must be a str, not ndarray$"):
        bnfuse.example_path(np.array(["prototxt", "x"]))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [[], 1.5, None], ids=repr)
def test_fold_names_itself_in_its_argument_errors(bad: object) -> None:
    with pytest.raises(TypeError, match=r"^fold: prototxt must be a path, bytes or an open "):
        bnfuse.fold(bad, bnfuse.example_path("caffemodel"))  # type: ignore[arg-type]
    if bad is not None:  # the caffemodel is optional
        with pytest.raises(TypeError, match=r"^fold: caffemodel must be a path, bytes or an "):
            bnfuse.fold(bnfuse.example_path(), bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bad", "error", "words"), [
    ({"data": {"x": 1}}, TypeError, "input_shapes['data'] must be a sequence of ints"),
    ({"data": "1,3"}, TypeError, "input_shapes['data'] must be a sequence of ints"),
    ({3: (1, 3)}, TypeError, "the keys of input_shapes must be blob names (str), not int"),
    ({"data": (1, 0)}, bnfuse.BnfuseError, "input_shapes['data'] must be a shape of 1 to 32 "
                                           "dimensions from 1 to 2147483647, got (1, 0)"),
    ({"data": (1,) * 33}, bnfuse.BnfuseError, "must be a shape of 1 to 32 dimensions"),
    ({"data": (2**31, 1)}, bnfuse.BnfuseError, "must be a shape of 1 to 32 dimensions"),
], ids=["dict", "text", "key", "zero", "33-axes", "past-int"])
def test_input_shapes_are_checked_by_one_rule(bad: object, error: type[Exception],
                                              words: str) -> None:
    # Found by the fuzzer: a shape of {"x": 1} raised int()'s ValueError in the estimate.
    from bnfuse.verification.randweights import random_weights

    for func, call in (
            ("random_weights", lambda: random_weights(bnfuse.example_path(),
                                                      input_shapes=bad)),  # type: ignore[arg-type]
            ("fold", lambda: bnfuse.fold(bnfuse.example_path(), bnfuse.example_path("caffemodel"),
                                         deploy=True, input_shapes=bad))):  # type: ignore[arg-type]
        with pytest.raises(error) as info:
            call()
        assert str(info.value).startswith(f"{func}: ") and words in str(info.value)
