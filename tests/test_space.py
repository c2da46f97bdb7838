"""``egr space build``: the folder is a complete Gradio Space, and building it is safe.

The slow test does what the Hub does: a fresh venv from the Space's own ``requirements.txt``
(pointing at a copy of this checkout), ``python app.py``, then a real ``gradio_client`` call.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from fixtures_static.servers import free_port, photo_bytes, run_server
from typer.testing import CliRunner

from ethnic_group_recognizer.config import DEFAULT_MODEL_DIR
from ethnic_group_recognizer.model import Recognizer
from ethnic_group_recognizer.model_dir import ModelError, read_model_dir
from ethnic_group_recognizer.space import (
    PLACEHOLDER_SOURCE,
    SHORT_DESCRIPTION_MAX,
    SPACE_COLORS,
    SpaceError,
    build_space,
    requirement_line,
)
from ethnic_group_recognizer.space_cli import app as space_app

REPO = Path(__file__).resolve().parents[1]
FRONT_MATTER_KEYS = {
    "title",
    "emoji",
    "colorFrom",
    "colorTo",
    "sdk",
    "sdk_version",
    "python_version",
    "app_file",
    "pinned",
    "license",
    "short_description",
}
HAVE_DEMO_EXTRA = all(importlib.util.find_spec(name) for name in ("gradio", "gradio_client"))
#: pip's words for "there is no network", the one reason the slow test skips instead of failing.
NO_NETWORK = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|"
    r"Network is unreachable|ProxyError|Name or service not known"
)
#: Bounds for the slow test; generous, so a busy machine does not fail it.
PIP_TIMEOUT_S = 1500
VENV_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def shipped_model() -> Path:
    if not (DEFAULT_MODEL_DIR / "model.onnx").is_file():
        pytest.skip(f"the shipped default model is not in this checkout ({DEFAULT_MODEL_DIR})")
    return DEFAULT_MODEL_DIR


def copy_model(source: Path, target: Path, **metadata_changes: object) -> Path:
    """A copy of a model folder with some metadata.json keys changed (labels: labels.json too; None drops a key)."""
    shutil.copytree(source, target)
    metadata = json.loads((target / "metadata.json").read_text())
    labels = metadata_changes.pop("labels", None)
    if labels is not None:
        old = json.loads((target / "labels.json").read_text())
        rename = dict(zip(old, labels, strict=True))
        (target / "labels.json").write_text(json.dumps(labels))
        metadata["training_counts"] = {rename[k]: v for k, v in metadata["training_counts"].items()}
    metadata.update({key: value for key, value in metadata_changes.items() if value is not None})
    for key in [key for key, value in metadata_changes.items() if value is None]:
        metadata.pop(key, None)
    (target / "metadata.json").write_text(json.dumps(metadata))
    return target


def front_matter(readme: Path) -> dict:
    yaml = pytest.importorskip("yaml")  # PyYAML: the Hub reads the block as YAML
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    block = text.split("---\n")[1]
    return yaml.safe_load(block)


def pinned_gradio() -> str:
    demo = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["demo"]
    return next(r.split("==")[1] for r in demo if r.startswith("gradio=="))


# -- the folder -----------------------------------------------------------------------------------


def test_space_folder_is_complete(shipped_model: Path, tmp_path: Path) -> None:
    out = build_space(tmp_path / "space", source=REPO)
    assert sorted(p.name for p in out.iterdir()) == [
        ".gitattributes",
        "README.md",
        "app.py",
        "model",
        "requirements.txt",
    ]
    meta = front_matter(out / "README.md")
    assert set(meta) == FRONT_MATTER_KEYS
    assert meta["title"] == "Ethnic Group Recognizer"  # the shipped model's title
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["sdk_version"] == pinned_gradio()
    assert meta["python_version"] == "3.11"
    assert meta["colorFrom"] in SPACE_COLORS and meta["colorTo"] in SPACE_COLORS
    assert meta["license"] == "mit"
    assert 0 < len(meta["short_description"]) <= SHORT_DESCRIPTION_MAX
    assert (out / "requirements.txt").read_text() == f"ethnic-group-recognizer[demo] @ {REPO.as_uri()}\n"
    copied = read_model_dir(out / "model")
    assert copied.labels == read_model_dir(shipped_model).labels
    assert (out / "model" / "model.onnx").read_bytes() == (shipped_model / "model.onnx").read_bytes()
    app_py = (out / "app.py").read_text()
    assert 'Recognizer.load(Path(__file__).parent / "model")' in app_py
    compile(app_py, "app.py", "exec")
    body = (out / "README.md").read_text()
    for label, count in read_model_dir(shipped_model).metadata.training_counts.items():
        assert f"| {label} | {count}" in body  # every class shows the data behind it
    assert "*.onnx filter=lfs" in (out / ".gitattributes").read_text()


def test_app_py_uses_entries_that_exist(shipped_model: Path, tmp_path: Path) -> None:
    """The generated app.py imports only what this tree has, so a rename fails here, in seconds."""
    app_py = (build_space(tmp_path / "space", source=REPO) / "app.py").read_text()
    tree = ast.parse(app_py)
    imported = [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    ]
    assert ("ethnic_group_recognizer.model", "Recognizer") in imported
    for module, name in imported:
        if module.startswith("ethnic_group_recognizer"):
            assert hasattr(importlib.import_module(module), name), f"{module}.{name} is gone"
    demo_module = next(m for m, n in imported if n == "build_demo")
    parameters = inspect.signature(importlib.import_module(demo_module).build_demo).parameters
    assert "max_upload_bytes" in parameters


def test_title_and_labels_from_a_users_model_cannot_break_the_front_matter(
    shipped_model: Path, tmp_path: Path
) -> None:
    hostile_name = 'kilts: "and"\n---\nsdk: docker\u2028x'
    labels = [f"class {i}" for i in range(11)] + ["kilt | <img src=x onerror=y> [y](mailto:e)"]
    # a user's model without a card: its title comes from its (hostile) name
    model = copy_model(
        shipped_model, tmp_path / "mine", name=hostile_name, labels=labels, threshold=0.0, card=None
    )
    out = build_space(tmp_path / "space", model, source=REPO)
    meta = front_matter(out / "README.md")
    assert set(meta) == FRONT_MATTER_KEYS and meta["sdk"] == "gradio"
    assert meta["title"] == 'Recognizer: kilts: "and" sdk: docker x'  # the card's neutral title
    assert meta["short_description"] == "Tells which of 12 classes a photo shows"  # cannot abstain
    body = (out / "README.md").read_text()
    assert re.search(r"(?<!\\)<", body) is None, "unescaped HTML in README.md"
    assert "](mailto:e)" not in body and r"kilt \| \<img" in body
    assert build_space(tmp_path / "titled", model, source=REPO, title="Kilts").joinpath("README.md")
    assert front_matter(tmp_path / "titled" / "README.md")["title"] == "Kilts"


def test_non_empty_out_is_refused_unless_forced(shipped_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "space"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SpaceError, match="not empty; pass --force"):
        build_space(out, source=REPO)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    build_space(out, source=REPO, force=True)
    assert (out / "notes.txt").read_text() == "mine"  # only the Space's own entries are replaced
    build_space(out, source=REPO, force=True)  # again, over its own previous build
    assert read_model_dir(out / "model").labels


def test_force_replaces_links_without_following_them(shipped_model: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    out = tmp_path / "space"
    out.mkdir()
    (out / "model").symlink_to(outside, target_is_directory=True)
    (out / "app.py").symlink_to(outside / "precious.txt")
    build_space(out, source=REPO, force=True)
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
    assert (outside / "precious.txt").read_text() == "keep"
    assert not (out / "model").is_symlink() and not (out / "app.py").is_symlink()


def test_bad_or_linked_model_is_refused_before_anything_is_written(
    shipped_model: Path, tmp_path: Path
) -> None:
    broken = copy_model(shipped_model, tmp_path / "broken")
    (broken / "labels.json").write_text('["only one"]')
    with pytest.raises(ModelError, match="training_counts"):
        build_space(tmp_path / "a", broken, source=REPO)
    with pytest.raises(ModelError, match="not a model directory"):
        build_space(tmp_path / "a", tmp_path / "missing", source=REPO)
    assert not (tmp_path / "a").exists()

    linked = copy_model(shipped_model, tmp_path / "linked")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the public")
    (linked / "notes.txt").symlink_to(secret)
    (linked / ".hidden").write_text("x")
    out = build_space(tmp_path / "b", linked, source=REPO)
    assert not (out / "model" / "notes.txt").exists() and not (out / "model" / ".hidden").exists()

    (linked / "labels.json").rename(tmp_path / "labels.json")
    (linked / "labels.json").symlink_to(tmp_path / "labels.json")
    with pytest.raises(SpaceError, match="symbolic link"):
        build_space(tmp_path / "c", linked, source=REPO)
    assert not (tmp_path / "c").exists()


def test_out_and_model_must_not_overlap(shipped_model: Path, tmp_path: Path) -> None:
    model = copy_model(shipped_model, tmp_path / "space" / "model")
    with pytest.raises(SpaceError, match="must not contain each other"):
        build_space(tmp_path / "space", model, source=REPO, force=True)
    with pytest.raises(SpaceError, match="must not contain each other"):
        build_space(model / "space", model, source=REPO)
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in shipped_model.iterdir())


def test_requirement_line(tmp_path: Path) -> None:
    url = "git+https://github.com/someone/ethnic-group-recognizer.git@v0.1.0"
    assert requirement_line(url) == f"ethnic-group-recognizer[demo] @ {url}"
    assert requirement_line(PLACEHOLDER_SOURCE).endswith(PLACEHOLDER_SOURCE)
    assert requirement_line(REPO) == f"ethnic-group-recognizer[demo] @ {REPO.as_uri()}"
    assert (
        requirement_line(requirement="  egr-fork[demo] @ https://x/y.whl ")
        == "egr-fork[demo] @ https://x/y.whl"
    )
    for bad in ("not a source", "ftp://x/y", str(tmp_path)):  # tmp_path: a folder without pyproject.toml
        with pytest.raises(SpaceError):
            requirement_line(bad)
    for bad in ("x\n--index-url https://evil", "--extra-index-url https://evil", "", "a\rb"):
        with pytest.raises(SpaceError):
            requirement_line(requirement=bad)


def test_cli_builds_refuses_and_warns_about_the_placeholder(shipped_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(space_app, ["build", "--out", str(tmp_path / "s"), "--source", str(REPO)])
    assert result.exit_code == 0, result.output
    assert "wrote a Gradio Space" in result.stdout and "placeholder" not in result.stderr
    again = runner.invoke(space_app, ["build", "--out", str(tmp_path / "s"), "--source", str(REPO)])
    assert again.exit_code == 2 and "not empty" in again.stderr and "Traceback" not in again.output
    placeholder = runner.invoke(space_app, ["build", "--out", str(tmp_path / "p")])
    assert placeholder.exit_code == 0 and "placeholder" in placeholder.stderr
    bad_model = runner.invoke(space_app, ["build", "--out", str(tmp_path / "m"), "--model", str(tmp_path)])
    assert bad_model.exit_code == 2 and "not a model directory" in bad_model.stderr
    assert not (tmp_path / "m").exists()


# -- the Space, as the Hub runs it ------------------------------------------------------------------


def copy_checkout(target: Path) -> Path:
    """What pip needs to build the product, copied, so building never writes into the checkout."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    shutil.copytree(
        REPO / "src", target / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    )
    return target


