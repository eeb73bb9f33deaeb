"""Safe YAML loading that keeps line:column for every key and value.

ruamel.yaml's round-trip loader never constructs arbitrary Python objects (unknown tags become
inert ``Tagged*`` values), but it still happily expands alias bombs into the walkers that come
after it, so the document is *composed* first and checked: size on disk, text-ness, expanded
node count (aliases counted as often as they are used), recursion and tags. Only then is it
loaded and converted to plain Python types plus a table of positions.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mlip_autopipec.errors import Diagnostic

#: A recipe is a few kB; anything larger is a mistake (a data file passed as recipe).
MAX_BYTES = 1_000_000
#: Nodes after alias expansion; a legitimate recipe has a few hundred.
MAX_NODES = 100_000
#: Nesting depth; the YAML parser recurses and would hit Python's recursion limit.
MAX_DEPTH = 200

_CORE = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {
    _CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "merge", "timestamp")
}

Path_ = tuple[str | int, ...]


@dataclass
class Positions:
    """1-based (line, column) of every value and every mapping key, by path."""

    values: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def at(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Position of ``path`` (its key if ``key``), else of the nearest located ancestor."""
        p = tuple(path)
        if key and p in self.keys:
            return self.keys[p]
        while p:
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), (1, 1))

    def parent(self, path: Path_) -> tuple[int, int]:
        """Where to point at a mapping as a whole: the key that holds it, else the mapping."""
        p = tuple(path)
        if p in self.keys:
            return self.keys[p]
        return self.at(p)


class YamlLoadError(Exception):
    """The file could not be turned into a document; carries located diagnostics."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        super().__init__("\n".join(str(d) for d in diagnostics))


def _fail(display: str, line: int, col: int, message: str) -> YamlLoadError:
    return YamlLoadError([Diagnostic(display, line, col, message)])


def _read_bounded(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path``. A FIFO (``<(cat recipe)``, ``mkfifo``) is opened
    non-blocking, then read blocking: with a writer it reads what the writer sends, without
    one it reads nothing at once (an empty recipe) instead of waiting forever in open()."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_text(path: Path, display: str) -> str:
    if not path.exists():
        raise _fail(display, 1, 1, "no such file")
    if path.is_dir():
        raise _fail(display, 1, 1, "is a directory, not a recipe file")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise _fail(
                display,
                1,
                1,
                f"file is {size / 1e6:.1f} MB; a recipe is a small YAML file "
                f"(limit {MAX_BYTES // 1000} kB) - is this a data file?",
            )
        raw = _read_bounded(path, MAX_BYTES + 1)
    except OSError as exc:
        raise _fail(display, 1, 1, f"cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_BYTES:  # grew after stat, or a special file
        raise _fail(display, 1, 1, f"file is larger than {MAX_BYTES // 1000} kB")
    if b"\0" in raw:
        raise _fail(display, 1, 1, "binary file (contains NUL bytes), not a YAML recipe")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _fail(display, line, col, "not UTF-8 text (binary file?)") from exc
    if not text.strip() or all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()
    ):
        raise _fail(display, 1, 1, "empty recipe: expected a mapping with 'structures', ...")
    return text


def _syntax_error(display: str, exc: MarkedYAMLError, text: str) -> YamlLoadError:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = (exc.problem or exc.context or "invalid YAML").strip()
    lines = text.splitlines()
    at = lines[line - 1] if 0 < line <= len(lines) else ""
    if "\t" in problem or (col - 1 < len(at) and at[col - 1 : col] == "\t"):
        tab_col = at.find("\t") + 1 if "\t" in at else col
        return _fail(display, line, tab_col, "tab character: YAML indentation must use spaces")
    if "duplicate key" in problem:
        problem = problem.split(" with value")[0]
    ctx = exc.context_mark
    if exc.context and ctx is not None and (ctx.line + 1, ctx.column + 1) != (line, col):
        problem += f" ({exc.context.strip()} started at {ctx.line + 1}:{ctx.column + 1})"
    return _fail(display, line, col, f"YAML syntax: {problem}")


def _check_nodes(root: Node, display: str) -> None:
    """Reject alias bombs, recursive aliases, deep nesting and non-core tags."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        mark = node.start_mark
        if key in active:
            raise _fail(display, mark.line + 1, mark.column + 1, "recursive YAML alias")
        if depth > MAX_DEPTH:
            raise _fail(display, mark.line + 1, mark.column + 1, "YAML nested too deeply")
        tag = str(node.tag)
        if tag not in _ALLOWED_TAGS:
            raise _fail(
                display,
                mark.line + 1,
                mark.column + 1,
                f"YAML tag {tag.replace(_CORE, '!!')!r} is not allowed in a recipe",
            )
        active.add(key)
        total = 1
        if isinstance(node, MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
                if total > MAX_NODES:
                    break
        elif isinstance(node, SequenceNode):
            for v in node.value:
                total += size(v, depth + 1)
                if total > MAX_NODES:
                    break
        active.discard(key)
        if total > MAX_NODES:
            raise _fail(
                display,
                mark.line + 1,
                mark.column + 1,
                f"YAML expands to more than {MAX_NODES} nodes through aliases (a YAML bomb?)",
            )
        sizes[key] = total
        return total

    if not isinstance(root, ScalarNode | MappingNode | SequenceNode):
        return
    size(root, 0)


def _plain(obj: Any, path: Path_, pos: Positions) -> Any:
    """Convert ruamel containers to dict/list/str/int/float/bool/None, recording positions."""
    if isinstance(obj, CommentedMap):
        out: dict[str, Any] = {}
        for k in obj:
            sk = k if isinstance(k, str) else str(k)
            child = (*path, sk)
            try:
                kl, kc = obj.lc.key(k)
                vl, vc = obj.lc.value(k)
                pos.keys[child] = (kl + 1, kc + 1)
                pos.values[child] = (vl + 1, vc + 1)
            except (KeyError, TypeError, AttributeError):
                pass  # merged (<<) keys have no position of their own
            out[sk] = _plain(obj[k], child, pos)
        return out
    if isinstance(obj, CommentedSeq):
        items = []
        for i, v in enumerate(obj):
            try:
                il, ic = obj.lc.item(i)
                pos.values[(*path, i)] = (il + 1, ic + 1)
            except (KeyError, TypeError, AttributeError):
                pass
            items.append(_plain(v, (*path, i), pos))
        return items
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, datetime.date):
        return obj.isoformat()
    if isinstance(obj, str):
        return str(obj)
    return str(obj)


