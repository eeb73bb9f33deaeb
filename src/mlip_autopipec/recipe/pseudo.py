"""Finding pseudopotential files the way pw.x users expect."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlip_autopipec.errors import Diagnostic, RecipeError

if TYPE_CHECKING:
    from mlip_autopipec.recipe.model import Recipe

#: Where the Debian/Ubuntu package ``quantum-espresso-data`` installs pseudopotentials.
SYSTEM_PSEUDO_DIR = Path("/usr/share/espresso/pseudo")

_ELEMENT_V2 = re.compile(r'\belement\s*=\s*"\s*([A-Za-z]{1,2})\s*"', re.IGNORECASE)
_ELEMENT_V1 = re.compile(r"^\s*([A-Za-z]{1,2})\s+Element\b", re.MULTILINE)
_ELEMENT_INFO = re.compile(r"^\s*Element:\s*([A-Za-z]{1,2})\b", re.MULTILINE)
_SUGGESTED_ECUTWFC = re.compile(
    r"Suggested minimum cutoff for wavefunctions:\s*([0-9.]+)\s*Ry", re.IGNORECASE
)
_FUNCTIONAL_V2 = re.compile(r'\bfunctional\s*=\s*"([^"]*)"', re.IGNORECASE)
_FUNCTIONAL_V1 = re.compile(r"^(.*?)\bExchange-Correlation functional", re.MULTILINE)
_TRUE = r'"\s*(?:T|\.?true\.?)\s*"'
_FULL_REL_V2 = re.compile(rf'\brelativistic\s*=\s*"\s*full\s*"|\bhas_so\s*=\s*{_TRUE}', re.I)
_ULTRASOFT_V2 = re.compile(
    rf'\bis_(?:ultrasoft|paw)\s*=\s*{_TRUE}|\bpseudo_type\s*=\s*"\s*(?:US|USPP|PAW)\s*"', re.I
)
_ULTRASOFT_V1 = re.compile(r"^\s*(?:US|PAW)\s+(?:Ultrasoft|Projector)", re.MULTILINE)
#: pw.x's short names of a whole functional (``Modules/funct.f90``) as its four parts
#: (exchange, correlation, gradient exchange, gradient correlation).
_FUNCTIONAL_NAMES = {
    "LDA": ("SLA", "PZ", "NOGX", "NOGC"),
    "PZ": ("SLA", "PZ", "NOGX", "NOGC"),
    "PBE": ("SLA", "PW", "PBX", "PBC"),
    "PBESOL": ("SLA", "PW", "PSX", "PSC"),
    "BLYP": ("SLA", "LYP", "B88", "BLYP"),
    "PW91": ("SLA", "PW", "GGX", "GGC"),
    "TPSS": ("SLA", "PW", "TPSS", "TPSS"),
}
#: older UPF files spell PBE's gradient parts "PBE PBE" (pw.x reads them as PBX PBC)
_PART_ALIASES = {(2, "PBE"): "PBX", (3, "PBE"): "PBC"}
#: The header of a UPF file (where element and suggested cutoffs are) is in its first ~10 kB.
_HEADER_BYTES = 200_000


def search_dirs(pseudo_dir: str | Path | None, base_dir: Path) -> list[Path]:
    """The folders searched for a bare pseudopotential file name, in order."""
    dirs: list[Path] = []
    if pseudo_dir:
        p = Path(pseudo_dir).expanduser()
        dirs.append(p if p.is_absolute() else base_dir / p)
    env = os.environ.get("ESPRESSO_PSEUDO")
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path.home() / "espresso" / "pseudo")
    dirs.append(SYSTEM_PSEUDO_DIR)
    return dirs


def is_path(entry: str) -> bool:
    """Whether a pseudopotentials entry names a path (has a folder part) or a bare file name."""
    return "/" in entry or entry.startswith("~")


def locate(entry: str, dirs: list[Path], base_dir: Path) -> Path | None:
    """Path of the file named by ``entry`` (also tried with ``.gz``), or None.

    A bare file name is searched in ``dirs``; an entry with a folder part is taken relative
    to ``base_dir`` (or as is when absolute).
    """
    p = Path(entry).expanduser()
    if is_path(entry):
        candidates = [p if p.is_absolute() else base_dir / p]
    else:
        candidates = [d / p for d in dirs]
    for cand in candidates:
        for c in (cand, cand.with_name(cand.name + ".gz")):
            if not c.name.endswith(".gz.gz") and c.is_file():
                return c
    return None


def close_names(entry: str, dirs: list[Path]) -> list[str]:
    """Existing pseudopotential names in ``dirs`` that look like ``entry`` (for a hint)."""
    import difflib

    names: set[str] = set()
    for d in dirs:
        try:
            names.update(f.name for f in d.iterdir() if f.is_file())
        except OSError:
            continue
    return difflib.get_close_matches(Path(entry).name, sorted(names), n=2, cutoff=0.75)


_NAME_ELEMENT = re.compile(r"^([A-Za-z]{1,2})(?=[._\-]|$)")


def element_of(name: str) -> str | None:
    """The element a pseudopotential file name starts with (``Si.pbe-...UPF`` -> ``Si``)."""
    m = _NAME_ELEMENT.match(Path(name).name)
    return m.group(1).capitalize() if m else None


def files_for(symbol: str, dirs: list[Path]) -> list[str]:
    """Pseudopotential files in ``dirs`` whose name says they are for ``symbol``."""
    names: set[str] = set()
    for d in dirs:
        try:
            names.update(
                f.name
                for f in d.iterdir()
                if f.is_file()
                and element_of(f.name) == symbol
                and f.name.lower().endswith((".upf", ".upf.gz"))
            )
        except OSError:
            continue
    return sorted(names)


def where_to_get(symbol: str) -> str:
    """Where a pseudopotential for ``symbol`` comes from (never another element's file)."""
    return (
        f"none for {symbol} in the searched folders: download a UPF file for {symbol} "
        "(SSSP: https://www.materialscloud.org/discover/sssp, PseudoDojo: "
        "http://www.pseudo-dojo.org, or pslibrary), put it in a folder named by "
        "oracle.pseudo_dir (or $ESPRESSO_PSEUDO) and name it under oracle.pseudopotentials; "
        "use one family (same functional) for every element"
    )


@dataclass(frozen=True)
class UpfHeader:
    """What the header of a UPF file says about itself."""

    element: str | None
    suggested_ecutwfc: float | None
    #: the functional as the file writes it (``" SLA  PW   PBX  PBC"``, ``"PBE"``), or None
    functional: str | None = None
    #: fully relativistic (spin-orbit projectors: ``has_so``; UPF v1: a ``PP_ADDINFO`` block)
    fully_relativistic: bool = False
    #: ultrasoft or PAW (pw.x refuses such a fully-relativistic file without lspinorb)
    ultrasoft: bool = False


def canonical_functional(text: str | None) -> tuple[str, ...] | None:
    """The functional of a UPF header as pw.x's four parts, or None when it is not one
    of the common names (then no comparison is made: pw.x itself will judge it)."""
    if not text:
        return None
    tokens = text.upper().split()
    if len(tokens) == 1:
        return _FUNCTIONAL_NAMES.get(tokens[0])
    if len(tokens) < 4:
        return None
    parts = tuple(_PART_ALIASES.get((i, t), t) for i, t in enumerate(tokens[:4]))
    return parts if parts in _FUNCTIONAL_NAMES.values() else None


def functional_conflict(headers: dict[str, UpfHeader]) -> str | None:
    """Why these pseudopotentials (element -> header) disagree on the functional, or None.

    pw.x stops with ``conflicting values for icorr`` (class ``xc_conflict``) unless
    ``input_dft`` overrides the files; only functionals this module recognises are compared.
    """
    known = {
        el: f for el, h in headers.items() if (f := canonical_functional(h.functional)) is not None
    }
    if len(set(known.values())) < 2:
        return None
    parts = ", ".join(f"{el}: {' '.join(known[el])}" for el in sorted(known))
    return (
        f"the pseudopotentials are made with different functionals ({parts}): pw.x refuses "
        "to mix them; use one family (same functional) for every element"
    )


def spinorbit_conflict(headers: dict[str, UpfHeader], lspinorb: bool) -> str | None:
    """Why pw.x will refuse these files for want of ``lspinorb`` (class ``needs_spinorbit``).

    pw.x 6.7 averages a fully-relativistic norm-conserving file to a scalar-relativistic
    one by itself, but stops for an ultrasoft/PAW one (``average_pp``: "FR-PP please use
    lspinorb=.true.").
    """
    if lspinorb:
        return None
    bad = sorted(el for el, h in headers.items() if h.fully_relativistic and h.ultrasoft)
    if not bad:
        return None
    return (
        f"fully-relativistic ultrasoft/PAW pseudopotential for {', '.join(bad)} without "
        "lspinorb: pw.x refuses it; use a scalar-relativistic file, or set "
        "input_data.system lspinorb: true and noncolin: true for spin-orbit coupling"
    )


def read_header(path: Path) -> UpfHeader:
    """Element and suggested wavefunction cutoff from a (possibly gzipped) UPF file.

    Raises OSError if unreadable and ValueError if it does not look like a pseudopotential.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        head = fh.read(_HEADER_BYTES).decode("utf-8", errors="replace")
    if "PP_HEADER" not in head and "<UPF" not in head and "Element" not in head:
        raise ValueError("does not look like a UPF pseudopotential (no PP_HEADER)")
    element = None
    for pattern in (_ELEMENT_V2, _ELEMENT_INFO, _ELEMENT_V1):
        m = pattern.search(head)
        if m:
            element = m.group(1).capitalize()
            break
    cut = _SUGGESTED_ECUTWFC.search(head)
    v2 = "<UPF" in head
    func = (_FUNCTIONAL_V2 if v2 else _FUNCTIONAL_V1).search(head)
    if v2:
        full = bool(_FULL_REL_V2.search(head))
        ultrasoft = bool(_ULTRASOFT_V2.search(head))
    else:  # UPF v1 marks spin-orbit files by a PP_ADDINFO block near the end of the file
        full = _contains(path, opener, b"<PP_ADDINFO>")
        ultrasoft = bool(_ULTRASOFT_V1.search(head))
    return UpfHeader(
        element,
        float(cut.group(1)) if cut else None,
        functional=func.group(1).strip() if func else None,
        fully_relativistic=full,
        ultrasoft=ultrasoft,
    )


def _contains(path: Path, opener: Any, needle: bytes, chunk: int = 1 << 20) -> bool:
    """Whether the (possibly gzipped) file holds ``needle``, read in chunks."""
    tail = b""
    with opener(path, "rb") as fh:
        while block := fh.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-len(needle) :]
    return False


def _decompress(src: Path, cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / src.name[: -len(".gz")]
    # write to a temporary file first: a half-written UPF left by a kill must never be used
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") as inp:
            shutil.copyfileobj(inp, out)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def resolve_pseudopotentials(recipe: Recipe, cache_dir: Path | None) -> dict[str, Path]:
    """Element -> readable pseudopotential file for every ``oracle.pseudopotentials`` entry.

    Search order for bare names: ``oracle.pseudo_dir``, ``$ESPRESSO_PSEUDO``,
    ``~/espresso/pseudo``, ``/usr/share/espresso/pseudo``. ``.gz`` files are decompressed
    into ``cache_dir`` (the runner passes ``RUN_DIR/pseudo``); with ``cache_dir=None`` the
    ``.gz`` path itself is returned (enough to check that it exists). Raises
    :class:`RecipeError` if a file has gone missing since validation.
    """
    oracle = recipe.data["oracle"]
    dirs = search_dirs(oracle.get("pseudo_dir"), recipe.base_dir)
    found: dict[str, Path] = {}
    problems: list[Diagnostic] = []
    for element, entry in oracle["pseudopotentials"].items():
        path = locate(entry, dirs, recipe.base_dir)
        if path is None:
            problems.append(
                Diagnostic(
                    str(recipe.path),
                    1,
                    1,
                    f"pseudopotential {entry!r} for {element} not found in "
                    + ", ".join(str(d) for d in dirs),
                )
            )
            continue
        if path.name.endswith(".gz") and cache_dir is not None:
            try:
                path = _decompress(path, cache_dir)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise RecipeError(
                    [Diagnostic(str(recipe.path), 1, 1, f"cannot decompress {path}: {exc}")]
                ) from exc
        found[element] = path
    if problems:
        raise RecipeError(problems)
    return found
