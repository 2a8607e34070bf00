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



def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none.

    Parameters
    ----------
    exc : BaseException
        Any exception.

    Returns
    -------
    str
        ``str(exc)`` without surrounding blank space, up to its first line break;
        ``type(exc).__name__`` when the message is empty.
    """
    text = str(exc).strip()
    return text.splitlines()[0].rstrip() if text else type(exc).__name__


def typed_first_line(exc: BaseException) -> str:
    """``"TypeName: first line"``, for an exception from a library, whose type says what happened.

    Parameters
    ----------
    exc : BaseException
        An exception from outside the package (``OSError``, ``zlib.error``, ...).

    Returns
    -------
    str
        Its type's name, followed by ``": "`` and :func:`first_line` when the
        message is not empty.
    """
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name
