"""The demo summary's repository tree: the newest versions shown, older ones on one line."""

from __future__ import annotations

from shipyard.demo.run import repository_tree


def version(root, name: str, number: int) -> None:
    directory = root / name / str(number)
    (directory / "variables").mkdir(parents=True)
    (directory / "saved_model.pb").write_bytes(b"")


def test_older_versions_take_one_line_so_the_tree_does_not_grow(tmp_path):
    for number in (1, 2):
        version(tmp_path, "m", number)
    (tmp_path / "models.config").write_text("")
    (tmp_path / "m" / ".serving.lock").write_text("")  # hidden: left out
    two = repository_tree(tmp_path)
    assert two == [str(tmp_path), "├── m/", "│   ├── 1/", "│   │   ├── variables/",
                   "│   │   └── saved_model.pb", "│   └── 2/", "│       ├── variables/",
                   "│       └── saved_model.pb", "└── models.config"]

    version(tmp_path, "m", 3)
    three = repository_tree(tmp_path)
    assert three[2] == "│   ├── 1/ (an older version, not shown)" and len(three) == len(two) + 1

    for number in (4, 10):
        version(tmp_path, "m", number)
    five = repository_tree(tmp_path)
    assert len(five) == len(two) + 1
    assert five[:3] == [str(tmp_path), "├── m/",
                        "│   ├── 1/ ... 3/ (3 older versions, not shown)"]
    assert [line for line in five if line.endswith(("4/", "10/"))] == ["│   ├── 4/",
                                                                       "│   └── 10/"]
