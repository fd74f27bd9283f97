"""The documentation stays true: the README's configuration table is service.config's, every
KCDS_* variable is read there and named nowhere else without being a setting, and every
link, path and test named in the README and the guides exists."""

import re
from dataclasses import fields
from pathlib import Path

import pytest

from service import config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: the guides this test reads (docs/clinical/ is the clinical specification's, kept apart)
DOCS = [
    README,
    ROOT / "CONTRIBUTING.md",
    ROOT / "bench" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
#: variables of the test suite and the benchmark, not of the service
NOT_SETTINGS = {"KCDS_TEST_POSTGRES", "KCDS_BENCH_SAMPLES", "KCDS_UPDATE_SCREENSHOT"}
#: named in the guides, made by a run, never committed (.gitignore)
GENERATED = {"bench/results/"}
SETTINGS = {f.metadata["var"].name for f in fields(config.Settings)}
VARIABLE = re.compile(r"\bKCDS_[A-Z0-9_]*[A-Z0-9]\b")


def sources(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def prose(doc: Path) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", doc.read_text("utf-8"), flags=re.M | re.S)


def test_the_readme_configuration_table_is_the_settings():
    written = README.read_text("utf-8").split(config.TABLE_BEGIN, 1)[1]
    written = written.split(config.TABLE_END, 1)[0]
    assert written == config.markdown_table(), (
        "the README's configuration table is stale: run "
        "`.venv/bin/python -m service.config README.md`"
    )


def test_the_table_is_written_between_its_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{config.TABLE_BEGIN}old\n{config.TABLE_END}\nafter\n")
    config.write_table(doc)
    assert doc.read_text() == (
        f"before\n{config.TABLE_BEGIN}{config.markdown_table()}{config.TABLE_END}\nafter\n"
    )
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit, match="settings:begin"):
        config.write_table(doc)


def test_every_setting_is_declared_with_its_variable_and_meaning():
    for f in fields(config.Settings):
        var = f.metadata["var"]
        assert var.name.startswith("KCDS_") and var.meaning and var.reader.accepts, f.name
    assert len(SETTINGS) == len(fields(config.Settings)), "two settings share a variable"
    assert config.Settings.from_env({}) == config.Settings(
        replay_cache=config.read("database_url", {})
    )


def test_kcds_variables_are_read_only_in_service_config():
    reads = re.compile(r"(environ|getenv)\b[^\n]*KCDS_")
    for path in sources("service", "cds_hooks"):
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            assert not reads.search(line), (
                f"{path.relative_to(ROOT)}:{number} reads a KCDS_ variable itself: "
                "declare it in service/config.py and use Settings or config.read()"
            )


def test_every_kcds_variable_named_anywhere_is_a_setting():
    texts = [*DOCS, *sources("service", "cds_hooks"), ROOT / "Dockerfile"]
    texts += sorted((ROOT / "deploy").rglob("*.yaml"))
    for path in texts:
        if not path.exists():
            continue
        unknown = set(VARIABLE.findall(path.read_text("utf-8"))) - SETTINGS - NOT_SETTINGS
        assert not unknown, f"{path.relative_to(ROOT)} names {sorted(unknown)}: no such setting"


def test_the_readme_is_short():
    assert len(README.read_text("utf-8").splitlines()) <= 200


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", prose(doc), re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_lead_somewhere(doc):
    if not doc.exists():
        pytest.skip(f"{doc.name} is not written yet")
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(doc)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.exists(), f"{doc.name}: link to missing {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{doc.name}: no heading for #{anchor} in {path}"


PATH = re.compile(
    r"`((?:cds_hooks|service|tests|fixtures|scripts|bench|deploy|docs)/[\w./-]*)(?:::(\w+))?`"
)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_and_tests_named_exist(doc):
    if not doc.exists():
        pytest.skip(f"{doc.name} is not written yet")
    for path, name in PATH.findall(doc.read_text("utf-8")):
        if path in GENERATED:
            continue
        assert (ROOT / path).exists(), f"{doc.name} names {path}, which does not exist"
        if name:
            assert re.search(rf"^(def|class) {name}\b", (ROOT / path).read_text(), re.M), (
                f"{doc.name} names {path}::{name}, which is not defined there"
            )


def test_every_source_a_rule_cites_is_in_the_source_list():
    """CONTRIBUTING's 'cite its sources': the ids a rule cites are the ones its page shows."""
    from service.engine.cards import sources
    from service.engine.rules import RULES

    for rule in RULES.values():
        for source_id in re.findall(r"\bS\d+\b", rule.source):
            assert source_id in sources(), f"{rule.id} cites {source_id}: not in sources.yaml"


def test_every_shipped_value_set_has_its_provenance_section():
    """CONTRIBUTING's value-set step 2: SOURCES.md has a section per set file."""
    folder = ROOT / "service" / "engine" / "data" / "valuesets"
    sections = set(re.findall(r"^### (\S+\.json) ", (folder / "SOURCES.md").read_text(), re.M))
    assert sections == {p.name for p in folder.glob("*.json")}
