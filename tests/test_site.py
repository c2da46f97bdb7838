"""The static web app: `egr site build`, and pages that are offline-safe and accessible by construction."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ethnic_group_recognizer.cli import app as cli
from ethnic_group_recognizer.site import WEB_DIR, build_site, config_js, normalise_api_url

PAGES = ("index.html", "recognize.html", "about.html")


def test_build_writes_every_page_with_the_api_url(tmp_path: Path) -> None:
    files = build_site("https://api.example.org/egr/", tmp_path / "site")
    names = {p.relative_to(tmp_path / "site").as_posix() for p in files}
    assert (
        set(PAGES) | {"config.js", "style.css", "common.js", "recognize.js", "about.js", "markdown.js"}
        <= names
    )
    config = (tmp_path / "site" / "config.js").read_text()
    assert 'apiBase: "https://api.example.org/egr"' in config
    for page in PAGES:
        assert (tmp_path / "site" / page).read_bytes() == (WEB_DIR / page).read_bytes()


@pytest.mark.parametrize(
    "url", ["api.example.org", "ftp://x.org", "https://", "javascript:alert(1)", "https://a.org/?q=1"]
)
def test_bad_api_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="--api-url"):
        normalise_api_url(url)


def test_config_js_escapes_the_url() -> None:
    assert (
        config_js('https://a.org/"x')
        == '// Where the pages find the API; written by `egr site build`.\nwindow.EGR_CONFIG = { apiBase: "https://a.org/\\"x" };\n'
    )


def test_out_must_be_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        build_site("https://a.org", target)


def test_cli_site_build(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli, ["site", "build", "--api-url", "http://127.0.0.1:9000", "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 0, result.output
    assert 'apiBase: "http://127.0.0.1:9000"' in (tmp_path / "s" / "config.js").read_text()
    bad = runner.invoke(cli, ["site", "build", "--api-url", "nope", "--out", str(tmp_path / "t")])
    assert bad.exit_code == 2
    assert not (tmp_path / "t").exists()


def test_serve_command_is_registered() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    for option in (
        "--model",
        "--host",
        "--port",
        "--cors-origins",
        "--max-upload-mb",
        "--examples",
        "--no-batching",
    ):
        assert option in result.output


# -- offline and accessibility checks on the page sources ---------------------------------------
class PageAudit(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.images_without_alt: list[str] = []
        self.inputs: list[str] = []
        self.label_for: set[str] = set()
        self.lang = None
        self.has_main = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href"):
            url = values.get(name) or ""
            if re.match(r"^(https?:)?//", url):
                self.external.append(url)
        if tag == "html":
            self.lang = values.get("lang")
        if tag == "main":
            self.has_main = True
        if tag == "img" and "alt" not in values:
            self.images_without_alt.append(values.get("id") or values.get("src") or "?")
        if tag == "input" and values.get("type") != "hidden":
            self.inputs.append(values.get("id") or "")
        if tag == "label" and values.get("for"):
            self.label_for.add(values["for"])


@pytest.mark.parametrize("page", PAGES)
def test_pages_are_offline_and_accessible(page: str) -> None:
    audit = PageAudit()
    audit.feed((WEB_DIR / page).read_text(encoding="utf-8"))
    assert audit.external == [], "pages must not load anything from another host (no CDN)"
    assert audit.images_without_alt == []
    assert audit.lang == "en" and audit.has_main
    assert all(audit.inputs) and set(audit.inputs) <= audit.label_for, "every input needs a <label for>"


def test_scripts_and_styles_load_nothing_external() -> None:
    for path in WEB_DIR.rglob("*"):
        if path.suffix in (".js", ".css"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"(@import|url\()\s*['\"]?(https?:)?//", text), path
            assert not re.search(r"['\"`]https?://(?!\\/)", text.replace("https?:\\/\\/", "")), path


def test_api_site_leaves_out_the_review_tool(tmp_path: Path) -> None:
    """The dataset review page needs a local server and a dataset: it never goes into a public site."""
    assert (WEB_DIR / "review").is_dir()
    build_site("https://api.example.org", tmp_path / "site")
    assert not (tmp_path / "site" / "review").exists()
    assert not [
        p for p in (tmp_path / "site").rglob("*") if "review" in p.relative_to(tmp_path / "site").parts
    ]


def test_site_build_refuses_a_folder_that_is_not_a_site(tmp_path):
    """Everything in --out is published: a dataset given by mistake must not be."""
    from ethnic_group_recognizer.site import SITE_MARKER, build_site

    dataset = tmp_path / "photos"
    (dataset / "kilt").mkdir(parents=True)
    (dataset / "kilt" / "1.jpg").write_bytes(b"a private photo")
    with pytest.raises(ValueError, match="not empty and not a site egr built"):
        build_site("https://api.example.org", dataset)
    assert sorted(p.name for p in dataset.iterdir()) == ["kilt"]
    site = tmp_path / "site"
    build_site("https://api.example.org", site)
    assert (site / SITE_MARKER).is_file()
    build_site("https://api.example.org", site)  # a re-build of its own site is fine
    assert build_site("https://api.example.org", dataset, force=True)
    assert (dataset / "kilt" / "1.jpg").read_bytes() == b"a private photo"
