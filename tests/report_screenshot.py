"""Open a report's ``index.html`` in a real headless Chromium: screenshot + image check.

Used by ``tests/test_report.py`` and runnable by hand::

    python tests/report_screenshot.py RUN_DIR/report/index.html shot.png

prints how many ``<img>`` elements decoded (``naturalWidth > 0``) out of how many, and
exits 1 if any did not. The page itself writes those counts onto ``<body>``
(``data-images-loaded`` / ``data-images-total``) on its ``load`` event; ``--dump-dom``
prints the DOM after that event.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

from mlip_autopipec.process import run_process

#: Debian's package installs /usr/bin/chromium; other systems name it differently.
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_BODY_COUNTS = re.compile(
    r"<body\b[^>]*?data-images-total=\"(?P<total>\d+)\"[^>]*?data-images-loaded=\"(?P<ok>\d+)\""
)


def find_chromium() -> str | None:
    """Path of a Chromium-like browser, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _argv(browser: str, profile: Path, *extra: str) -> list[str]:
    # No network, no sync, a throw-away profile: the page must render from the file alone.
    return [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *extra,
    ]


def screenshot(index: Path, out_png: Path, *, width: int = 1200, height: int = 3000) -> Path:
    """Screenshot ``index`` (a file path) into ``out_png``; raises RuntimeError on failure."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("no chromium found")
    with tempfile.TemporaryDirectory(prefix="autopipec-chromium-") as tmp:
        argv = _argv(
            browser,
            Path(tmp) / "profile",
            f"--screenshot={out_png.resolve()}",
            f"--window-size={width},{height}",
            index.resolve().as_uri(),
        )
        result = run_process(argv, Path(tmp), stderr=Path(tmp) / "stderr.txt", timeout=120)
        err = (Path(tmp) / "stderr.txt").read_text(errors="replace")
    if result.returncode != 0 or result.timed_out or not out_png.is_file():
        raise RuntimeError(f"chromium screenshot failed (rc {result.returncode}): {err[-2000:]}")
    return out_png


def loaded_images(index: Path) -> tuple[int, int]:
    """(images decoded, images in the page) as seen by Chromium after the load event."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("no chromium found")
    with tempfile.TemporaryDirectory(prefix="autopipec-chromium-") as tmp:
        dom = Path(tmp) / "dom.html"
        argv = _argv(browser, Path(tmp) / "profile", "--dump-dom", index.resolve().as_uri())
        result = run_process(
            argv, Path(tmp), stdout=dom, stderr=Path(tmp) / "stderr.txt", timeout=120
        )
        text = dom.read_text(errors="replace") if dom.is_file() else ""
        err = (Path(tmp) / "stderr.txt").read_text(errors="replace")
    match = _BODY_COUNTS.search(text)
    if result.returncode != 0 or match is None:
        raise RuntimeError(
            f"chromium --dump-dom gave no image counts (rc {result.returncode}): {err[-2000:]}"
        )
    return int(match["ok"]), int(match["total"])


def main(argv: list[str]) -> int:
    """``report_screenshot.py INDEX_HTML OUT_PNG``."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    index, out = Path(argv[0]), Path(argv[1])
    screenshot(index, out)
    ok, total = loaded_images(index)
    print(f"{out}: screenshot written; {ok} of {total} images loaded")
    return 0 if ok == total else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
