"""Exception types shared by the core, the CLI and the widgets."""

from __future__ import annotations


class ArtSegError(Exception):
    """A problem the user can fix (bad file, bad setting); its message is one line.

    The CLI prints ``str(error)`` and exits with status 2; widgets show it as a
    notification. The message names the file and the problem.
    """


class ImageReadError(ArtSegError):
    """An image file could not be read as a single 2-D image."""


class ModelFileError(ArtSegError):
    """A model folder is missing, incomplete, unsafe or incompatible."""


class LabelsFileError(ArtSegError):
    """A labels CSV file is malformed."""
