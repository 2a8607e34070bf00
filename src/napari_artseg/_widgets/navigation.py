"""Which image comes next: stepping through a list of images under a label filter.

GUI-free; the labelling widget holds one :class:`ImageNavigator`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

#: Filter name -> the labels it shows (None: unlabelled).
FILTERS: dict[str, tuple[str | None, ...] | None] = {
    "all": None,
    "unlabelled": (None,),
    "artifact": ("artifact",),
    "clean": ("clean",),
    "unsure": ("unsure",),
}


class ImageNavigator:
    """Position in a list of images and the filter the user steps through.

    Parameters
    ----------
    images : sequence of str
        Image names in display order.
    label_of : callable
        Returns the label of an image (None: unlabelled).
    """

    def __init__(self, images: Sequence[str], label_of: Callable[[str], str | None]) -> None:
        self.images = list(images)
        self._label_of = label_of
        self.index = 0
        self.filter = "all"

    @property
    def current(self) -> str | None:
        """The current image, or None when there are none."""
        return self.images[self.index] if self.images else None

    def set_filter(self, name: str) -> None:
        """Choose the filter (a key of :data:`FILTERS`)."""
        if name not in FILTERS:
            raise ValueError(f"unknown filter {name!r}; choose from {', '.join(FILTERS)}")
        self.filter = name

    def matches(self, image: str, filter_name: str | None = None) -> bool:
        """True when ``image`` passes the filter (the current one by default)."""
        wanted = FILTERS[filter_name or self.filter]
        return wanted is None or self._label_of(image) in wanted

    def go_to(self, image: str) -> bool:
        """Make ``image`` current; False when it is not in the list."""
        try:
            self.index = self.images.index(image)
        except ValueError:
            return False
        return True

    def find(self, step: int, filter_name: str | None = None, wrap: bool = False) -> int | None:
        """Index of the next (``step`` 1) or previous (-1) image passing the filter."""
        n = len(self.images)
        for offset in range(1, n if wrap else n + 1):
            j = self.index + step * offset
            if wrap:
                j %= n
            elif not 0 <= j < n:
                return None
            if self.matches(self.images[j], filter_name):
                return j
        return None

    def first_match(self, filter_name: str | None = None) -> int | None:
        """Index of the first image passing the filter."""
        for j, image in enumerate(self.images):
            if self.matches(image, filter_name):
                return j
        return None

    def upcoming(self, count: int, behind: int = 1) -> list[str]:
        """The current image, the next ``count`` passing the filter, then ``behind`` before."""
        ahead: list[str] = []
        j = self.index
        while len(ahead) < count and j + 1 < len(self.images):
            j += 1
            if self.matches(self.images[j]):
                ahead.append(self.images[j])
        back: list[str] = []
        j = self.index
        while len(back) < behind and j > 0:
            j -= 1
            if self.matches(self.images[j]):
                back.append(self.images[j])
        current = [self.current] if self.current is not None else []
        return current + ahead + back
