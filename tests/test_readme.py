"""The README a newcomer reads: the two commands on its first screen, and every link
between it, docs/ and benchmarks/README.md resolving (files and #anchors)."""

import re

import pytest

from conftest import REPO

README = REPO / "README.md"
PAGES = [README, REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_the_first_screen_has_the_two_commands_and_what_make_test_does_as_root():
    top = "\n".join(README.read_text(encoding="utf-8").splitlines()[:40])
    assert "make run" in top and "make test" in top
    assert "apt-get install -y slurm-wlm munge" in top  # said where `make test` first appears


def _slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page):
    anchors, seen, in_code = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            slug = _slug(heading.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_resolves(page):
    broken = []
    for target in _links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, broken


def test_the_operator_material_lives_in_docs():
    """What the README used to hold, each in its docs/ page, which the README links."""
    readme = README.read_text(encoding="utf-8")
    for page, headings in {
        "reliability.md": ["What is tried", "Diverged and failed jobs", "Tracking outages"],
        "tracking.md": ["Tracking server", "Security"],
        "operations.md": ["Cluster", "What a change reruns",
                          "`make test` as root: a real one-node SLURM"],
        "running.md": ["The study plan and its cost", "Installing a framework", "Configuration"],
        "measurements.md": ["Measurements", "Provenance", "Metric names"],
        "design.md": ["Models", "Training", "Engines"],
    }.items():
        assert f"(docs/{page})" in readme
        anchors = _anchors(REPO / "docs" / page)
        assert {_slug(h) for h in headings} <= anchors, page
    # named in messages and comments as "README: Tracking server" (src/mosbench/tracking)
    assert "tracking-server" in _anchors(README)
