"""``egr space build``: a folder that is a complete Hugging Face Gradio Space for one model.

Users of the original project deployed it as a Space; this writes the same thing for any model
directory, ready for ``huggingface-cli upload`` or a git push:

- ``app.py``: loads ``./model`` with :meth:`Recognizer.load` and launches the Gradio demo
  (:func:`ethnic_group_recognizer.serve.gradio.ui.build_demo`); Gradio listens where the Space says
  (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``);
- ``requirements.txt``: one line installing this product with its ``demo`` extra from where its
  source lives (the package is not on PyPI): a git URL, or a local checkout for a local try-out;
- ``model/``: the model directory, checked before and after the copy;
- ``README.md``: the Space front matter (sdk ``gradio`` at the version this product pins) and a
  short page listing every class with the training images behind it;
- ``.gitattributes``: ``model.onnx`` through Git LFS, as the Hub requires for large files.

Everything is written inside ``out`` and nowhere else: a non-empty ``out`` is refused unless
``force``, and then only the entries above are replaced (never followed when they are links).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR
from ethnic_group_recognizer.model_dir import (
    LABELS_FILE,
    METADATA_FILE,
    MODEL_FILE,
    ModelDir,
    read_model_dir,
)

DISTRIBUTION = "ethnic-group-recognizer"
#: Where the product's source lives. There is no public repository known to this product, so the
#: default is a placeholder that must be replaced with ``--source`` before the Space is pushed.
PLACEHOLDER_SOURCE = "git+https://github.com/YOUR-ACCOUNT/ethnic-group-recognizer.git"
#: The folder inside the Space that holds the model (``app.py`` loads it from there).
MODEL_SUBDIR = "model"
#: The entries this module writes; with ``force`` these, and only these, are replaced.
SPACE_ENTRIES = ("app.py", "requirements.txt", "README.md", ".gitattributes", MODEL_SUBDIR)
#: The Hub refuses a ``short_description`` longer than this.
SHORT_DESCRIPTION_MAX = 60
#: The thumbnail gradient colours the Hub accepts.
SPACE_COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
DEFAULT_EMOJI = "🖼️"
DEFAULT_LICENSE = "mit"
#: Schemes a ``--source`` URL may use (pip's direct-reference forms).
_SOURCE_URL = re.compile(r"^(git\+(https|ssh|http|file)|https?|file)://\S+$")
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")
_GRADIO_PIN = re.compile(r"^gradio\s*==\s*([0-9][0-9A-Za-z.+-]*)\s*(;.*)?$")
#: Characters never written into the front matter: control, format, line and paragraph separators.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


class SpaceError(ValueError):
    """A Space that cannot be built as asked; the message (one line) says why."""


APP_TEMPLATE = '''\
"""Hugging Face Space entry point, written by `egr space build`: the Gradio demo of ./{model}.

The Space runs `python app.py`; Gradio listens where GRADIO_SERVER_NAME and GRADIO_SERVER_PORT say
(a Space sets 0.0.0.0:7860; run locally, it serves http://127.0.0.1:7860).
"""

from pathlib import Path

from ethnic_group_recognizer.model import Recognizer
from {demo_module} import build_demo

#: Largest accepted photo in bytes (egr serve's limit when this Space was built).
MAX_UPLOAD_BYTES = {max_upload_bytes}

demo = build_demo(Recognizer.load(Path(__file__).parent / "{model}"), max_upload_bytes=MAX_UPLOAD_BYTES)

if __name__ == "__main__":
    demo.launch(max_file_size=MAX_UPLOAD_BYTES, show_error=True, run_history=False)
'''

#: Where the public entry of the Gradio UI lives: ``build_demo(recognizer, max_upload_bytes=...)``.
DEMO_MODULE = "ethnic_group_recognizer.serve.gradio.ui"
GITATTRIBUTES = "*.onnx filter=lfs diff=lfs merge=lfs -text\n"


@dataclass(frozen=True)
class SpaceFrontMatter:
    """The Space's configuration block (the Hub reads it from the top of README.md)."""

    title: str
    short_description: str
    sdk_version: str
    emoji: str = DEFAULT_EMOJI
    color_from: str = "indigo"
    color_to: str = "yellow"
    license: str = DEFAULT_LICENSE
    python_version: str = "3.11"  # the product requires Python 3.11

    def render(self) -> str:
        """The ``---``-fenced YAML block; every free-text value is a quoted, one-line string."""
        lines = [
            "---",
            f"title: {yaml_string(self.title)}",
            f"emoji: {yaml_string(self.emoji)}",
            f"colorFrom: {self.color_from}",
            f"colorTo: {self.color_to}",
            "sdk: gradio",
            f"sdk_version: {yaml_string(self.sdk_version)}",
            f"python_version: {yaml_string(self.python_version)}",
            "app_file: app.py",
            "pinned: false",
            f"license: {self.license}",
            f"short_description: {yaml_string(self.short_description)}",
            "---",
        ]
        return "\n".join(lines) + "\n"


# -- pieces ---------------------------------------------------------------------------------------
def one_line(text: str) -> str:
    """``text`` without control, format or line-separator characters, whitespace collapsed.

    Model names and labels come from a model folder anyone may have written; in the front matter
    such characters could end the YAML string or the block.
    """
    kept = (
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch) not in _UNSAFE_CATEGORIES
    )
    return " ".join("".join(kept).split())


