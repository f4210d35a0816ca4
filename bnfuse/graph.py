"""Single-assignment blob versions: producers, readers and net outputs.

Caffe lets a layer write a blob name that already exists -- in place
(``bottom: "conv1" top: "conv1"``) or by reusing a name later in the net. The
name alone therefore does not say *which* values a layer reads. This module
gives every write its own :class:`BlobVersion`, so that "conv1 as the
convolution wrote it", "conv1 after BatchNorm" and "conv1 after Scale" are three
different things with their own producer and readers.

Rules, in net order (the same order Caffe's ``Net::Init`` uses):

- A layer's bottoms are resolved before its tops: each bottom reads the latest
  version of its name. A name read before anything wrote it is a net input:
  version 0 with producer ``None``.
- Each top creates a new version of its name, numbered 0, 1, 2, ... per name.
  An in-place top is therefore a new version of the name it read.
- A version is a net **output** when it is the final version of its name and
  no layer reads it. This is Caffe's rule: Caffe keeps a set of "available"
  names, removes a name when a layer reads it and adds it when a layer writes
  it; the names left at the end are the outputs, and the values they hold are
  the final versions. An earlier version that nobody reads is simply lost, not
  an output.

Everything is built in one pass, ``O(total bottoms + tops)``; lookups of one
version or name are ``O(1)`` (or the length of the answer); the whole-net
queries (:meth:`Graph.outputs`, :meth:`Graph.depths`, :meth:`Graph.between`)
are one more pass.

This module is the only place that answers questions about the blob graph:
the planner, the comparison and the local check all ask a :class:`Graph`. It is
also public: ``bnfuse.Graph`` and ``bnfuse.BlobVersion``, built for a loaded net
by :meth:`bnfuse.Net.graph`, are the graph view a converter uses (an ONNX value
per version, the producers and readers of each).

Example:
    >>> from types import SimpleNamespace as L
    >>> g = build_graph([
    ...     L(name="conv", type="Convolution", bottoms=("data",), tops=("x",)),
    ...     L(name="bn", type="BatchNorm", bottoms=("x",), tops=("x",)),
    ... ])
    >>> [str(v) for v in g.writes[1]], g.producer(g.final_version("x")), g.outputs()
    (['x#1'], 1, [BlobVersion(name='x', version=1, producer=1)])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bnfuse.errors import BnfuseError

__all__ = ["BlobVersion", "Graph", "LayerLike", "build_graph"]


class LayerLike(Protocol):
    """What the graph needs from a layer: its name, type and blob names.

    :class:`bnfuse.net.Layer` fits; so does any object with these attributes. The
    executor's :class:`bnfuse.verification.executor.LayerLike` extends this one with
    the layer's parameters and weights.

    Example:
        >>> from types import SimpleNamespace
        >>> g = build_graph([SimpleNamespace(name="a", type="ReLU", bottoms=("x",),
        ...                                  tops=("x",))])
        >>> [str(v) for v in g.writes[0]]
        ['x#1']
    """

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def bottoms(self) -> Sequence[str]: ...

    @property
    def tops(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class BlobVersion:
    """One assignment of a blob name.

    ``version`` counts the writes of ``name`` from 0; ``producer`` is the index
    of the layer that wrote it, or ``None`` for a net input that no layer
    produces.

    Example:
        >>> str(BlobVersion("conv1", 2, 5))
        'conv1#2'
    """

    name: str
    version: int
    producer: int | None

    def __str__(self) -> str:
        return f"{self.name}#{self.version}"


class Graph:
    """Blob versions of a net: what each layer reads and writes, and who reads what.

    Build it with :func:`build_graph`. ``reads[i]`` and ``writes[i]`` are the
    versions layer ``i`` reads (one per bottom, in order) and writes (one per
    top, in order).

    Example:
        >>> from types import SimpleNamespace as L
        >>> g = build_graph([L(name="r", type="ReLU", bottoms=("in",), tops=("out",))])
        >>> v = g.reads[0][0]
        >>> v.producer is None, g.readers(v), g.is_output(g.writes[0][0])
        (True, [0], True)
    """

    def __init__(self, layers: Iterable[LayerLike]) -> None:
        versions: dict[str, list[BlobVersion]] = {}
        readers: dict[BlobVersion, list[int]] = {}
        reads: list[tuple[BlobVersion, ...]] = []
        writes: list[tuple[BlobVersion, ...]] = []
        # Kept (by reference) so that questions about layers, such as "is it weighted",
        # can be asked by a caller-given predicate.
        self._layers: tuple[LayerLike, ...] = tuple(layers)
        for index, layer in enumerate(self._layers):
            layer_reads: list[BlobVersion] = []
            for bottom in layer.bottoms:
                history = versions.get(bottom)
                if history is None:
                    # Read before any layer wrote it: a net input.
                    current = BlobVersion(bottom, 0, None)
                    versions[bottom] = [current]
                    readers[current] = []
                else:
                    current = history[-1]
                who = readers[current]
                # A layer reading one version twice (Eltwise x + x) is one reader;
                # its entries are consecutive because layers come in order.
                if not who or who[-1] != index:
                    who.append(index)
                layer_reads.append(current)
            layer_writes: list[BlobVersion] = []
            for top in layer.tops:
                history = versions.setdefault(top, [])
                new = BlobVersion(top, len(history), index)
                history.append(new)
                readers[new] = []
                layer_writes.append(new)
            reads.append(tuple(layer_reads))
            writes.append(tuple(layer_writes))
        self._versions = versions
        self._readers = readers
        #: ``reads[i]``: the versions layer ``i`` reads, one per bottom.
        self.reads: tuple[tuple[BlobVersion, ...], ...] = tuple(reads)
        #: ``writes[i]``: the versions layer ``i`` writes, one per top.
        self.writes: tuple[tuple[BlobVersion, ...], ...] = tuple(writes)

    @property
    def layers(self) -> tuple[LayerLike, ...]:
        """The layers the graph was built from, in order: the indices are positions here.

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([L(name="r", type="ReLU", bottoms=("x",), tops=("y",))])
            >>> g.layers[g.producer(g.final_version("y"))].name
            'r'
        """
        return self._layers

    def _known(self, version: BlobVersion) -> list[int]:
        who = self._readers.get(version)
        if who is None:
            raise BnfuseError(f"blob version {version} does not belong to this net's graph")
        return who

    def readers(self, version: BlobVersion) -> list[int]:
        """Indices of the layers that read ``version``, ascending, each once.

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([L(name="s", type="Split", bottoms=("x",), tops=("a",)),
            ...                  L(name="t", type="ReLU", bottoms=("x",), tops=("b",))])
            >>> g.readers(g.reads[0][0])
            [0, 1]
        """
        return list(self._known(version))

    def producer(self, version: BlobVersion) -> int | None:
        """Index of the layer that wrote ``version``; ``None`` for a net input.

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([L(name="c", type="ReLU", bottoms=("x",), tops=("y",))])
            >>> g.producer(g.writes[0][0]), g.producer(g.reads[0][0])
            (0, None)
        """
        self._known(version)
        return version.producer

    def versions_of(self, name: str) -> tuple[BlobVersion, ...]:
        """Every version of ``name`` in order; empty when the net never mentions it.

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([L(name="r", type="ReLU", bottoms=("x",), tops=("x",))])
            >>> [str(v) for v in g.versions_of("x")]
            ['x#0', 'x#1']
        """
        return tuple(self._versions.get(name, ()))

    def final_version(self, name: str) -> BlobVersion:
        """The last version of ``name``: what the name holds after the whole net ran.

        Raises :class:`~bnfuse.errors.BnfuseError` for a name the net never uses.

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([L(name="r", type="ReLU", bottoms=("x",), tops=("x",))])
            >>> g.final_version("x")
            BlobVersion(name='x', version=1, producer=0)
        """
        history = self._versions.get(name)
        if not history:
            raise BnfuseError(f"no blob named {name!r} in the net")
        return history[-1]

    def writers(self, name: str) -> list[int]:
        """Indices of the layers that wrote ``name``, in net order, one per write.

        Empty when no layer writes it (a net input, or a name the net never uses).

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([L(name="c", type="Convolution", bottoms=("x",), tops=("y",)),
            ...                  L(name="r", type="ReLU", bottoms=("y",), tops=("y",))])
            >>> g.writers("y"), g.writers("x"), g.writers("nope")
            ([0, 1], [], [])
        """
        return [v.producer for v in self._versions.get(name, ()) if v.producer is not None]

    def last_writer(self, name: str) -> int | None:
        """Index of the layer whose write ``name`` holds after the whole net ran.

        ``None`` when no layer writes ``name`` (a net input, or a name the net never uses).

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([L(name="c", type="Convolution", bottoms=("x",), tops=("y",)),
            ...                  L(name="r", type="ReLU", bottoms=("y",), tops=("y",))])
            >>> g.last_writer("y"), g.last_writer("x")
            (1, None)
        """
        history = self._versions.get(name)
        return history[-1].producer if history else None

    def is_output(self, version: BlobVersion) -> bool:
        """True when ``version`` is a net output: the final version of its name, read by nobody.

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([L(name="a", type="ReLU", bottoms=("x",), tops=("y",)),
            ...                  L(name="b", type="ReLU", bottoms=("y",), tops=("y",))])
            >>> g.is_output(g.writes[0][0]), g.is_output(g.writes[1][0])
            (False, True)
        """
        who = self._known(version)
        return not who and self._versions[version.name][-1] == version

    def outputs(self) -> list[BlobVersion]:
        """All net outputs, ordered by the layer (then top) that wrote them.

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([L(name="s", type="Slice", bottoms=("x",), tops=("a", "b"))])
            >>> [v.name for v in g.outputs()]
            ['a', 'b']
        """
        return [v for layer_writes in self.writes for v in layer_writes if self.is_output(v)]

    def inputs(self) -> list[BlobVersion]:
        """Versions no layer produces (read before any write), in first-read order.

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([L(name="e", type="Eltwise", bottoms=("a", "b"), tops=("c",))])
            >>> [str(v) for v in g.inputs()]
            ['a#0', 'b#0']
        """
        seen: dict[BlobVersion, None] = {}
        for layer_reads in self.reads:
            for v in layer_reads:
                if v.producer is None:
                    seen.setdefault(v)
        return list(seen)


    # The predicate sees the layers the graph was built from, which may carry more than
    # LayerLike (parameters, weights): it is typed for those, not for the protocol.
    def depths(self, is_weighted: Callable[[Any], bool]) -> dict[BlobVersion, int]:
        """For every version, the number of weighted layers on the longest path to it.

        A path runs from the net inputs (depth 0) through the layers' reads and
        writes; a layer adds 1 to the deepest version it reads when
        ``is_weighted(layer)`` is true, else 0. Rounding accumulates in weighted
        layers, which is why the comparison widens its tolerance with this depth.

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([
            ...     L(name="c1", type="Convolution", bottoms=("data",), tops=("a",)),
            ...     L(name="r", type="ReLU", bottoms=("a",), tops=("a",)),
            ...     L(name="c2", type="Convolution", bottoms=("a",), tops=("b",)),
            ...     L(name="sum", type="Eltwise", bottoms=("data", "b"), tops=("s",)),
            ... ])
            >>> depth = g.depths(lambda layer: layer.type == "Convolution")
            >>> {str(v): d for v, d in depth.items()}
            {'data#0': 0, 'a#0': 1, 'a#1': 1, 'b#0': 2, 's#0': 2}
        """
        depth: dict[BlobVersion, int] = {v: 0 for v in self.inputs()}
        for layer, layer_reads, layer_writes in zip(self._layers, self.reads, self.writes,
                                                    strict=True):
            value = max((depth[v] for v in layer_reads), default=0)
            if is_weighted(layer):
                value += 1
            for v in layer_writes:
                depth[v] = value
        return depth

    def between(self, region: Iterable[int]) -> set[int]:
        """Layers outside ``region`` that lie on a path from one region layer to another.

        ``region`` holds layer indices. A layer is returned when it reads
        (directly or through other layers) a version written by a region layer
        *and* a region layer reads (directly or through other layers) what it
        writes: the unchanged layers sandwiched between changed ones.

        Example:
            >>> from types import SimpleNamespace as L
            >>> g = build_graph([
            ...     L(name="c1", type="Convolution", bottoms=("data",), tops=("a",)),
            ...     L(name="r", type="ReLU", bottoms=("a",), tops=("a",)),
            ...     L(name="p", type="Pooling", bottoms=("a",), tops=("p",)),
            ...     L(name="c2", type="Convolution", bottoms=("p",), tops=("b",)),
            ...     L(name="tail", type="ReLU", bottoms=("b",), tops=("out",)),
            ... ])
            >>> sorted(g.between({0, 3})), sorted(g.between({0})), sorted(g.between({3}))
            ([1, 2], [], [])
        """
        chosen = set(region)
        sources = [[v.producer for v in layer_reads if v.producer is not None]
                   for layer_reads in self.reads]
        downstream: set[int] = set()
        for index, layer_sources in enumerate(sources):
            if index not in chosen and any(s in chosen or s in downstream
                                           for s in layer_sources):
                downstream.add(index)
        upstream: set[int] = set()
        for index in range(len(sources) - 1, -1, -1):
            if index in chosen or index in upstream:
                upstream.update(s for s in sources[index] if s not in chosen)
        return downstream & upstream

def build_graph(layers: Iterable[LayerLike]) -> Graph:
    """Build the :class:`Graph` of ``layers`` given in net order.

    Example:
        >>> from types import SimpleNamespace as L
        >>> g = build_graph([L(name="c", type="Convolution", bottoms=("data",), tops=("c",))])
        >>> g.final_version("c").producer
        0
    """
    return Graph(layers)
