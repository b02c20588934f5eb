"""A one-line progress bar for long admin runs, drawn on a terminal only (never into a pipe or a file)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 30  # characters of the bar itself
REDRAW_EVERY = 0.1  # seconds: at most ten redraws a second, whatever the rate of updates


class ProgressBar:
    """``label [#####-----]  42%  detail``, redrawn in place on ``stream``; a fraction of None draws no bar.

    Draws nothing unless ``enabled``, by default when ``stream`` is a terminal. ``close`` erases it.
    """

    def __init__(
        self,
        stream: TextIO,
        label: str,
        *,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._label = label
        self.enabled = _is_terminal(stream) if enabled is None else enabled
        self._clock = clock
        self._next_draw = 0.0
        self._drawn = False

    def update(self, fraction: float | None, detail: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if now < self._next_draw and not force:
            return
        self._next_draw = now + REDRAW_EVERY
        self._stream.write("\r\x1b[K" + render(self._label, fraction, detail))
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False


def render(label: str, fraction: float | None, detail: str) -> str:
    """One frame of the bar, without the control characters that redraw it."""
    if fraction is None:
        return f"{label}  {detail}"
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * WIDTH)
    return f"{label} [{'#' * filled}{'-' * (WIDTH - filled)}] {fraction:4.0%}  {detail}"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or a stand-in stream
        return False
