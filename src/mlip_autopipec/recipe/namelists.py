"""pw.x namelist keys, from ASE's list (``ase.io.espresso_namelist.keys.pw_keys``)."""

from __future__ import annotations

import re

from ase.io.espresso_namelist.keys import pw_keys

from mlip_autopipec.recipe.schema import did_you_mean

#: Keys pw.x < 7.1 (e.g. the Debian QE 6.7) still reads from &SYSTEM; ASE's list follows
#: QE 7.x where Hubbard parameters moved to the HUBBARD card.
_LEGACY: dict[str, set[str]] = {
    "system": {
        "lda_plus_u",
        "lda_plus_u_kind",
        "hubbard_u",
        "hubbard_j0",
        "hubbard_j",
        "hubbard_v",
        "u_projection_type",
    },
}

NAMELISTS: dict[str, set[str]] = {
    section: {k.lower() for k in keys} | _LEGACY.get(section, set())
    for section, keys in pw_keys.items()
}

#: Keys autopipec sets itself (from the structure or other recipe settings).
MANAGED: dict[str, str] = {
    "nat": "set from the structure",
    "ntyp": "set from the structure",
    "ibrav": "the cell is always given explicitly (ibrav = 0)",
    "celldm": "the cell comes from the structure",
    "a": "the cell comes from the structure",
    "b": "the cell comes from the structure",
    "c": "the cell comes from the structure",
    "cosab": "the cell comes from the structure",
    "cosac": "the cell comes from the structure",
    "cosbc": "the cell comes from the structure",
    "pseudo_dir": "use oracle.pseudo_dir",
    "outdir": "every attempt runs in its own directory",
    "prefix": "every attempt runs in its own directory",
}

_INDEXED = re.compile(r"^([a-z_0-9]+?)(\(.*\))?$")


def base_key(key: str) -> str:
    """``Hubbard_U(1)`` -> ``hubbard_u``."""
    m = _INDEXED.match(key.strip().lower())
    return m.group(1) if m else key.strip().lower()


def check_key(section: str, key: str) -> str | None:
    """None if ``key`` is a pw.x key of namelist ``section``, else a message saying why not."""
    name = base_key(key)
    if section not in NAMELISTS:
        return f"{section!r} is not a pw.x namelist"
    if name in MANAGED:
        return f"{key!r} is managed by autopipec ({MANAGED[name]}); remove it"
    if name in NAMELISTS[section]:
        return None
    home = [s for s in ("control", "system", "electrons", "ions", "cell") if name in NAMELISTS[s]]
    if home:
        return (
            f"{key!r} belongs to &{home[0].upper()} (input_data.{home[0]}), not &{section.upper()}"
        )
    hint = did_you_mean(name, sorted(NAMELISTS[section]))
    if not hint:
        everywhere = sorted(set().union(*NAMELISTS.values()))
        hint = did_you_mean(name, everywhere)
    return f"{key!r} is not a pw.x &{section.upper()} key{hint}"
