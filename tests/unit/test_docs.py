"""The docs keep their facts where the code has them: the exit-code table against the error
classes' `exit_code`s, the README's command table against the CLI's commands, the reconcile
page against the drift kinds, and the one flow diagram the README and the site's home share.
(`mkdocs build --strict` in .ci/run checks links, anchors and the generated CLI reference;
tests/integration/test_docs_examples.py runs the examples the docs mark as runnable.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click

from shipyard.cli import main
from shipyard.core import errors

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"


def _table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _error_classes() -> list[type[errors.ShipyardError]]:
    found, todo = [], [errors.ShipyardError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == errors.__name__:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_the_exit_code_table_is_the_error_classes_codes():
    rows = _table_rows((DOCS / "exit-codes.md").read_text(), "| code |")
    table = {int(row[0]): set(re.findall(r"`(\w+)`", row[1])) for row in rows}
    classes = _error_classes()
    assert len(classes) >= 13
    assert set(table) == {0} | {cls.exit_code for cls in classes}, \
        "docs/exit-codes.md must have one row per exit code errors.py uses, and 0"
    for cls in classes:
        assert cls.__name__ in table[cls.exit_code], \
            f"{cls.__name__} (exit {cls.exit_code}) is not in that row of docs/exit-codes.md"
    listed = set().union(*table.values())
    assert listed == {cls.__name__ for cls in classes}, "a class the table names is gone"


def test_no_other_module_gives_an_error_an_exit_code_the_table_lacks():
    """Subclasses elsewhere (validation's ExampleError, ...) inherit a code; one that set its
    own would need a row."""
    codes = {int(row[0]) for row in _table_rows((DOCS / "exit-codes.md").read_text(),
                                                "| code |")}
    for path in (ROOT / "components" / "shipyard").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id == "exit_code"
                    and isinstance(node.value, ast.Constant)):
                assert node.value.value in codes, f"{path}: exit_code {node.value.value}"


def _leaf_commands(command: click.Command, path: tuple[str, ...] = ()) -> list[str]:
    if isinstance(command, click.Group):
        return [leaf for name, sub in sorted(command.commands.items())
                for leaf in _leaf_commands(sub, path + (name,))]
    return [" ".join(("shipyard",) + path)]


def test_the_readme_lists_every_command_once():
    rows = _table_rows((ROOT / "README.md").read_text(), "| command |")
    listed = [row[0].strip("`") for row in rows]
    assert sorted(listed) == sorted(_leaf_commands(main)), \
        "README.md's command table must name every command (one line each)"


def test_the_readme_stays_a_landing_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_reconcile_page_explains_every_drift_kind():
    from shipyard.steps.drift import KINDS

    rows = _table_rows((DOCS / "reconcile.md").read_text(), "| kind |")
    assert [row[0].strip("`") for row in rows] == list(KINDS)


def test_the_readme_and_the_site_show_the_same_flow():
    def mermaid(text: str) -> str:
        return text.split("```mermaid\n", 1)[1].split("```", 1)[0]

    assert mermaid((ROOT / "README.md").read_text()) == mermaid((DOCS / "index.md").read_text())


def test_every_page_is_in_the_navigation():
    import yaml

    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)

    def pages(nav) -> list[str]:
        if isinstance(nav, str):
            return [nav]
        if isinstance(nav, dict):
            return [p for value in nav.values() for p in pages(value)]
        return [p for item in nav for p in pages(item)]

    assert sorted(pages(config["nav"])) == sorted(p.name for p in DOCS.glob("*.md"))
    assert "::: mkdocs-click" in (DOCS / "cli.md").read_text()


def test_the_readme_links_resolve():
    """mkdocs checks the site's links; the README is outside the site, so its links into
    docs/ are checked here: the file exists and the anchor is one of its headings."""
    from markdown.extensions.toc import slugify

    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert len(links) >= 20
    for target, anchor in links:
        if target.startswith(("http://", "https://")):
            continue
        path = ROOT / target
        assert path.is_file(), target
        if anchor:
            headings = re.findall(r"^#+ (.+?)\s*$", path.read_text(), re.M)
            assert anchor in {slugify(h, "-") for h in headings}, f"{target}#{anchor}"
