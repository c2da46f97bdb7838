"""onnxruntime-web for the in-browser site: fetched once with npm, checked, cached, copied.

The page must never load code from a CDN, so ``egr site build --in-browser`` ships the runtime's
JavaScript and WebAssembly with the site. They come from the npm package ``onnxruntime-web``,
pinned to one version and one tarball hash: ``npm pack`` fetches the tarball (through npm's own
registry settings and cache), its sha512 must equal the pinned integrity, and only the few files
the page needs are extracted into the cache (``$EGR_CACHE_DIR/npm``), once per version.
``EGR_ORT_WEB_TARBALL`` may name a tarball fetched elsewhere, for a build machine without the
registry; it is checked the same way.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ethnic_group_recognizer.config import default_cache_dir

PACKAGE = "onnxruntime-web"
VERSION = "1.30.0"
#: ``npm view onnxruntime-web@1.30.0 dist.integrity``: the tarball must hash to exactly this.
INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
#: The WebAssembly-only build: its ES module, the loader it imports and the binary the loader runs.
#: (The default ``ort.min.mjs`` bundle is the WebGPU/"jsep" build: twice the download, and it needs
#: ``ort-wasm-simd-threaded.jsep.mjs`` beside its ``.wasm``; the page uses the CPU backend only.)
MODULE_FILE = "ort.wasm.min.mjs"
LOADER_FILE = "ort-wasm-simd-threaded.mjs"
WASM_FILE = "ort-wasm-simd-threaded.wasm"
RUNTIME_FILES = (MODULE_FILE, LOADER_FILE, WASM_FILE)
LICENSE_FILE = "LICENSE.txt"
TARBALL_ENV = "EGR_ORT_WEB_TARBALL"
NPM_TIMEOUT_S = 600
MARKER = "installed.json"


class RuntimeFetchError(RuntimeError):
    """onnxruntime-web could not be fetched or did not match the pinned package."""


@dataclass(frozen=True)
class Runtime:
    """The cached runtime: the folder holding :data:`RUNTIME_FILES`."""

    directory: Path
    version: str = VERSION

    def files(self) -> list[Path]:
        return [self.directory / name for name in RUNTIME_FILES]


def license_text() -> str:
    """The package's licence (its package.json says MIT; the tarball carries no licence file)."""
    return (
        f"{PACKAGE} {VERSION} (npm), the ONNX Runtime Web build shipped in this folder.\n\n"
        "MIT License\n\nCopyright (c) Microsoft Corporation\n\n"
        "Permission is hereby granted, free of charge, to any person obtaining a copy of this software "
        'and associated documentation files (the "Software"), to deal in the Software without '
        "restriction, including without limitation the rights to use, copy, modify, merge, publish, "
        "distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the "
        "Software is furnished to do so, subject to the following conditions:\n\n"
        "The above copyright notice and this permission notice shall be included in all copies or "
        "substantial portions of the Software.\n\n"
        'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING '
        "BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND "
        "NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, "
        "DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, "
        "OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.\n"
    )