def _check_flow_depth(text: str, display: str) -> None:
    """Refuse absurd ``[[[[...`` nesting before the parser (superlinear in depth) sees it."""
    depth = 0
    quote = ""
    line, col = 1, 0
    prev = "\n"
    comment = False
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, comment = line + 1, 0, False
            quote = "" if quote == "'" else quote
        elif comment:
            pass
        elif quote:
            if ch == quote and prev != "\\":
                quote = ""
        elif ch in "'\"" and prev in " \t\n[{,:":
            quote = ch
        elif ch == "#" and prev in " \t\n":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _fail(display, line, col, "YAML nested too deeply")
        elif ch in "]}":
            depth = max(0, depth - 1)
        prev = ch
    for number, row in enumerate(text.splitlines(), 1):
        indent = len(row) - len(row.lstrip(" "))
        if indent > 2 * MAX_DEPTH:
            raise _fail(display, number, indent + 1, "YAML indented too deeply")


def load_yaml(path: Path, display: str) -> tuple[Any, Positions]:
    """Load ``path`` safely; return plain data and positions, or raise :class:`YamlLoadError`."""
    text = _read_text(path, display)
    _check_flow_depth(text, display)
    yaml = YAML(typ="rt")
    limit = sys.getrecursionlimit()
    try:
        # the parser recurses per nesting level; give it room, _check_nodes caps depth
        sys.setrecursionlimit(max(limit, 5000))
        try:
            node = yaml.compose(text)
        except RecursionError as exc:
            raise _fail(display, 1, 1, "YAML nested too deeply") from exc
        except MarkedYAMLError as exc:
            raise _syntax_error(display, exc, text) from exc
        except YAMLError as exc:
            raise _fail(display, 1, 1, f"YAML error ({type(exc).__name__})") from exc
        if node is None:
            raise _fail(display, 1, 1, "empty recipe: expected a mapping with 'structures', ...")
        _check_nodes(node, display)
        try:
            data = YAML(typ="rt").load(text)
        except MarkedYAMLError as exc:
            raise _syntax_error(display, exc, text) from exc
        except (YAMLError, ValueError, TypeError) as exc:
            raise _fail(display, 1, 1, f"YAML error ({type(exc).__name__})") from exc
    finally:
        sys.setrecursionlimit(limit)
    pos = Positions()
    if isinstance(data, CommentedMap | CommentedSeq):
        pos.values[()] = (data.lc.line + 1, data.lc.col + 1)
    else:
        pos.values[()] = (node.start_mark.line + 1, node.start_mark.column + 1)
    return _plain(data, (), pos), pos
