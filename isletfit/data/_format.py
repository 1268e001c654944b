"""The `Format` strategy base class: one small object per file layout."""

from __future__ import annotations

import abc
from typing import ClassVar

from ._raw import RawRecords


class Format(abc.ABC):
    """A file layout isletfit can read: recognises its content and parses it.

    Subclass it to add a layout: set `name`, implement `sniff` (from the content, never
    the file name) and `parse` (text to `RawRecords`); pass an instance as
    ``read(path, format=MyFormat())``.

    Attributes:
        name: Short name used by ``format=`` and the command line's ``--format``.
    """

    name: ClassVar[str] = ""

    @abc.abstractmethod
    def sniff(self, head: str) -> bool:
        """Whether `head` (a file's first characters, BOM removed) is this layout."""

    @abc.abstractmethod
    def parse(self, text: str, *, file: str) -> list[RawRecords]:
        """Parse a whole file's text into one `RawRecords` per patient.

        Args:
            text: The file's text (BOM removed, newlines normalised to LF).
            file: The file's path, for error messages.

        Returns:
            One `RawRecords` per patient in the file (vendor exports hold one).

        Raises:
            InputError: When the file is not of this layout or is broken.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
