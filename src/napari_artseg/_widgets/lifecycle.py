"""Small pieces every dock widget shares: status messages and release on close or undock."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import QLabel, QPushButton


def make_button(text: str, tip: str, slot: Any) -> QPushButton:
    """A push button that never takes keyboard focus (keys keep going to the canvas)."""
    button = QPushButton(text)
    button.setToolTip(tip)
    button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
    button.clicked.connect(slot)
    return button


def show_status(label: QLabel, text: str, error: bool = False, notify: bool | None = None) -> None:
    """Show ``text`` in a status label; errors (or ``notify``) also become napari notifications.

    Parameters
    ----------
    label : QLabel
        The widget's status line.
    text : str
        The message (empty clears it).
    error : bool
        Draw it in red and notify as an error.
    notify : bool, optional
        Force (True) or suppress (False) the notification; default: only for errors.
    """
    label.setText(text)
    label.setStyleSheet("color: #ff6060;" if error else "")
    if text and (error if notify is None else notify):
        from napari.utils.notifications import show_error, show_warning

        (show_error if error else show_warning)(text)


class ReleaseOnUndock:
    """Mixin for a QWidget that defines ``release()``: call it on close and on undocking.

    napari removes a dock widget by taking it out of its dock (a parent change),
    without closing it, so both events release the keys, workers and layers.
    Put it before the Qt class: ``class MyWidget(ReleaseOnUndock, QWidget)``.
    """

    _had_parent = False

    def closeEvent(self, event: Any) -> None:
        """Release everything when the widget is closed."""
        self.release()
        super().closeEvent(event)

    def event(self, event: Any) -> bool:
        """Release when napari takes the widget out of its dock (dock closed)."""
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._had_parent = True
            elif self._had_parent:
                self.release()
        return super().event(event)
