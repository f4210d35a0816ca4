"""docs/bad-inputs.md shows exactly the messages bnfuse prints today."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # the fuzz package lives at the project root
    sys.path.insert(0, str(_ROOT))

from fuzz import bad_inputs  # noqa: E402


def test_bad_inputs_table_is_current() -> None:
    """Regenerate the table by running bnfuse; it must equal the one in the document."""
    documented = bad_inputs.documented_table(bad_inputs.DOC.read_text())
    generated = bad_inputs.table()
    assert generated == documented, (
        "docs/bad-inputs.md is out of date; run: python -m fuzz.bad_inputs --write")


def test_every_bad_input_is_refused_with_the_error_family() -> None:
    """Each row is a BnfuseError subclass or a documented 'no error' outcome, in one line."""
    from bnfuse import errors
    from bnfuse.io.upgrade import UpgradeError
    from bnfuse.verification.budget import MemoryBudgetError

    classes = {name: getattr(errors, name) for name in errors.__all__}
    classes[UpgradeError.__name__] = UpgradeError
    classes[MemoryBudgetError.__name__] = MemoryBudgetError
    for case in bad_inputs.cases():
        kind, message = bad_inputs.run_case(case)
        if case.type_error:  # API misuse: bnfuse's own argument check, naming the argument
            assert kind == "TypeError", case.name
        else:
            assert kind == "(no error)" or issubclass(classes[kind], errors.BnfuseError), \
                case.name
        assert "\n" not in message
