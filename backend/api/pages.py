"""A page as the browser gets it: its module graph preloaded, its files at versioned URLs.

The HTML files in `frontend/` name their stylesheet, plotly.js and their entry module under
`/static/` and nothing more. Before a page goes out, the server

* preloads the entry module's whole graph: after every `<script type="module" src=...>` it adds
  one `<link rel="modulepreload">` for each module the entry imports, directly or not, found by
  reading the modules' static `import ... from "./x.js"` (and `export ... from`) lines. Without
  the list the browser discovers the graph level by level, one round trip each; with a list
  written by hand in every page, a page forgot a module or kept one it no longer used. The
  modules are the one source: a new import is preloaded by every page that reaches it.
* puts the frontend's version in every `href="/static/..."` and `src="/static/..."`:
  `/assets/VERSION/...`. VERSION is a digest of every file under `frontend/`, so a changed file
  changes every page's URLs, and what a page names under its version never changes: those
  answers say `immutable` and a second visit asks the server for nothing but the page itself
  (whose answer revalidates: `no-cache`). A module's relative imports resolve under the same
  prefix, so the whole graph is versioned without a build step.

`/static/...` keeps serving the same files, revalidated (`no-cache`), for anything that names
them directly; an `/assets/` URL of a version other than the current one is served from the
current files, revalidated, never as immutable (a page of the old version still works).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from functools import lru_cache
from pathlib import Path

STATIC_PREFIX = "/static/"
ASSETS_PREFIX = "/assets/"
VERSION_CHARS = 16

# A static import or re-export of a relative module: `import { a,\n b } from "./x.js";`,
# `export { c } from "../y.js";`, `import "./z.js";`. The clause before `from` has no `;`,
# `(` or `=`, so a match never runs across a statement into a later one.
_IMPORT = re.compile(
    r"""^[ \t]*(?:import|export)\b(?:[^;()=]*?\bfrom)?\s*["'](\.{1,2}/[^"']+)["']""", re.MULTILINE
)
_MODULE_SCRIPT = re.compile(r'<script type="module" src="/static/([^"]+)"></script>')
_STATIC_URL = re.compile(r'\b(href|src)="/static/')


def frontend_version(directory: Path) -> str:
    """A digest of every file under `directory` (its relative paths and contents).

    Files are read again only when a file's size or modification time changes, so asking
    costs one `stat` per file."""
    return _digest(directory, _signature(directory))


def assemble_page(directory: Path, page: Path) -> bytes:
    """`page` (an HTML file of `directory`) with its module graphs preloaded and its asset
    URLs carrying the current version."""
    return _assembled(directory, page, frontend_version(directory))


def module_graph(directory: Path, entry: str) -> list[str]:
    """Every module `entry` (a path relative to `directory`, e.g. `js/experiment.js`) imports
    statically, directly or through others, `entry` first, each once, in the order found."""
    found, queue = [entry], [entry]
    while queue:
        module = queue.pop(0)
        path = directory / module
        source = path.read_text(encoding="utf-8") if path.is_file() else ""
        for specifier in _IMPORT.findall(source):
            imported = posixpath.normpath(posixpath.join(posixpath.dirname(module), specifier))
            if imported.startswith("../") or imported in found:
                continue  # outside the frontend (not served), or seen
            found.append(imported)
            queue.append(imported)
    return found


def _signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    files = []
    for folder, _, names in os.walk(directory):
        for name in names:
            path = Path(folder, name)
            stat = path.stat()
            files.append((path.relative_to(directory).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(files))


@lru_cache(maxsize=8)
def _digest(directory: Path, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for relative, _, _ in signature:
        digest.update(relative.encode() + b"\0")
        digest.update(hashlib.sha256((directory / relative).read_bytes()).digest())
    return digest.hexdigest()[:VERSION_CHARS]


@lru_cache(maxsize=32)
def _assembled(directory: Path, page: Path, version: str) -> bytes:
    html = page.read_text(encoding="utf-8")

    def with_preloads(match: re.Match[str]) -> str:
        links = "".join(
            f'<link rel="modulepreload" href="{STATIC_PREFIX}{module}">\n  '
            for module in module_graph(directory, match.group(1))
        )
        return links + match.group(0)

    html = _MODULE_SCRIPT.sub(with_preloads, html)
    html = _STATIC_URL.sub(rf'\1="{ASSETS_PREFIX}{version}/', html)
    return html.encode("utf-8")