def yaml_string(text: str) -> str:
    """A YAML double-quoted scalar for ``text`` (JSON's string syntax is valid YAML)."""
    return json.dumps(one_line(text), ensure_ascii=False)


def markdown_text(text: str) -> str:
    """``text`` shown literally in Markdown: no links, emphasis, HTML or table breaks."""
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~&-])", r"\\\1", one_line(text))


def requirement_line(source: str | Path = PLACEHOLDER_SOURCE, requirement: str | None = None) -> str:
    """The one line of ``requirements.txt`` that installs the product with its ``demo`` extra.

    ``requirement`` (a complete pip requirement) wins; otherwise ``source`` is a pip URL (``git+https://…``,
    optionally ``@tag``) or a local checkout folder (for trying the Space locally).
    """
    if requirement is not None:
        line = requirement.strip()
        if not line or line != one_line(line) or line.startswith("-"):
            raise SpaceError(
                "--requirement must be one pip requirement on one line, not an option, "
                f"e.g. '{DISTRIBUTION}[demo] @ {PLACEHOLDER_SOURCE}'"
            )
        return line
    text = str(source).strip()
    if _SOURCE_URL.match(text):
        return f"{DISTRIBUTION}[demo] @ {text}"
    folder = Path(text).expanduser()
    if folder.is_dir():
        if not (folder / "pyproject.toml").is_file():
            raise SpaceError(f"--source {text}: a local source must be a checkout with pyproject.toml")
        return f"{DISTRIBUTION}[demo] @ {folder.resolve().as_uri()}"
    raise SpaceError(
        f"--source {text!r} is neither a URL pip can install from (git+https://…, https://…) "
        "nor a local checkout folder"
    )


def pinned_gradio_version() -> str:
    """The gradio version the ``demo`` extra pins: the Space must run that SDK version.

    Read from this checkout's pyproject.toml when running from one (it may be newer than the
    installed metadata), else from the installed distribution's metadata.
    """
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    candidates: list[str] = []
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
        if project.get("name") == DISTRIBUTION:
            candidates = list(project.get("optional-dependencies", {}).get("demo", []))
    if not candidates:
        try:
            candidates = [r for r in importlib.metadata.requires(DISTRIBUTION) or [] if "demo" in r]
        except importlib.metadata.PackageNotFoundError:
            candidates = []
    for requirement in candidates:
        match = _GRADIO_PIN.match(requirement.strip())
        if match:
            return match[1]
    raise SpaceError("cannot find the pinned gradio version (gradio==X in the 'demo' extra)")


def space_title(model: ModelDir) -> str:
    """The model's title, from its card (neutral words from its name for a directory without one)."""
    return one_line(model.metadata.card_or_default.title) or "Photo classifier"


def short_description(model: ModelDir) -> str:
    """One line for the Space's card: how many classes, and whether the model can say "none"."""
    count = len(model.labels)
    noun = "class" if count == 1 else "classes"
    text = f"Tells which of {count} {noun} a photo shows"
    if model.metadata.calibration.threshold > 0:
        text += ", or says none"
    return text[:SHORT_DESCRIPTION_MAX]


