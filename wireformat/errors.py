"""Why bytes cannot be framed any further: one root, `DecodeError`, and a class per reason.

The readers raise these naming channel, offset and section; they say what is wrong with
the bytes, never what a checker makes of it (conformance maps each class to a violation
code in one table).
"""

from __future__ import annotations


class DecodeError(ValueError):
    """The bytes cannot be framed any further."""

    def __init__(self, message: str = "", *, channel: str = "main", offset: int = 0, section: str | None = None):
        self.message = message
        self.channel = channel
        self.offset = offset
        self.section = section
        where = f"{channel} @ {offset}" + (f" in section {section}" if section else "")
        super().__init__(f"{where}: {message}")


class Truncated(DecodeError):
    """The stream ends before the bytes a record needs. Raised bare (no message) by the read
    window, which does not know the place; the reader re-raises it placed."""


class HostileLength(DecodeError):
    """A length field beyond any sane bound: nothing is allocated or read for it."""


class PackagedTooLarge(HostileLength):
    """A nested MIG_CMD_PACKAGED whose length reaches past the package holding it."""


class Malformed(DecodeError):
    """Bytes that do not decode as the record they must be."""


class ConfigurationMalformed(Malformed):
    """The QEMU_VM_CONFIGURATION record does not decode."""


class UnknownSectionType(Malformed):
    """A top-level record type byte the format does not have."""


class UnknownSectionId(Malformed):
    """PART/END for a section id no START/FULL introduced: its payload cannot be framed."""


class MissingFooter(Malformed):
    """No section footer where a device body must end."""


class UnknownRamFlags(Malformed):
    """RAM record flags that are no known combination: the record cannot be framed."""


class BadPacketMagic(Malformed):
    """A multifd packet without the packet magic: the channel's packet framing is lost."""


class UnknownVfioMarker(Malformed):
    """A VFIO section body marker the format does not have."""
