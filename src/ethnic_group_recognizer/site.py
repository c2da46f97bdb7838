"""``egr site build``: the web app as a static site that calls an API on another host.

The pages in ``web/`` are plain HTML/CSS/JS with no build step; only ``config.js`` differs
between the copy the server serves (same-origin API) and a published copy (the API's URL).
The API's ``--cors-origins`` must then allow the site's origin.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from ethnic_group_recognizer.config import PACKAGE_DIR

WEB_DIR = PACKAGE_DIR / "web"
CONFIG_FILE = "config.js"


def normalise_api_url(api_url: str) -> str:
    """``https://host[:port][/prefix]`` without a trailing slash; ValueError for anything else."""
    url = api_url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--api-url must be an http:// or https:// URL with a host, got {api_url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"--api-url must not have a query or fragment, got {api_url!r}")
    return url


def config_js(api_url: str) -> str:
    """The ``config.js`` that points the pages at ``api_url`` ("" = the server serving the pages)."""
    return (
        "// Where the pages find the API; written by `egr site build`.\n"
        f"window.EGR_CONFIG = {{ apiBase: {json.dumps(api_url)} }};\n"
    )


def build_site(api_url: str, out: str | Path, web_dir: Path = WEB_DIR) -> list[Path]:
    """Copy the web app to ``out`` with ``config.js`` pointing at ``api_url``; returns the files written.

    Existing files of the same names are replaced; other files in ``out`` are left alone.
    """
    api = normalise_api_url(api_url)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out is a file, not a folder: {out}")
    if not (web_dir / "index.html").is_file():
        raise FileNotFoundError(f"web app not found at {web_dir} (broken installation?)")
    written: list[Path] = []
    for source in sorted(web_dir.rglob("*")):
        if not source.is_file() or source.name.startswith(".") or "__pycache__" in source.parts:
            continue
        target = out / source.relative_to(web_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.name == CONFIG_FILE and source.parent == web_dir:
            target.write_text(config_js(api), encoding="utf-8")
        else:
            shutil.copyfile(source, target)
        written.append(target)
    return written