def readme_text(model: ModelDir, front_matter: SpaceFrontMatter, requirement: str) -> str:
    """README.md: the front matter, then what the Space does and the data behind every class."""
    from ethnic_group_recognizer.model import LOW_DATA_IMAGES

    metadata = model.metadata
    card = metadata.card_or_default
    rows = []
    for label in model.labels:
        count = metadata.training_counts.get(label, 0)
        flag = " (low data: treat with extra caution)" if count < LOW_DATA_IMAGES else ""
        rows.append(f"| {markdown_text(card.display_name(label))} | {count}{flag} |")
    abstains = metadata.calibration.threshold > 0
    card_note = (
        f"The model card is [`{MODEL_SUBDIR}/MODEL_CARD.md`]({MODEL_SUBDIR}/MODEL_CARD.md): read its "
        "intended and out-of-scope uses before you share this Space."
        if (model.path / "MODEL_CARD.md").is_file()
        else "This model has no model card yet (`egr evaluate --update-model` writes one)."
    )
    parts = [
        front_matter.render(),
        f"# {markdown_text(front_matter.title)}",
        "",
        markdown_text(card.description),
        "",
        f"Upload a photo: the model names which of its {len(model.labels)} classes it shows"
        + (
            f" (or answers “{markdown_text(card.none_of_these)}”)."
            if abstains
            else "; it cannot say none of them."
        ),
        "Photos are classified in memory and not kept.",
        "",
        f"Model `{markdown_text(metadata.name)}`, version {markdown_text(metadata.version)}. "
        "Training images behind each class:",
        "",
        "| class | training images |",
        "| --- | ---: |",
        *rows,
        "",
        card_note,
        "",
        "Built with `egr space build`. The Space installs the product from:",
        "",
        "```",
        requirement,
        "```",
        "",
    ]
    return "\n".join(parts)


# -- the build ------------------------------------------------------------------------------------
def _check_out(out: Path, model_path: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, a non-empty folder (without ``force``) or overlaps the model."""
    if out.is_symlink() and not out.is_dir():
        raise SpaceError(f"--out {out} is a broken or non-folder link")
    if out.exists() and not out.is_dir():
        raise SpaceError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SpaceError(f"--out {out} is not empty; pass --force to replace the Space files in it")
    resolved_out, resolved_model = out.resolve(), model_path.resolve()
    if resolved_model.is_relative_to(resolved_out) or resolved_out.is_relative_to(resolved_model):
        raise SpaceError(f"--out {out} and the model folder {model_path} must not contain each other")


def _model_files(model: ModelDir) -> list[Path]:
    """The model folder's files to publish: regular top-level files; links and hidden files stay out.

    A link could point anywhere on this machine, and the Space is public.
    """
    for name in (MODEL_FILE, LABELS_FILE, METADATA_FILE):
        if (model.path / name).is_symlink():
            raise SpaceError(
                f"{model.path / name} is a symbolic link; put the file itself in the model folder"
            )
    return [
        entry
        for entry in sorted(model.path.iterdir())
        if not entry.name.startswith(".") and not entry.is_symlink() and entry.is_file()
    ]


def _clear_entries(out: Path) -> None:
    """Remove the entries a previous build wrote; a link is removed itself, never followed."""
    for name in SPACE_ENTRIES:
        entry = out / name
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        elif entry.is_dir():
            shutil.rmtree(entry)


def _write(path: Path, text: str) -> None:
    with path.open("x", encoding="utf-8", newline="\n") as handle:  # "x": never through a link
        handle.write(text)


def build_space(
    out: str | Path,
    model_dir: str | Path | None = None,
    source: str | Path = PLACEHOLDER_SOURCE,
    *,
    requirement: str | None = None,
    title: str | None = None,
    license_id: str = DEFAULT_LICENSE,
    force: bool = False,
) -> Path:
    """Write a Gradio Space for ``model_dir`` (the shipped model when None) into ``out``; return ``out``.

    Raises :class:`SpaceError` for a bad ``out``, ``source``, ``requirement`` or ``license``, and
    :class:`~ethnic_group_recognizer.model_dir.ModelError` for an unusable model folder, before
    anything is written.
    """
    from ethnic_group_recognizer.serve.errors import DEFAULT_MAX_UPLOAD_BYTES

    out = Path(out)
    model = read_model_dir(Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR)
    _check_out(out, model.path, force)
    if not _LICENSE_ID.match(license_id):
        raise SpaceError(
            f"--license {license_id!r} is not a licence identifier such as 'mit' or 'apache-2.0'"
        )
    line = requirement_line(source, requirement)
    files = _model_files(model)
    front_matter = SpaceFrontMatter(
        title=one_line(title or "") or space_title(model),
        short_description=short_description(model),
        sdk_version=pinned_gradio_version(),
        license=license_id,
    )

    out.mkdir(parents=True, exist_ok=True)
    _clear_entries(out)
    target = out / MODEL_SUBDIR
    target.mkdir()
    for source_file in files:
        shutil.copyfile(source_file, target / source_file.name)
    read_model_dir(target)  # the copy must be a model the Space can load
    _write(
        out / "app.py",
        APP_TEMPLATE.format(
            model=MODEL_SUBDIR, demo_module=DEMO_MODULE, max_upload_bytes=DEFAULT_MAX_UPLOAD_BYTES
        ),
    )
    _write(out / "requirements.txt", line + "\n")
    _write(out / "README.md", readme_text(model, front_matter, line))
    _write(out / ".gitattributes", GITATTRIBUTES)
    return out
