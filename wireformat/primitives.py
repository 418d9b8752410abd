"""Small building blocks shared by the codecs."""

from construct import Adapter, Int8ub, Int64ub, PascalString


# u8 length + bytes, no NUL (idstr, RAMBlock names, subsection names). latin-1 keeps every
# byte value, so hostile names round-trip exactly.
CountedString = PascalString(Int8ub, "latin-1")


class _RamWord(Adapter):
    """The be64 that starts every RAM record: page-aligned address | flags."""

    def _decode(self, obj, context, path):
        mask = context._params.get("page_size", 4096) - 1
        return {"addr": obj & ~mask, "flags": obj & mask}

    def _encode(self, obj, context, path):
        return obj["addr"] | obj["flags"]


RamWord = _RamWord(Int64ub)
