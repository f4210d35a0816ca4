"""Tests of bnfuse.errors: the error family, its structured fields and pickling."""

from __future__ import annotations

import copy
import pickle

import pytest

from bnfuse import errors
from bnfuse.errors import (
    BnfuseError,
    CaffemodelError,
    InternalError,
    PrototxtSchemaError,
    PrototxtSyntaxError,
    UpgradeError,
)

FIELDS = ("path", "line", "column", "layer")


def _fields(error: BnfuseError) -> tuple[object, ...]:
    return tuple(getattr(error, name) for name in FIELDS)


def test_every_error_class_is_in_errors_all_and_in_the_family() -> None:
    classes = [getattr(errors, name) for name in errors.__all__]
    assert all(issubclass(cls, BnfuseError) for cls in classes)
    defined = {
        name for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert defined == set(errors.__all__)


def test_fields_default_to_none_and_leave_the_message_alone() -> None:
    plain = BnfuseError("net.prototxt: no layer named 'x'")
    assert str(plain) == "net.prototxt: no layer named 'x'"
    assert _fields(plain) == (None, None, None, None)
    located = BnfuseError("a message", path="a.prototxt", line=3, column=9, layer="conv1")
    assert str(located) == "a message"
    assert located.args == ("a message",)
    assert _fields(located) == ("a.prototxt", 3, 9, "conv1")


def test_syntax_error_keeps_its_signature_and_fills_the_fields() -> None:
    error = PrototxtSyntaxError("net.prototxt", 3, 7, "expected '}'")
    assert str(error) == "net.prototxt:3:7: expected '}'"
    assert _fields(error) == ("net.prototxt", 3, 7, None)
    assert (error.source, error.detail) == ("net.prototxt", "expected '}'")


def test_schema_error_at_a_place() -> None:
    error = PrototxtSchemaError.at("n.prototxt", 2, 5, "expected a number", layer="bn")
    assert str(error) == "n.prototxt:2:5: expected a number"
    assert _fields(error) == ("n.prototxt", 2, 5, "bn")
    assert error.detail == "expected a number"
    assert PrototxtSchemaError("no place").detail is None


def test_caffemodel_error_at_an_offset() -> None:
    error = CaffemodelError.at(
        22, "layer 'conv' blob 0: negative dimension", path="m.caffemodel", hint="copy it again",
        layer="conv",
    )
    assert str(error) == (
        "m.caffemodel: byte 22: layer 'conv' blob 0: negative dimension; copy it again"
    )
    assert (error.path, error.offset, error.layer) == ("m.caffemodel", 22, "conv")
    assert error.detail == "layer 'conv' blob 0: negative dimension"
    assert error.hint == "copy it again"
    bare = CaffemodelError.at(0, "invalid field number 0")
    assert str(bare) == "byte 0: invalid field number 0"
    assert (bare.path, bare.hint) == (None, None)
    assert CaffemodelError("closed").offset is None


def test_upgrade_error_moved_but_still_importable_from_upgrade() -> None:
    from bnfuse.io import upgrade

    assert upgrade.UpgradeError is UpgradeError
    assert issubclass(UpgradeError, PrototxtSchemaError)


def test_internal_error_is_its_own_class() -> None:
    assert issubclass(InternalError, BnfuseError)
    for cls in (PrototxtSyntaxError, PrototxtSchemaError, CaffemodelError, UpgradeError):
        assert not issubclass(cls, InternalError)
        assert not issubclass(InternalError, cls)


@pytest.mark.parametrize(
    "error",
    [
        BnfuseError("plain"),
        BnfuseError("located", path="a.prototxt", line=1, column=2, layer="c"),
        InternalError("plan and net disagree", layer="bn1"),
        PrototxtSyntaxError("net.prototxt", 3, 7, "expected '}'"),
        PrototxtSchemaError.at("net.prototxt", 4, 1, "expected an integer"),
        UpgradeError("model.prototxt: the net mixes V1 'layers' and current 'layer' entries"),
        CaffemodelError.at(5, "field 100 claims 9 bytes", path="m.caffemodel", hint="fix"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_pickle_and_copy_with_message_and_fields(error: BnfuseError) -> None:
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert clone.args == error.args
        assert _fields(clone) == _fields(error)
        assert vars(clone) == vars(error)
    if isinstance(error, CaffemodelError):
        clone = pickle.loads(pickle.dumps(error))
        assert (clone.offset, clone.detail, clone.hint) == (5, "field 100 claims 9 bytes", "fix")
