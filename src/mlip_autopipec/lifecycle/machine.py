"""The per-structure state machine, declared as data for the ``transitions`` library.

``STATES``, ``TRANSITIONS`` (the moves) and ``DECISIONS`` (what a finished attempt leads to)
are the whole lifecycle. ``DECISIONS`` are ordered conditional rows on the one trigger
``attempt_done``: ``transitions`` takes the first row whose conditions hold (label if
converged, quarantine if permanent, retry if the ladder has a next attempt, else quarantine),
so the table, not the runner, decides. "Permanent" is :data:`mlip_autopipec.oracle.PERMANENT`,
asked through :func:`is_permanent` only.

ONE machine-wide ``before_state_change`` hook (:meth:`StructureModel.persist`) writes every
move to the store: the new state, a transitions-log row and whatever the move carries (an
attempt, a label, a failure), in ONE SQLite transaction. So the store changes before the
in-memory state does and before the runner starts the next side effect (submitting pw.x); a
failed write aborts the move.

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
from mlip_autopipec.oracle.failures import PERMANENT

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

TRANSITIONS: list[dict[str, Any]] = [
    # an attempt is about to be submitted
    {"trigger": "start", "source": PENDING, "dest": RUNNING},
    # an attempt failed with a retryable class and the ladder has a next step
    {
        "trigger": "retry",
        "source": [RUNNING, SCF_RETRY],
        "dest": SCF_RETRY,
        "conditions": "result_is_retryable",
    },
    # an attempt converged
    {
        "trigger": "label",
        "source": [RUNNING, SCF_RETRY],
        "dest": LABELLED,
        "conditions": "result_is_converged",
    },
    # preflight failure, or no attempt can be planned at all
    {"trigger": "quarantine", "source": [PENDING, RUNNING, SCF_RETRY], "dest": FAILED},
    # resume after a kill, or a graceful stop: the in-flight attempt is not trusted
    {"trigger": "requeue", "source": [RUNNING, SCF_RETRY], "dest": PENDING},
    # the user asked to retry quarantined structures (``run --retry-failed``): the quarantine
    # was not the structure's fault; the ladder restarts in ``structures/NNNNNN/retry-<k>``
    {"trigger": "retry_failed", "source": FAILED, "dest": PENDING},
    # a potential was fitted on it (again, for a refit after new structures were labelled)
    {"trigger": "train", "source": [LABELLED, TRAINED], "dest": TRAINED},
]

_IN_FLIGHT = [RUNNING, SCF_RETRY]

#: What a finished attempt leads to: the first row whose conditions hold is taken.
DECISIONS: list[dict[str, Any]] = [
    {
        "trigger": "attempt_done",
        "source": _IN_FLIGHT,
        "dest": LABELLED,
        "conditions": "result_is_converged",
    },
    {
        "trigger": "attempt_done",
        "source": _IN_FLIGHT,
        "dest": FAILED,
        "conditions": "result_is_permanent",
    },
    {
        "trigger": "attempt_done",
        "source": _IN_FLIGHT,
        "dest": SCF_RETRY,
        "conditions": "has_next_attempt",
    },
    # the ladder is exhausted
    {"trigger": "attempt_done", "source": _IN_FLIGHT, "dest": FAILED},
]


def is_permanent(result: Any, permanent: Iterable[str] = PERMANENT) -> bool:
    """True when no retry can fix ``result`` (its failure class is permanent)."""
    return result is not None and not result.ok and str(result.failure_class) in permanent


class IllegalTransitionError(AutopipecError):
    """A move the lifecycle table does not allow (a bug in the caller, not bad input)."""


def allowed_sources(trigger: str) -> frozenset[str]:
    """The states from which ``trigger`` is allowed by :data:`TRANSITIONS`/:data:`DECISIONS`."""
    sources: set[str] = set()
    for row in (*TRANSITIONS, *DECISIONS):
        if row["trigger"] == trigger:
            src = row["source"]
            sources.update([src] if isinstance(src, str) else src)
    if not sources:
        raise IllegalTransitionError(f"unknown trigger {trigger!r}")
    return frozenset(sources)


def destination(trigger: str) -> str:
    """The state ``trigger`` leads to (only for a trigger with one destination)."""
    dests = {str(row["dest"]) for row in (*TRANSITIONS, *DECISIONS) if row["trigger"] == trigger}
    if not dests:
        raise IllegalTransitionError(f"unknown trigger {trigger!r}")
    if len(dests) > 1:
        raise IllegalTransitionError(f"{trigger!r} has conditional destinations")
    return dests.pop()


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
    """One structure as a ``transitions`` model; :meth:`persist` writes every move.

    Triggers take keyword arguments (``send_event=True``): ``result`` (an AttemptResult),
    ``next_request`` (the next attempt the oracle planned, for ``attempt_done``), ``number``
    (attempt number being started), ``failure_class``/``message`` (quarantine without a
    result, e.g. from preflight, or a message for the record), ``preflight`` (the result
    never ran pw.x), ``note`` (free text for the log).
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

    def result_is_permanent(self, event: EventData) -> bool:
        return is_permanent(event.kwargs.get("result"), self.permanent)

    def result_is_retryable(self, event: EventData) -> bool:
        result = event.kwargs.get("result")
        return result is not None and not result.ok and not is_permanent(result, self.permanent)

    def has_next_attempt(self, event: EventData) -> bool:
        return event.kwargs.get("next_request") is not None and self.result_is_retryable(event)

    # -- the one side effect: one store transaction per move -----------------------------
    def persist(self, event: EventData) -> None:
        """``before_state_change`` of every move: write it, with its payload, to the store."""
        assert event.transition is not None
        trigger = event.event.name
        source, dest = event.transition.source, str(event.transition.dest)
        kw = event.kwargs
        result: Any = kw.get("result")  # present for every move into scf_retry/labelled
        ran = result is not None and not kw.get("preflight", False)
        payload: dict[str, Any] = {"note": str(kw.get("note", ""))}
        if dest == RUNNING:
            payload["note"] = f"attempt {kw.get('number', '?')}"
        elif dest == SCF_RETRY:
            payload.update(attempt=result, note=f"attempt {result.number}: {result.failure_class}")
        elif dest == LABELLED:
            payload.update(attempt=result, label=result, note=f"attempt {result.number}: converged")
        elif dest == FAILED:
            failure_class = kw.get("failure_class") or (
                result.failure_class if result is not None else "unknown"
            )
            message = kw.get("message") or (result.message if result is not None else "")
            if trigger == "attempt_done" and not is_permanent(result, self.permanent):
                # the last row: the ladder had no next attempt
                message = (
                    f"retries exhausted after {kw.get('attempts', result.number)} attempt(s); "
                    f"last: {result.message}"
                )
            # A preflight result never ran pw.x: keep it as the reason, not as an attempt.
            payload.update(
                attempt=result if ran else None,
                failure=(str(failure_class), str(message)),
                note=str(failure_class),
            )
        self.store.apply_transition(self.structure_id, trigger, source, dest, **payload)


class Lifecycle:
    """The one ``transitions.Machine`` shared by every structure model of a run."""

    def __init__(self, store: Store, permanent: Iterable[str] = PERMANENT):
        self.store = store
        self.permanent = frozenset(permanent)
        self.machine = Machine(
            model=None,
            states=STATES,
            transitions=[*TRANSITIONS, *DECISIONS],
            initial=None,
            auto_transitions=False,
            send_event=True,
            before_state_change="persist",
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
