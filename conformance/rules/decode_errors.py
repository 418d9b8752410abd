"""Which violation a framing failure is: wireformat's DecodeError classes -> catalogue codes.

The readers say why bytes cannot be framed (wireformat.errors); this table says how a
checker reports it. A class not listed takes the code of its nearest listed base.
"""

from __future__ import annotations

from wireformat.errors import (
    BadPacketMagic,
    ConfigurationMalformed,
    DecodeError,
    HostileLength,
    Malformed,
    MissingFooter,
    PackagedTooLarge,
    Truncated,
    UnknownRamFlags,
    UnknownSectionId,
    UnknownSectionType,
    UnknownVfioMarker,
)

from conformance.rules.catalogue import Code

DECODE_ERROR_CODES: dict[type[DecodeError], Code] = {
    DecodeError: Code.MALFORMED,
    Malformed: Code.MALFORMED,
    Truncated: Code.TRUNCATED,
    HostileLength: Code.HOSTILE_LENGTH,
    PackagedTooLarge: Code.PACKAGED_TOO_LARGE,
    ConfigurationMalformed: Code.CONFIGURATION_MALFORMED,
    UnknownSectionType: Code.UNKNOWN_SECTION_TYPE,
    UnknownSectionId: Code.UNKNOWN_SECTION_ID,
    MissingFooter: Code.MISSING_FOOTER,
    UnknownRamFlags: Code.RAM_UNKNOWN_FLAGS,
    # a multifd packet without its magic: the destination refuses the packet (and hangs)
    BadPacketMagic: Code.MULTIFD_PACKET,
    UnknownVfioMarker: Code.VFIO_UNKNOWN_MARKER,
}


def code_of(error: DecodeError) -> Code:
    for cls in type(error).__mro__:
        code = DECODE_ERROR_CODES.get(cls)
        if code is not None:
            return code
    raise TypeError(f"not a wireformat DecodeError: {type(error).__name__}")
