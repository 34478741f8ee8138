"""Progress reporting, kept out of the library's logic: the pipeline calls a
:class:`Progress`; the CLI passes a rich progress bar on a terminal and nothing otherwise."""

from __future__ import annotations

__all__ = ["Progress"]


class Progress:
    """Receives progress of a long operation. The base class ignores everything."""

    def start(self, description: str, total_bytes: int | None) -> None:
        """A phase begins; ``total_bytes`` is None when unknown."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes are done."""

    def finish(self) -> None:
        """The phase ended."""
