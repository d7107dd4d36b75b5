"""Include/exclude globs on container paths: ``*`` stays in a segment, ``**`` crosses them."""

from __future__ import annotations

import pytest

from hearth.files.globs import glob_match, selected


@pytest.mark.parametrize(
    ("path", "pattern", "expected"),
    [
        ("a.png", "*.png", True),
        ("charts/a.png", "*.png", False),
        ("charts/a.png", "**/*.png", True),
        ("a.png", "**/*.png", True),
        ("x/y/z/a.png", "**/*.png", True),
        ("x/y/z/a.png", "x/**", True),
        ("x", "x/**", False),
        ("x/y/a.csv", "x/**/a.csv", True),
        ("x/a.csv", "x/**/a.csv", True),
        ("out/2024/q1.csv", "out/*/q?.csv", True),
        ("out/2024/q10.csv", "out/*/q?.csv", False),
        ("a1", "a[0-9]", True),
        ("ab", "a[!0-9]", True),
        ("a/", "a[!0-9]", False),
        ("a[1].txt", "a[[]1].txt", True),
        ("A.PNG", "*.png", False),
        ("report.pdf", "report.pdf", True),
        ("a+b(c).txt", "a+b(c).txt", True),
    ],
)
def test_glob_match(path: str, pattern: str, expected: bool) -> None:
    assert glob_match(path, pattern) is expected


def test_selected_applies_include_then_exclude() -> None:
    assert selected("a.png", (), ())
    assert selected("a.png", ("*.png",), ())
    assert not selected("a.csv", ("*.png",), ())
    assert not selected("tmp/a.png", ("**/*.png",), ("tmp/**",))
    assert selected("keep/a.png", ("**/*.png",), ("tmp/**",))
