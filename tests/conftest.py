"""Shared test fixtures.

Tests that read the reference material in ``../shared`` (golden fixtures made by
real Caffe, the prototxt corpus) use the ``shared`` fixture and skip cleanly when
it is absent, as it is in a user's fresh clone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: ``../shared`` seen from the project root; absent in a fresh clone.
SHARED_DIR = Path(__file__).resolve().parent.parent.parent / "shared"


def shared_path(*parts: str) -> Path:
    """Return a path inside ``../shared``, skipping the calling test when it is absent."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference material not available: ../shared/{'/'.join(parts)}")
    return path


def golden_cases() -> list[str]:
    """Names of the golden cases, or an empty list when ``../shared`` is absent."""
    root = SHARED_DIR / "golden"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def corpus_prototxts() -> list[str]:
    """File names of the public prototxt corpus, or an empty list when absent."""
    root = SHARED_DIR / "corpus" / "prototxt"
    return sorted(p.name for p in root.glob("*.prototxt")) if root.is_dir() else []


def real_models() -> list[str]:
    """Names of the real-Caffe models with reference outputs, or an empty list."""
    root = SHARED_DIR / "corpus" / "real"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@pytest.fixture
def shared() -> Path:
    """The ``../shared`` folder; the test is skipped when it is absent."""
    return shared_path()