def run_clean(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` outside this venv: no PYTHONPATH or VIRTUAL_ENV leaks into the Space's venv."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_DEMO_EXTRA,
    reason="the optional 'demo' extra (gradio, gradio_client) is not installed: pip install '.[demo]'",
)
def test_space_runs_from_a_fresh_venv_and_answers_gradio_client(shipped_model: Path, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    started = time.monotonic()
    # A model that differs from the shipped one (never abstains), so the answer proves app.py
    # loaded the Space's own ./model and not the package's default.
    model = copy_model(shipped_model, tmp_path / "mine", name="space-test", threshold=0.0)
    space = build_space(tmp_path / "space", model, source=copy_checkout(tmp_path / "checkout"))

    venv = tmp_path / "venv"
    made = run_clean([sys.executable, "-m", "venv", str(venv)], VENV_TIMEOUT_S)
    if made.returncode != 0:
        pytest.skip(f"cannot create a virtual environment here: {made.stderr.strip()[-300:]}")
    python = venv / "bin" / "python"
    installed = run_clean(
        [str(python), "-m", "pip", "install", "-q", "-r", str(space / "requirements.txt")],
        PIP_TIMEOUT_S,
    )
    if installed.returncode != 0 and NO_NETWORK.search(installed.stderr + installed.stdout):
        pytest.skip(f"pip cannot reach the package index from here: {installed.stderr.strip()[-300:]}")
    assert installed.returncode == 0, installed.stderr[-4000:]
    probe = run_clean(
        [
            str(python),
            "-c",
            "import importlib.util, ethnic_group_recognizer as p; "
            "print(p.__file__); print(importlib.util.find_spec('torch') is None)",
        ],
        120,
    )
    package_file, torch_free = probe.stdout.split()
    assert Path(package_file).is_relative_to(venv), package_file  # the venv's install, not src/
    assert torch_free == "True", "the demo extra pulled in torch"

    port = free_port()
    env = {
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
        "PYTHONPATH": "",
    }
    photo = tmp_path / "texture.jpg"
    photo.write_bytes(photo_bytes("JPEG", seed=3))
    with run_server([str(python), str(space / "app.py")], f"http://127.0.0.1:{port}", "/", env) as server:
        client = Client(server.base + "/", verbose=False)
        try:
            result = client.predict(handle_file(str(photo)), api_name="/predict")
        finally:
            client.close()
    labels = read_model_dir(space / "model").labels
    none_of_these = read_model_dir(space / "model").metadata.card_or_default.none_of_these
    assert isinstance(result, dict) and (result["label"] in labels or result["label"] == none_of_these)
    expected = Recognizer.load(space / "model").predict(photo)
    assert not expected.abstained  # threshold 0: this model always names a class
    assert result["label"] == expected.display_label
    print(f"space build + fresh venv + app.py + gradio_client: {time.monotonic() - started:.0f} s")
