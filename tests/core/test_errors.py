"""The one-line messages every error report is built from."""

from __future__ import annotations

import pytest

from napari_artseg.errors import ImageReadError, first_line, typed_first_line


@pytest.mark.parametrize(("exc", "line", "typed"), [
    (ValueError("bad value\nTraceback detail"), "bad value", "ValueError: bad value"),
    (OSError("\n  disk full  \nmore"), "disk full", "OSError: disk full"),
    (RuntimeError(""), "RuntimeError", "RuntimeError"),
    (KeyError(), "KeyError", "KeyError"),
    (ImageReadError("a.tif: not a readable TIFF"), "a.tif: not a readable TIFF",
     "ImageReadError: a.tif: not a readable TIFF"),
])
def test_first_line_keeps_one_line_and_names_the_type_when_empty(exc, line, typed):
    assert first_line(exc) == line
    assert typed_first_line(exc) == typed
    assert "\n" not in first_line(exc) and "\n" not in typed_first_line(exc)
