"""The labelling keys, declared once, and their binding on a napari viewer and layers.

The keys are chosen among those that no napari 0.9 layer keymap or viewer
keymap uses (checked against ``KeymapHandler.active_keymap`` with an Image,
Labels, Points and Shapes layer selected), so a selected layer cannot shadow
them. They are bound on the viewer with ``overwrite=True`` and on the layers
the widget creates, and released (previous bindings restored) on close.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class KeyAction:
    """One keyboard action of the labelling widget.

    Attributes
    ----------
    method : str
        Name of the widget method the key calls (no arguments).
    key : str
        napari key binding, e.g. ``"K"`` or ``"Shift+N"``.
    text : str
        Button text (the key is appended in brackets).
    tooltip : str
        What the key does.
    """

    method: str
    key: str
    text: str
    tooltip: str

    @property
    def button_text(self) -> str:
        """Button text showing the key, e.g. ``"Artifact [K]"``."""
        return f"{self.text} [{self.key}]"


LABELLING_KEYS: tuple[KeyAction, ...] = (
    KeyAction("label_artifact", "K", "Artifact", "Label this image 'artifact' and show the next"),
    KeyAction("label_clean", "J", "Clean", "Label this image 'clean' and show the next"),
    KeyAction("label_unsure", "U", "Unsure", "Label 'unsure' (skipped by training), show the next"),
    KeyAction("clear_label", "Q", "Clear label", "Remove this image's label"),
    KeyAction("previous_image", "H", "Previous", "Previous image (within the filter)"),
    KeyAction("next_image", "N", "Next", "Next image (within the filter)"),
    KeyAction("next_unlabelled", "Shift+N", "Next unlabelled", "Next image with no label"),
    KeyAction("undo", "Shift+Z", "Undo label", "Undo the last label change"),
    KeyAction("next_most_useful", "V", "Next most useful",
              "The unlabelled image the current model is least sure about"),
)

#: Keys of the predict & correct widget (free in napari 0.9's keymaps, distinct from the above).
CORRECTION_KEYS: tuple[KeyAction, ...] = (
    KeyAction("predict_current", "W", "Predict this image", "Run the selected model on this image"),
    KeyAction("accept_mask", "G", "Accept as curated",
              "Save the mask as this image's curated mask (masks/<image>.tif)"),
    KeyAction("next_most_useful_mask", "Shift+V", "Next most useful mask",
              "The predicted mask (without a curated one) with the most expected wrong pixels"),
)


class KeyCommand:
    """A keymap callback that calls a widget method, ignoring the keymap provider."""

    def __init__(self, method: Callable[[], Any]) -> None:
        self._method = method
        # napari's keymap handler reads ``__name__`` of every bound callback
        self.__name__ = f"artseg_{getattr(method, '__name__', 'command')}"
        self.__qualname__ = self.__name__

    def __call__(self, _provider: Any = None) -> None:
        """Called by napari's keymap handler with the viewer or layer."""
        self._method()


class KeyBinder:
    """Bind a table of key actions on keymap providers and release them again.

    Parameters
    ----------
    actions : iterable of KeyAction
        The table.
    target : object
        Holds the methods named by the actions.
    """

    def __init__(self, actions: Iterable[KeyAction], target: object) -> None:
        self.actions = tuple(actions)
        self._commands = {a.key: KeyCommand(getattr(target, a.method)) for a in self.actions}
        self._previous: dict[int, tuple[Any, dict[str, Any]]] = {}

    def bind(self, provider: Any) -> None:
        """Bind every key on ``provider`` (a viewer or layer), overwriting, once."""
        if id(provider) in self._previous:
            return
        replaced = {}
        for key, command in self._commands.items():
            replaced[key] = provider.bind_key(key, command, overwrite=True)
        self._previous[id(provider)] = (provider, replaced)

    def release(self, provider: Any) -> None:
        """Remove the keys from ``provider`` and restore what they replaced."""
        entry = self._previous.pop(id(provider), None)
        if entry is None:
            return
        for key, command in self._commands.items():
            current = provider.keymap.get(_coerce(key))
            if current is command or current is None:
                provider.bind_key(key, entry[1].get(key), overwrite=True)

    def release_all(self) -> None:
        """Release the keys from every provider they were bound on."""
        for provider, _ in list(self._previous.values()):
            self.release(provider)

    def is_bound(self, provider: Any) -> bool:
        """True when the keys are bound on ``provider``."""
        return id(provider) in self._previous


def _coerce(key: str) -> Any:
    """The keymap key napari uses for a key string."""
    from napari.utils.key_bindings import coerce_keybinding

    return coerce_keybinding(key)
