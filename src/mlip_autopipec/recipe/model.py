"""The loaded recipe and the structures it names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms


@dataclass(frozen=True)
class Recipe:
    """A validated recipe.

    ``data`` is the whole recipe as plain Python types with every schema default filled in
    and relative paths (structure files, ``oracle.pseudo_dir``) resolved against ``base_dir``.
    ``trainer.elements`` defaults to the sorted elements of the structures;
    ``oracle.input_data.system.ecutrho`` defaults to 8 × ``ecutwfc``; ``control.tprnfor``
    and ``control.tstress`` are always true.
    """

    name: str
    path: Path
    base_dir: Path
    data: dict[str, Any]

    @property
    def structures(self) -> list[dict[str, Any]]:
        """The ``structures`` entries."""
        return list(self.data["structures"])

    @property
    def oracle(self) -> dict[str, Any]:
        """The ``oracle`` section."""
        return dict(self.data["oracle"])

    @property
    def trainer(self) -> dict[str, Any]:
        """The ``trainer`` section."""
        return dict(self.data["trainer"])

    @property
    def execution(self) -> dict[str, Any]:
        """The ``execution`` section."""
        return dict(self.data["execution"])


@dataclass(frozen=True)
class SourcedAtoms:
    """One structure, a readable label of where it came from, and the same as data.

    ``origin``: entry index, source kind, the source's parameters and the transformations
    applied (strain tensor, rattle copy, ...); JSON-safe, stored as ``structures.origin``.
    """

    source: str
    atoms: Atoms
    origin: dict[str, Any] = field(default_factory=dict)
