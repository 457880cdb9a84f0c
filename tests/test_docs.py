"""The README a newcomer reads in two minutes, and the documentation site beside it.

The README stays short (150 lines at most); neither it nor any page under docs/ refers to this
project's issue tracker by number (the project's history lives in git); every relative link of the
README and of the pages points at a file that exists; and every page is in the site's nav. `make docs`
(run by `make test`) builds the site with `mkdocs build --strict`, which also checks the anchors.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 150

# "issue 23", "Issues 13 and 17", "issue #23": a reference to the tracker, in prose or in code.
ISSUE_WORD = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)
# "#23" as a reference. Not an HTML entity (&#8212;), not a URL fragment (page.md#23, #/experiments/1).
HASH_NUMBER = re.compile(r"(?<![\w&/#])#\d+\b")
FENCED_CODE = re.compile(r"^ *(```|~~~).*?^ *\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target "title"), ![alt](target), and reference definitions `[name]: target`.
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)


def issue_references(text: str) -> list[str]:
    """The places in a Markdown text that cite the issue tracker by number.

    A number after '#' inside code is what ltkd prints (the search trial `LTKD #3 (alpha=…)`, `trial #0`),
    so '#N' counts only outside code; 'issue N' counts everywhere."""
    prose = INLINE_CODE.sub(" ", FENCED_CODE.sub(" ", text))
    return ISSUE_WORD.findall(text) + HASH_NUMBER.findall(prose)


def relative_links(text: str) -> list[str]:
    """The link targets of a Markdown text that name a file (no scheme, not a bare #anchor), code left out."""
    prose = INLINE_CODE.sub(" ", FENCED_CODE.sub(" ", text))
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    return [t for t in targets if not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", t) and not t.startswith("#")]


@pytest.mark.parametrize(
    "text, found",
    [
        ("The balanced-softmax rows (issue 17) were added.", ["issue 17"]),
        ("### Fast trials (Issues 13 and 14)", ["Issues 13"]),
        ("as issue #23 asked", ["issue #23", "#23"]),
        ("fixed in #24, see README", ["#24"]),
        ("a code span may not cite one either: `issue 25`", ["issue 25"]),
        ("named `LTKD #3 (alpha=0.347, …)`, best (`trial #0`)", []),
        ("```\nsearch ltkd g10: best val_acc_tail 73.33 (trial #0)\n```\n", []),
        ("open http://127.0.0.1:5000/#/experiments/1/runs and failures.md#long-runs-resuming", []),
        ("a dash &#8212; and an issue-free line", []),
    ],
)
def test_issue_references_are_found_in_prose_and_code(text, found):
    assert issue_references(text) == found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_page_refers_to_an_issue_number(page):
    assert issue_references(page.read_text(encoding="utf-8")) == []


def test_the_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; at most {README_MAX_LINES}"


def test_relative_links_are_found_outside_code():
    text = '[a](docs/a.md) ![b](docs/b.png "b") [c](https://x.org) [d](#d) `[e](e.md)`\n\n[f]: docs/f.md\n'
    assert relative_links(text) == ["docs/a.md", "docs/b.png", "docs/f.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_at_a_file(page):
    links = relative_links(page.read_text(encoding="utf-8"))
    missing = [t for t in links if not (page.parent / t.split("#", 1)[0]).is_file()]
    assert missing == []
    if page == README:
        assert any(t.startswith("docs/") for t in links), "README.md links into the docs"


# A repository path in code (`orchestrator/tracking/layout.py`, `studies/smoke.yaml`, `tests/test_fencing.py`).
REPO_PATH = re.compile(r"(?<![\w./~-])((?:orchestrator|trainer|tests|bench|studies|deploy|docker|docs|\.ci)/[\w./*-]*)")
# Paths the pages name that the commands write, not the repository.
WRITTEN_BY_COMMANDS = {"studies/search_smoke.best.yaml"}  # `ltkd best studies/search_smoke.yaml`


def repository_paths(text: str) -> list[str]:
    """The repository paths named in a Markdown text's code (spans and blocks); globs left out."""
    blocks = [m.group(0) for m in FENCED_CODE.finditer(text)]
    code = blocks + [m.group(0) for m in INLINE_CODE.finditer(FENCED_CODE.sub(" ", text))]
    paths = [p.rstrip(".,:;") for c in code for p in REPO_PATH.findall(c)]
    return [p for p in paths if "*" not in p]


def test_repository_paths_are_found_in_code_only():
    text = "see `orchestrator/tracking/layout.py` and `tests/test_deploy_*.py`; docs/a.md\n```\ncat studies/smoke.yaml\n```\n"
    assert sorted(repository_paths(text)) == ["orchestrator/tracking/layout.py", "studies/smoke.yaml"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_a_page_names_exists(page):
    """The pages name modules, studies, tests and scripts: when one moves, the page must follow it."""
    paths = repository_paths(page.read_text(encoding="utf-8"))
    assert [p for p in paths if p not in WRITTEN_BY_COMMANDS and not (REPO / p).exists()] == []


def test_the_architecture_page_names_every_module_and_only_modules_that_exist():
    """Its tables name modules relative to their package root (`tracking/spool.py`, `cli.py`, `methods/`)."""
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (trainer|orchestrator)/\n(.*?)(?=^## |\Z)", page, re.MULTILINE | re.DOTALL))
    for package, top_level_only in (("orchestrator", False), ("trainer", True)):
        root = REPO / package
        named = set(re.findall(r"^\| `([\w/.]+)`(?:, `([\w/.]+)`)?", sections[package], re.MULTILINE))
        named = {n for pair in named for n in pair if n}
        if top_level_only:  # the trainer's packages are named as folders: `methods/`, `models/`, `datasets/`
            modules = {p.name for p in root.glob("*.py") if p.name != "__init__.py"}
            modules |= {p.name + "/" for p in root.iterdir() if (p / "__init__.py").is_file()}
        else:
            modules = {str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "__init__.py"}
        assert sorted(modules - named) == [], f"{package}/ modules the architecture page does not name"
        assert sorted(n for n in named if not (root / n).exists()) == [], f"names on the page that {package}/ lacks"


def test_every_page_is_in_the_site_nav():
    def paths(nav) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for v in nav.values() for p in paths(v)]
        return [p for item in nav for p in paths(item)]

    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    assert sorted(paths(config["nav"])) == sorted(p.name for p in DOCS.glob("*.md"))
    assert config["theme"]["name"] == "material"
