"""The per-structure state machine, declared as data for the ``transitions`` library.

``STATES`` and ``TRANSITIONS`` are the whole lifecycle. Side effects live in named
callbacks on :class:`StructureModel`; each one writes the new state, a transitions-log row
and whatever the move carries (an attempt, a label, a failure) to the store in ONE SQLite
transaction, as a ``before`` callback. So the store changes before the in-memory state does
and before the runner starts the next side effect (submitting pw.x); a failed write aborts
the move.

One :class:`Lifecycle` holds one ``transitions.Machine`` for every model (measured: building
a Machine per structure costs ~80 µs, adding a model to a shared one ~40 µs including two
moves). Bulk moves (``mark_trained`` on 10,000 structures, requeue on resume) are checked
against the same table via :func:`allowed_sources` instead of going through the Machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from transitions import EventData, Machine
from transitions.core import MachineError

from mlip_autopipec.errors import AutopipecError

if TYPE_CHECKING:
    from mlip_autopipec.lifecycle.store import Store

PENDING = "pending"
RUNNING = "running"
SCF_RETRY = "scf_retry"
LABELLED = "labelled"
FAILED = "failed"
TRAINED = "trained"

STATES: list[str] = [PENDING, RUNNING, SCF_RETRY, LABELLED, FAILED, TRAINED]

#: Terminal for labelling: the runner never submits work for these again.
DONE_STATES = frozenset({LABELLED, FAILED, TRAINED})

#: Failure classes that no retry can fix (mirrors ``mlip_autopipec.oracle.PERMANENT``,
#: used when the oracle package is not importable, e.g. in a lifecycle-only install).
DEFAULT_PERMANENT = frozenset(
    {"missing_pseudopotential", "xc_conflict", "needs_spinorbit", "overlapping_atoms"}
)

TRANSITIONS: list[dict[str, Any]] = [
    # an attempt is about to be submitted
    {"trigger": "start", "source": PENDING, "dest": RUNNING, "before": "record_start"},
    # an attempt failed with a retryable class and the ladder has a next step
    {
        "trigger": "retry",
        "source": [RUNNING, SCF_RETRY],
        "dest": SCF_RETRY,
        "conditions": "result_is_retryable",
        "before": "record_retry",
    },
    # an attempt converged
    {
        "trigger": "label",
        "source": [RUNNING, SCF_RETRY],
        "dest": LABELLED,
        "conditions": "result_is_converged",
        "before": "record_label",
    },
    # preflight failure, permanent class, or the ladder is exhausted
    {
        "trigger": "quarantine",
        "source": [PENDING, RUNNING, SCF_RETRY],
        "dest": FAILED,
        "before": "record_failure",
    },
    # resume after a kill, or a graceful stop: the in-flight attempt is not trusted
    {
        "trigger": "requeue",
        "source": [RUNNING, SCF_RETRY],
        "dest": PENDING,
        "before": "record_requeue",
    },
    # the user asked to retry quarantined structures (``run --retry-failed``): the quarantine
    # was not the structure's fault; the ladder restarts in ``structures/NNNNNN/retry-<k>``
    {
        "trigger": "retry_failed",
        "source": FAILED,
        "dest": PENDING,
        "before": "record_requeue",
    },
    # a potential was fitted on it (again, for a refit after new structures were labelled)
    {
        "trigger": "train",
        "source": [LABELLED, TRAINED],
        "dest": TRAINED,
        "before": "record_trained",
    },
]


class IllegalTransitionError(AutopipecError):
    """A move the lifecycle table does not allow (a bug in the caller, not bad input)."""


def allowed_sources(trigger: str) -> frozenset[str]:
    """The states from which ``trigger`` is allowed by :data:`TRANSITIONS`."""
    for row in TRANSITIONS:
        if row["trigger"] == trigger:
            src = row["source"]
            return frozenset([src] if isinstance(src, str) else src)
    raise IllegalTransitionError(f"unknown trigger {trigger!r}")


def destination(trigger: str) -> str:
    """The state ``trigger`` leads to."""
    for row in TRANSITIONS:
        if row["trigger"] == trigger:
            return str(row["dest"])
    raise IllegalTransitionError(f"unknown trigger {trigger!r}")


def check_bulk_move(trigger: str, states: Iterable[str]) -> None:
    """Raise :class:`IllegalTransitionError` unless ``trigger`` is allowed from every state."""
    sources = allowed_sources(trigger)
    bad = sorted(set(states) - sources)
    if bad:
        raise IllegalTransitionError(
            f"cannot {trigger} structures in state(s) {', '.join(bad)} "
            f"(allowed from: {', '.join(sorted(sources))})"
        )


class StructureModel:
    """One structure as a ``transitions`` model; callbacks persist every move.

    Triggers take keyword arguments (``send_event=True``): ``result`` (an AttemptResult),
    ``number`` (attempt number being started), ``failure_class``/``message`` (quarantine
    without a result, e.g. from preflight), ``note`` (free text for the log).
    """

    state: str

    def __init__(self, structure_id: int, store: Store, permanent: frozenset[str]):
        self.structure_id = structure_id
        self.store = store
        self.permanent = permanent

    # -- conditions ---------------------------------------------------------------------
    def result_is_converged(self, event: EventData) -> bool:
        result = event.kwargs.get("result")
        return result is not None and bool(result.ok)

    def result_is_retryable(self, event: EventData) -> bool:
        result = event.kwargs.get("result")
        return (
            result is not None and not result.ok and str(result.failure_class) not in self.permanent
        )

    # -- side effects (each is one store transaction) -----------------------------------
    def _move(self, event: EventData) -> tuple[str, str, str]:
        assert event.transition is not None
        return event.event.name, event.transition.source, str(event.transition.dest)

    def record_start(self, event: EventData) -> None:
        trigger, source, dest = self._move(event)
        note = f"attempt {event.kwargs.get('number', '?')}"
        self.store.apply_transition(self.structure_id, trigger, source, dest, note=note)

    def record_retry(self, event: EventData) -> None:
        trigger, source, dest = self._move(event)
        result = event.kwargs["result"]
        self.store.apply_transition(
            self.structure_id,
            trigger,
            source,
            dest,
            attempt=result,
            note=f"attempt {result.number}: {result.failure_class}",
        )

    def record_label(self, event: EventData) -> None:
        trigger, source, dest = self._move(event)
        result = event.kwargs["result"]
        self.store.apply_transition(
            self.structure_id,
            trigger,
            source,
            dest,
            attempt=result,
            label=result,
            note=f"attempt {result.number}: converged",
        )

    def record_failure(self, event: EventData) -> None:
        trigger, source, dest = self._move(event)
        result = event.kwargs.get("result")
        failure_class = event.kwargs.get("failure_class") or (
            result.failure_class if result is not None else "unknown"
        )
        message = event.kwargs.get("message") or (result.message if result is not None else "")
        # A preflight result never ran pw.x: keep it as the reason, not as an attempt.
        ran = result is not None and not event.kwargs.get("preflight", False)
        self.store.apply_transition(
            self.structure_id,
            trigger,
            source,
            dest,
            attempt=result if ran else None,
            failure=(str(failure_class), str(message)),
            note=str(failure_class),
        )

    def record_requeue(self, event: EventData) -> None:
        trigger, source, dest = self._move(event)
        self.store.apply_transition(
            self.structure_id, trigger, source, dest, note=event.kwargs.get("note", "")
        )

    def record_trained(self, event: EventData) -> None:
        trigger, source, dest = self._move(event)
        self.store.apply_transition(
            self.structure_id, trigger, source, dest, note=event.kwargs.get("note", "")
        )


class Lifecycle:
    """The one ``transitions.Machine`` shared by every structure model of a run."""

    def __init__(self, store: Store, permanent: Iterable[str] = DEFAULT_PERMANENT):
        self.store = store
        self.permanent = frozenset(permanent)
        self.machine = Machine(
            model=None,
            states=STATES,
            transitions=TRANSITIONS,
            initial=None,
            auto_transitions=False,
            send_event=True,
        )
        self._models: dict[int, StructureModel] = {}

    def model(self, structure_id: int, state: str | None = None) -> StructureModel:
        """The live model of a structure (created from its stored state when needed)."""
        found = self._models.get(structure_id)
        if found is not None:
            return found
        if state is None:
            state = self.store.state_of(structure_id)
        model = StructureModel(structure_id, self.store, self.permanent)
        self.machine.add_model(model, initial=state)
        self._models[structure_id] = model
        return model

    def release(self, structure_id: int) -> None:
        """Drop a model once the runner is done with it (keeps memory flat for big runs)."""
        model = self._models.pop(structure_id, None)
        if model is not None:
            self.machine.remove_model(model)

    def fire(self, structure_id: int, trigger: str, **kwargs: Any) -> str:
        """Apply ``trigger`` to a structure; returns the new state.

        Raises :class:`IllegalTransitionError` for a move the table forbids, including a
        move whose condition fails (e.g. ``label`` with an unconverged result).
        """
        if trigger not in self.machine.events:
            raise IllegalTransitionError(f"unknown trigger {trigger!r}")
        model = self.model(structure_id)
        before = model.state
        try:
            # ``trigger`` is added to every model by transitions.Machine.add_model
            moved = model.trigger(trigger, **kwargs)  # type: ignore[attr-defined]
        except MachineError as exc:
            raise IllegalTransitionError(
                f"structure {structure_id}: cannot {trigger} from state {before!r}: {exc.value}"
            ) from exc
        if not moved:
            raise IllegalTransitionError(
                f"structure {structure_id}: {trigger} refused from state {before!r} "
                "(its condition does not hold for this result)"
            )
        return model.state
