"""The one table of failure classes and messages (oracle/failures.py) and what derives from it."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mlip_autopipec.oracle import failures
from mlip_autopipec.oracle.failures import (
    CLASSES,
    ERROR_RULES,
    PERMANENT,
    RETRYABLE,
    FailureClass,
    classify_error,
)
from mlip_autopipec.oracle.ladder import DEFAULT_LADDERS, failure_docs_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "failure-classes.md"


def _schema() -> dict:
    text = resources.files("mlip_autopipec").joinpath("schemas", "recipe.schema.json")
    return json.loads(text.read_text(encoding="utf-8"))


def test_schema_ladder_classes_are_the_tables_retryable_classes() -> None:
    ladders = _schema()["properties"]["oracle"]["properties"]["retry"]["properties"]["ladders"]
    assert list(ladders["properties"]) == list(RETRYABLE)
    assert ladders["properties"] == failures.schema_ladder_properties()
    assert ladders["additionalProperties"] is False


def test_classes_are_consistent() -> None:
    names = [c.name for c in CLASSES]
    assert len(names) == len(set(names))
    constants = {v for k, v in vars(FailureClass).items() if k.isupper() and isinstance(v, str)}
    assert constants == set(names) == set(FailureClass.ALL)
    assert not any(c.permanent and c.retryable for c in CLASSES)
    assert PERMANENT == {c.name for c in CLASSES if c.permanent}
    assert FailureClass.CONVERGED not in PERMANENT and FailureClass.CONVERGED not in RETRYABLE
    assert all(c.description for c in CLASSES)
    # every rule names a class of the table; every default ladder a retryable class
    assert {r.failure_class for r in ERROR_RULES} <= set(names)
    assert set(DEFAULT_LADDERS) <= set(RETRYABLE)


def test_lifecycle_uses_the_same_permanent_set() -> None:
    from mlip_autopipec.lifecycle import machine

    # the lifecycle has no copy of its own: its default is the oracle table's set
    assert not hasattr(machine, "DEFAULT_PERMANENT")
    assert machine.is_permanent.__defaults__ == (PERMANENT,)
    assert machine.PERMANENT is PERMANENT


def test_importable_without_ase_or_numpy() -> None:
    code = (
        "import sys; import mlip_autopipec.oracle.failures as f; "
        "from mlip_autopipec.oracle import PERMANENT; "
        "assert PERMANENT is f.PERMANENT; "
        "bad = [m for m in ('ase', 'numpy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docs_are_generated_from_the_tables() -> None:
    assert DOCS.read_text(encoding="utf-8") == failure_docs_markdown()
    for c in CLASSES:
        assert f"`{c.name}`" in DOCS.read_text(encoding="utf-8")


PERMANENT_MESSAGES = {
    "FR-PP please use lspinorb=.true.": FailureClass.NEEDS_SPINORBIT,
    "conflicting values for igcx": FailureClass.XC_CONFLICT,
    "atoms #  1 and #  2 overlap": FailureClass.OVERLAPPING_ATOMS,
}


@settings(max_examples=200, deadline=None)
@given(
    routine=st.sampled_from(["cdiaghg", "iosys", "electrons", "c_bands", "readpp", "xyz"]),
    marker=st.sampled_from(sorted(PERMANENT_MESSAGES)),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_a_permanent_message_wins_over_any_routine_or_text(
    routine: str, marker: str, before: str, after: str
) -> None:
    """Precedence: a message naming a hopeless cause is never retried as something broader."""
    assert classify_error(routine, f"{before} {marker} {after}") == PERMANENT_MESSAGES[marker]


@settings(max_examples=200, deadline=None)
@given(routine=st.text(max_size=20), message=st.text(max_size=80))
def test_classify_is_the_first_matching_rule(routine: str, message: str) -> None:
    got = classify_error(routine, message)
    first = next(r for r in ERROR_RULES if r.matches(routine, message))
    assert got == first.failure_class
    assert got in FailureClass.ALL and got != FailureClass.CONVERGED