def cache_root(cache_dir: Path | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "npm" / f"{PACKAGE}-{VERSION}"


def sri_sha512(path: Path) -> str:
    """The Subresource-Integrity form npm records: ``sha512-<base64 digest>``."""
    digest = hashlib.sha512()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _is_complete(root: Path) -> bool:
    """True when every file is there and unchanged since it was extracted from the checked tarball."""
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
        return marker.get("integrity") == INTEGRITY and all(
            _sha256(root / name) == digest for name, digest in marker["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


@contextlib.contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    """One installer at a time per version (two builds or test sessions may start together)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def npm_missing_message(root: Path) -> str:
    return (
        f"npm is needed once to fetch {PACKAGE} {VERSION}, the runtime the in-browser site ships: "
        "install Node.js with npm (Debian/Ubuntu: apt-get install -y npm; other systems: the Node.js "
        f"installer), then run the build again; it is cached in {root}. Without the npm registry, "
        f"download {PACKAGE}-{VERSION}.tgz elsewhere (npm pack {PACKAGE}@{VERSION}) and set "
        f"{TARBALL_ENV} to its path."
    )


def _npm_pack(npm: str, into: Path) -> Path:
    """``npm pack onnxruntime-web@VERSION`` into ``into``; the tarball's path."""
    try:
        done = subprocess.run(
            [
                npm,
                "pack",
                f"{PACKAGE}@{VERSION}",
                "--json",
                "--pack-destination",
                str(into),
                "--ignore-scripts",
            ],
            cwd=into,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeFetchError(
            f"npm did not fetch {PACKAGE}@{VERSION} within {NPM_TIMEOUT_S} s; is the npm registry reachable?"
        ) from None
    except OSError as error:
        raise RuntimeFetchError(f"could not run npm ({npm}): {error}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-1500:]
        raise RuntimeFetchError(
            f"npm could not fetch {PACKAGE}@{VERSION} (exit {done.returncode}); the build needs the npm "
            f"registry once (or a mirror: npm config set registry URL), or {TARBALL_ENV}:\n{tail}"
        )
    tarballs = sorted(into.glob("*.tgz"))
    if len(tarballs) != 1:
        raise RuntimeFetchError(f"npm pack wrote {len(tarballs)} tarballs into {into}, expected one")
    return tarballs[0]


def _extract(tarball: Path, into: Path) -> dict[str, str]:
    """Copy the named files (never a path taken from the archive) out of the tarball; their sha256."""
    wanted = {f"package/dist/{name}": name for name in RUNTIME_FILES}
    wanted["package/package.json"] = "package.json"
    found: dict[str, str] = {}
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                name = wanted.get(member.name)
                if name is None or not member.isfile():
                    continue
                source = archive.extractfile(member)
                if source is None:
                    continue
                with source, open(into / name, "wb") as target:
                    shutil.copyfileobj(source, target)
                found[name] = _sha256(into / name)
    except (OSError, tarfile.TarError) as error:
        raise RuntimeFetchError(f"{tarball} is not a readable npm tarball: {error}") from None
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise RuntimeFetchError(f"{tarball} lacks {', '.join(missing)}; is it {PACKAGE} {VERSION}?")
    version = json.loads((into / "package.json").read_text(encoding="utf-8")).get("version")
    if version != VERSION:
        raise RuntimeFetchError(f"{tarball} holds {PACKAGE} {version}, expected {VERSION}")
    return found


def ensure_runtime(cache_dir: Path | None = None, npm: str | None = None) -> Runtime:
    """The pinned onnxruntime-web in the cache, fetched with npm (or ``$EGR_ORT_WEB_TARBALL``) if absent.

    Raises :class:`RuntimeFetchError` with what to do when npm is missing, the registry cannot
    be reached, or the tarball is not the pinned one.
    """
    root = cache_root(cache_dir)
    if _is_complete(root):
        return Runtime(root)
    with _install_lock(root):
        if _is_complete(root):
            return Runtime(root)
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root.parent) as tmp:
            work = Path(tmp)
            if os.environ.get(TARBALL_ENV):
                tarball = Path(os.environ[TARBALL_ENV]).expanduser()
                if not tarball.is_file():
                    raise RuntimeFetchError(f"{TARBALL_ENV} names no file: {tarball}")
            else:
                npm = npm or shutil.which("npm")
                if not npm:
                    raise RuntimeFetchError(npm_missing_message(root))
                tarball = _npm_pack(npm, work)
            integrity = sri_sha512(tarball)
            if integrity != INTEGRITY:
                raise RuntimeFetchError(
                    f"{tarball.name} is not the pinned {PACKAGE} {VERSION}: its hash is {integrity}, "
                    f"expected {INTEGRITY}"
                )
            staging = work / "runtime"
            staging.mkdir()
            files = _extract(tarball, staging)
            (staging / MARKER).write_text(
                json.dumps(
                    {"package": PACKAGE, "version": VERSION, "integrity": INTEGRITY, "files": files}, indent=1
                ),
                encoding="utf-8",
            )
            if root.exists():
                shutil.rmtree(root)
            staging.rename(root)
    return Runtime(root)
