"""`sealgate.example.toml` (issue 15) cannot rot: it loads, it equals the defaults, it names every key of every
section of gateway/config.py with a comment, and it is exactly what the generator makes from the code today.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from gateway.config import Config, load_config
from gateway.ops import example_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "sealgate.example.toml"
REGENERATE = "stale: run `.venv/bin/python -m gateway.ops.example_config --write`"


def test_the_example_loads_and_equals_the_defaults() -> None:
    """load_config(example) is the Config `sealgate serve` uses with no file (paths taken from the same folder)."""
    assert load_config(EXAMPLE) == load_config(None, base=EXAMPLE.parent)
    assert load_config(EXAMPLE) == Config().resolve(EXAMPLE.parent).validate()


def test_every_key_of_every_section_is_in_the_example_with_a_comment() -> None:
    """Each dataclass field of each section appears as a key line under its [section], followed by a comment."""
    text = EXAMPLE.read_text()
    doc = tomllib.loads(text)
    blocks = dict(re.findall(r"^\[(\w+)\]\n(.*?)(?=^\[|\Z)", text, flags=re.M | re.S))
    for section in dataclasses.fields(Config):
        cls = type(getattr(Config(), section.name))
        assert section.name in blocks, f"[{section.name}] missing from {EXAMPLE.name}: {REGENERATE}"
        for field in dataclasses.fields(cls):
            line = re.search(rf"^#? ?{field.name} = .*?  # (.+)$", blocks[section.name], flags=re.M)
            assert line, f"[{section.name}] {field.name} missing from {EXAMPLE.name}: {REGENERATE}"
            assert example_config.UNDOCUMENTED not in line.group(1), (
                f"[{section.name}] {field.name} has no one-line comment in gateway/config.py"
            )
            if getattr(cls(), field.name) is not None:
                assert field.name in doc[section.name]


def test_the_committed_example_is_what_the_code_generates() -> None:
    """The file equals the generator's output now: a key added to config.py shows up here until regenerated."""
    assert EXAMPLE.read_text() == example_config.render(), REGENERATE
    assert example_config.main(["--check"]) == 0


def test_comments_come_from_the_field_line_or_the_lines_above() -> None:
    """The generator reads a field's inline comment, else the comment block right above it."""
    source = (
        "class A:\n    x: int = 1  # inline\n    # above, first\n    # above, second\n    y: int = 2\n    z: int = 3\n"
    )
    found = example_config.field_comments(source)
    assert found[("A", "x")] == "inline"
    assert found[("A", "y")] == "above, first above, second"
    assert found[("A", "z")] == ""
    assert example_config.toml_value((Path("a"), 1.5, True, 'q"s')) == '["a", 1.5, true, "q\\"s"]'
