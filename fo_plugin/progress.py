"""Progress of the library's long stages: ``progress=True / False / None`` as in FiftyOne Brain, or a callback.

Operators pass a callback that forwards to the App; a notebook user gets a progress bar on stderr by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Progress = Callable[[float, str], None]  # callback(fraction done in [0, 1], what is happening)
ProgressArg = bool | Progress | None
_STEPS = 1000


def _silent(_fraction: float, _label: str) -> None:
    return None


@contextmanager
def reporter(progress: ProgressArg, what: str) -> Iterator[Progress]:
    """A ``callback(fraction, label)`` for one stage named ``what``: ``progress`` itself when it is callable; a
    progress bar when it is True, or None and FiftyOne's ``show_progress_bars`` is on (its default); else silent.
    The bar only moves forward, is full when the stage succeeds and is closed however it ends."""
    if callable(progress):
        yield progress
        return
    if progress is None:
        import fiftyone as fo

        progress = fo.config.show_progress_bars
    if not progress:
        yield _silent
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=_STEPS, desc=what, bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}{postfix}]")

    def report(fraction: float, label: str) -> None:
        bar.n = max(bar.n, min(_STEPS, int(round(float(fraction) * _STEPS))))
        bar.set_postfix_str(label, refresh=False)
        bar.refresh()

    try:
        yield report
        report(1.0, "done")
    finally:
        bar.close()
