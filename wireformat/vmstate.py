"""vmstate bodies: decode/encode a device section body from its description.

A QEMU_VM_SECTION_FULL body (and the CONFIGURATION record body) is a device's
vmstate fields back to back with no framing, followed by zero or more
subsections (QEMU migration/vmstate.c).  Field sizes come only from a
description; this module uses the stream's own VMDESCRIPTION trailer (migration/savevm.c),
whose device objects describe exactly what the source wrote.

It also reads the other description format, the JSON written by
``qemu-system-* -dump-vmstate FILE`` (the destination binary's view: versions
and minimum versions per vmsd), and maps a section idstr to an entry of it.

Pure codec: bytes / memoryview in, typed values out; no I/O and no policy.
Errors are :class:`VmstateDecodeError` (a ``ValueError``) carrying the byte
offset where decoding stopped; malformed descriptions raise its subclass
:class:`VmstateDescriptionError`; values that cannot be encoded raise
:class:`VmstateEncodeError`.

Facts this module relies on (checked against QEMU 7.2.22 and 10.0.2 captures,
see tests/test_vmstate.py and tests/data/vmstate/index.json):

* A field object of the VMDESCRIPTION JSON describes ``array_len`` (default 1)
  consecutive elements; ``size`` is the number of bytes the first element
  took on the wire.  Arrays that cannot be described once appear as one field
  object per element, each carrying ``index``.
* ``struct`` fields carry the nested vmsd object under the key ``struct``;
  ``tmp`` (and ``vstruct``) fields carry ``vmsd_name``/``version``/``fields``
  inline in the field object itself.
* ``capability`` elements are counted strings on the wire (u8 length + name);
  the JSON ``size`` is the first element's wire size, not every element's.
* ``nullptr`` is the one-byte placeholder (0x30 when written by QEMU) for a
  NULL element of an array of pointers.
* ``timer`` is a be64 expiry time (-1 when not armed); ``bool`` is one byte;
  ``uintN``/``intN`` (and their ``equal``/``le`` checking variants) are
  big-endian integers.
* Old-style sections (no vmsd) are described as ``size`` plus one ``buffer``
  field named ``data``; they never have subsections.
* -dump-vmstate is keyed by QOM *type* name, not by vmsd name; the vmsd name
  is ``Description.name``.  Several types share a vmsd name (``e1000``,
  ``e1000-82544gc``, ``e1000-82545em`` → ``e1000``), sometimes with different
  versions (``ne2k_pci`` 3/3 and ``ne2k_isa`` 2/0 are both ``ne2000``).
  Only devices with a class-level vmsd appear: ``timer``, ``cpu``,
  ``cpu_common``, ``apic``, ``PCIBUS``, ``i2c_bus``, ``globalstate``,
  ``acpi_build``, ``slirp`` and ``configuration`` are absent from it.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping, Sequence  # not typing's aliases: isinstance on those is ~5x slower
from dataclasses import dataclass
from typing import Any

from .budgets import DecodeBudget, JsonInputError, load_json

__all__ = [
    "SUBSECTION_MARKER",
    "NULLPTR_MARKER",
    "VmstateDecodeError",
    "VmstateDescriptionError",
    "VmstateEncodeError",
    "VmField",
    "VmStruct",
    "VmSubsection",
    "DecodedBody",
    "decode_body",
    "encode_body",
    "VmDescription",
    "parse_vmdescription",
    "DumpField",
    "VmsdInfo",
    "DumpVmstate",
    "parse_dump_vmstate",
    "vmsd_name_candidates",
    "lookup_idstr",
    "NOT_IN_DUMP_VMSTATE",
]

SUBSECTION_MARKER = 0x05  # QEMU_VM_SUBSECTION
NULLPTR_MARKER = 0x30  # byte QEMU writes for a NULL element of a pointer array

_INT_TYPE = re.compile(r"^(u?)int(8|16|32|64)\b")
# Types decoded as unsigned integers when their size is 1/2/4/8 bytes.
_UNSIGNED_SCALARS = frozenset({"bool", "nullptr"})
# Types decoded as signed integers when their size is 1/2/4/8 bytes.
_SIGNED_SCALARS = frozenset({"timer"})
# Types whose element carries a vmsd object inline in the field object.
_INLINE_VMSD_TYPES = frozenset({"tmp", "vstruct"})
_INT_SIZES = (1, 2, 4, 8)
_STRUCT_CODES = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
                 (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}


# --------------------------------------------------------------------------- errors


class VmstateDecodeError(ValueError):
    """Body or JSON that cannot be decoded; ``offset`` is where it went wrong."""

    def __init__(self, message: str, offset: int):
        super().__init__(f"{message} (at offset {offset})")
        self.message = message
        self.offset = offset


class VmstateDescriptionError(VmstateDecodeError):
    """The description itself is malformed (offset: where decoding had got to)."""


class VmstateBudgetError(VmstateDescriptionError):
    """The description asks for more decoded elements than the budget
    (wireformat.budgets.Budgets.vmstate_elements) leaves."""


class VmstateEncodeError(ValueError):
    """A decoded value does not fit the description it is encoded with."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class VmField:
    """One field object of the description and the value(s) read for it.

    ``value`` is an ``int`` for integer-like fields, ``bytes`` for buffers and
    types without a known layout, ``bytes`` (the name) for ``capability``,
    a :class:`VmStruct` for ``struct``/``tmp``/``vstruct``, and a ``list`` of
    those when the description has ``array_len``.  ``size`` and ``type`` are
    copied from the description; ``index`` likewise (one element of an array
    that is described element by element).
    """

    name: str
    type: str
    size: int
    value: Any
    index: int | None = None


@dataclass(frozen=True)
class VmStruct:
    """A nested vmsd (struct field, ``tmp``/``vstruct`` element)."""

    name: str  # vmsd_name from the description
    version: int | None  # version from the description (not on the wire)
    fields: tuple[VmField, ...]
    subsections: tuple["VmSubsection", ...] = ()


@dataclass(frozen=True)
class VmSubsection:
    """A subsection as read from the wire (``version_id`` is the full be32)."""

    name: str
    version_id: int
    fields: tuple[VmField, ...]
    subsections: tuple["VmSubsection", ...] = ()


@dataclass(frozen=True)
class DecodedBody:
    fields: tuple[VmField, ...]
    subsections: tuple[VmSubsection, ...]
    consumed: int  # bytes used from the start offset


# --------------------------------------------------------------------------- helpers


def _name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def _name_str(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _int_layout(ftype: str, size: int) -> bool | None:
    """Return signedness if elements of this type/size decode as integers, else None."""
    if size not in _INT_SIZES:
        return None
    m = _INT_TYPE.match(ftype)
    if m:
        return m.group(1) == ""
    if ftype in _UNSIGNED_SCALARS:
        return False
    if ftype in _SIGNED_SCALARS:
        return True
    return None


def _want(d: Mapping, key: str, kind: type | tuple, where: str, offset: int):
    try:
        v = d[key]
    except (KeyError, TypeError):
        raise VmstateDescriptionError(f"{where}: description has no {key!r}", offset) from None
    if not isinstance(v, kind) or isinstance(v, bool) and kind is int:
        raise VmstateDescriptionError(f"{where}: description {key!r} is not {kind}", offset)
    return v


def _fields_of(desc: Mapping, where: str, offset: int) -> list:
    fields = desc.get("fields", []) if isinstance(desc, Mapping) else None
    if not isinstance(fields, list):
        raise VmstateDescriptionError(f"{where}: 'fields' is not a list", offset)
    return fields


def _subsections_of(desc: Mapping, where: str, offset: int) -> list:
    subs = desc.get("subsections", [])
    if not isinstance(subs, list):
        raise VmstateDescriptionError(f"{where}: 'subsections' is not a list", offset)
    return subs


def _element_kind(fd: Mapping, where: str, offset: int) -> tuple[str, Any]:
    """Classify how one element of field object ``fd`` is laid out on the wire."""
    ftype = _want(fd, "type", str, where, offset)
    if ftype == "struct":
        nested = fd.get("struct")
        if isinstance(nested, Mapping) and "fields" in nested:
            return "vmsd", nested
        # A struct whose element was not followed (e.g. NULL pointer in old
        # writers) has no usable nested description: keep its bytes.
    elif ftype in _INLINE_VMSD_TYPES and "fields" in fd:
        return "vmsd", fd
    elif ftype == "capability":
        return "capability", None
    size = _want(fd, "size", int, where, offset)
    if size < 0:
        raise VmstateDescriptionError(f"{where}: negative size {size}", offset)
    signed = _int_layout(ftype, size)
    if signed is not None:
        return "int", (size, signed)
    return "bytes", size


# --------------------------------------------------------------------------- decoding


class _Reader:
    __slots__ = ("buf", "end", "budget")

    def __init__(self, buf: memoryview, end: int, budget: DecodeBudget):
        self.buf = buf
        self.end = end
        self.budget = budget

    def spend(self, n: int, pos: int, where: str) -> None:
        """Elements about to be decoded, from the one budget of the whole stream (every body,
        every nesting level): nested arrays of zero-size elements cannot multiply it."""
        if not self.budget.spend(n):
            raise VmstateBudgetError(f"{where}: {n} more elements exceed the budget of {self.budget.limit} "
                                     "decoded elements", pos)

    def need(self, pos: int, n: int, what: str) -> None:
        if pos + n > self.end:
            have = max(self.end - pos, 0)
            raise VmstateDecodeError(f"{what}: needs {n} bytes, {have} left", min(pos, self.end))

    def take(self, pos: int, n: int, what: str) -> memoryview:
        self.need(pos, n, what)
        return self.buf[pos : pos + n]


def _decode_element(r: _Reader, kind: str, arg: Any, pos: int, where: str,
                    strict: bool) -> tuple[Any, int]:
    if kind == "int":
        size, signed = arg
        raw = r.take(pos, size, where)
        return int.from_bytes(raw, "big", signed=signed), pos + size
    if kind == "bytes":
        return bytes(r.take(pos, arg, where)), pos + arg
    if kind == "capability":
        n = r.take(pos, 1, where + " (capability length)")[0]
        name = bytes(r.take(pos + 1, n, where + " (capability name)"))
        return name, pos + 1 + n
    # nested vmsd
    fields, subs, pos2 = _decode_vmsd(r, arg, pos, where, strict)
    version = arg.get("version")
    return VmStruct(str(arg.get("vmsd_name", "")), version if isinstance(version, int) else None,
                    fields, subs), pos2


def _decode_fields(r: _Reader, desc: Mapping, pos: int, where: str, strict: bool) -> tuple[tuple[VmField, ...], int]:
    out = []
    for fd in _fields_of(desc, where, pos):
        if not isinstance(fd, Mapping):
            raise VmstateDescriptionError(f"{where}: field object is not an object", pos)
        fname = _want(fd, "name", str, where, pos)
        fwhere = f"{where}.{fname}"
        kind, arg = _element_kind(fd, fwhere, pos)
        array_len = fd.get("array_len")
        index = fd.get("index")
        if array_len is None:
            r.spend(1, pos, fwhere)
            value, pos = _decode_element(r, kind, arg, pos, fwhere, strict)
        else:
            if not isinstance(array_len, int) or isinstance(array_len, bool) or array_len < 0:
                raise VmstateDescriptionError(f"{fwhere}: bad array_len {array_len!r}", pos)
            # elements that take bytes end at the data's end; others only at the budget's
            least = arg[0] if kind == "int" else arg if kind == "bytes" else 1 if kind == "capability" else 0
            r.spend(min(array_len, (r.end - pos) // least + 1) if least else array_len, pos, fwhere)
            if kind == "int" and pos + arg[0] * array_len <= r.end:
                # whole integer array present: unpack in one go
                code = _STRUCT_CODES[arg]
                value = list(struct.unpack_from(f">{array_len}{code}", r.buf, pos))
                pos += arg[0] * array_len
            else:
                value = []
                for i in range(array_len):
                    v, pos = _decode_element(r, kind, arg, pos, f"{fwhere}[{i}]", strict)
                    value.append(v)
        size = fd.get("size")
        out.append(VmField(fname, fd["type"], size if isinstance(size, int) else -1, value,
                           index if isinstance(index, int) else None))
    return tuple(out), pos


def _decode_subsections(r: _Reader, desc: Mapping, pos: int, where: str,
                        strict: bool) -> tuple[tuple[VmSubsection, ...], int]:
    parent = desc.get("vmsd_name")
    if not isinstance(parent, str):
        return (), pos  # old-style section: no vmsd, no subsections
    prefix = _name_bytes(parent)
    known: dict[str, Mapping] = {}
    for s in _subsections_of(desc, where, pos):
        known[_want(s, "vmsd_name", str, where + " subsection", pos)] = s
    out: list[VmSubsection] = []
    buf = r.buf
    while known and pos < r.end and buf[pos] == SUBSECTION_MARKER:
        # Peek like the loader: a marker whose length byte or name is not all
        # there, is too short for "<parent>/x", or lacks the parent prefix is
        # not a subsection of ours; stop and leave the bytes to the caller.
        if pos + 2 > r.end:
            break
        n = buf[pos + 1]
        if n < len(prefix) + 1 or pos + 2 + n > r.end:
            break
        raw = bytes(buf[pos + 2 : pos + 2 + n])
        if not raw.startswith(prefix):
            break
        name = _name_str(raw)
        sub = known.get(name)
        if sub is None:
            break  # prefixed but undescribed: leave it to the caller
        vpos = pos + 2 + n
        version = int.from_bytes(r.take(vpos, 4, f"{name}: subsection version"), "big")
        fields, subs, pos = _decode_vmsd(r, sub, vpos + 4, name, strict)
        out.append(VmSubsection(name, version, fields, subs))
    if strict:
        seen = {s.name for s in out}
        missing = [n for n in known if n not in seen]
        if missing:
            raise VmstateDecodeError(f"{where}: described subsection {missing[0]!r} not found", pos)
    return tuple(out), pos


def _decode_vmsd(r: _Reader, desc: Mapping, pos: int, where: str, strict: bool):
    fields, pos = _decode_fields(r, desc, pos, where, strict)
    subs, pos = _decode_subsections(r, desc, pos, where, strict)
    return fields, subs, pos


def _as_memoryview(data: bytes | bytearray | memoryview) -> memoryview:
    mv = memoryview(data)
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


def decode_body(desc: Mapping, data: bytes | bytearray | memoryview, offset: int = 0, *,
                end: int | None = None, require_subsections: bool = False,
                budget: DecodeBudget | None = None) -> DecodedBody:
    """Decode one vmstate body described by a VMDESCRIPTION device (or vmsd) object.

    ``desc`` is a device object of the trailer (``{"name", "instance_id",
    "vmsd_name", "version", "fields", "subsections"}``), the trailer's
    ``configuration`` object, a subsection object, or an old-style device
    object (``size`` + one ``data`` buffer).  Decoding starts at ``offset``
    and may not go past ``end`` (default: end of ``data``).

    Subsections follow the loader's rule: while the next byte is 0x05 and the
    counted name is complete in the data, longer than the parent vmsd name,
    starts with it, and is among the description's subsections, it is decoded;
    otherwise decoding stops there and the bytes are left to the caller (so a
    body cut inside a subsection *header* decodes short rather than failing;
    a cut after the name, in the version or the subsection body, raises).  With
    ``require_subsections`` every subsection listed in the description must
    have been read (the trailer lists only subsections that were written).

    ``budget`` is what is left of the decoded-element budget of the whole stream (give the
    same one to every decode of a stream); default: a fresh one for this body alone.
    """
    buf = _as_memoryview(data)
    stop = len(buf) if end is None else end
    if not 0 <= offset <= stop <= len(buf):
        raise VmstateDecodeError(f"offset {offset} / end {end} outside data of {len(buf)} bytes",
                                 min(max(offset, 0), len(buf)))
    if not isinstance(desc, Mapping):
        raise VmstateDescriptionError("description is not an object", offset)
    where = str(desc.get("vmsd_name") or desc.get("name") or "?")
    r = _Reader(buf, stop, DecodeBudget() if budget is None else budget)
    try:
        fields, subs, pos = _decode_vmsd(r, desc, offset, where, require_subsections)
    except RecursionError:
        raise VmstateDescriptionError("description nested too deeply", offset) from None
    return DecodedBody(fields, subs, pos - offset)


# --------------------------------------------------------------------------- encoding


def _encode_element(out: bytearray, kind: str, arg: Any, value: Any, where: str) -> None:
    if kind == "int":
        size, signed = arg
        if isinstance(value, bool) or not isinstance(value, int):
            raise VmstateEncodeError(f"{where}: expected int, got {type(value).__name__}")
        try:
            out += value.to_bytes(size, "big", signed=signed)
        except OverflowError:
            raise VmstateEncodeError(f"{where}: {value} does not fit {size} bytes "
                                     f"({'signed' if signed else 'unsigned'})") from None
    elif kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise VmstateEncodeError(f"{where}: expected bytes, got {type(value).__name__}")
        if len(value) != arg:
            raise VmstateEncodeError(f"{where}: {len(value)} bytes, description says {arg}")
        out += value
    elif kind == "capability":
        if isinstance(value, str):
            value = _name_bytes(value)
        if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) > 255:
            raise VmstateEncodeError(f"{where}: capability must be bytes of at most 255")
        out.append(len(value))
        out += value
    else:
        if not isinstance(value, VmStruct):
            raise VmstateEncodeError(f"{where}: expected VmStruct, got {type(value).__name__}")
        _encode_vmsd(out, arg, value.fields, value.subsections, where)


def _encode_vmsd(out: bytearray, desc: Mapping, fields: Sequence[VmField],
                 subsections: Sequence[VmSubsection], where: str) -> None:
    fds = _fields_of(desc, where, len(out))
    if len(fds) != len(fields):
        raise VmstateEncodeError(f"{where}: {len(fields)} fields, description has {len(fds)}")
    for fd, vf in zip(fds, fields):
        if not isinstance(fd, Mapping):
            raise VmstateEncodeError(f"{where}: field object is not an object")
        fname = fd.get("name")
        fwhere = f"{where}.{fname}"
        if vf.name != fname:
            raise VmstateEncodeError(f"{fwhere}: value is for field {vf.name!r}")
        try:
            kind, arg = _element_kind(fd, fwhere, len(out))
        except VmstateDecodeError as e:
            raise VmstateEncodeError(str(e)) from None
        array_len = fd.get("array_len")
        if array_len is None:
            _encode_element(out, kind, arg, vf.value, fwhere)
        else:
            if not isinstance(vf.value, (list, tuple)) or len(vf.value) != array_len:
                raise VmstateEncodeError(f"{fwhere}: expected a list of {array_len} elements")
            if kind == "int" and not any(isinstance(v, bool) or not isinstance(v, int)
                                         for v in vf.value):
                try:
                    out += struct.pack(f">{array_len}{_STRUCT_CODES[arg]}", *vf.value)
                    continue
                except struct.error:
                    pass  # out of range somewhere: the loop below names the element
            for i, v in enumerate(vf.value):
                _encode_element(out, kind, arg, v, f"{fwhere}[{i}]")
    if not subsections:
        return
    known = {s.get("vmsd_name"): s for s in desc.get("subsections", []) if isinstance(s, Mapping)}
    for sub in subsections:
        sdesc = known.get(sub.name)
        if sdesc is None:
            raise VmstateEncodeError(f"{where}: subsection {sub.name!r} is not in the description")
        raw = _name_bytes(sub.name)
        if len(raw) > 255:
            raise VmstateEncodeError(f"{where}: subsection name longer than 255 bytes")
        if not 0 <= sub.version_id <= 0xFFFFFFFF:
            raise VmstateEncodeError(f"{sub.name}: version {sub.version_id} is not a be32")
        out.append(SUBSECTION_MARKER)
        out.append(len(raw))
        out += raw
        out += sub.version_id.to_bytes(4, "big")
        _encode_vmsd(out, sdesc, sub.fields, sub.subsections, sub.name)


def encode_body(desc: Mapping, decoded: DecodedBody | VmStruct) -> bytes:
    """Inverse of :func:`decode_body`: ``encode_body(d, decode_body(d, b)) == b[:consumed]``.

    Fields are matched to the description's field objects by position (names
    must agree); subsections are written in the order given, each encoded with
    the description's subsection object of the same name.
    """
    if not isinstance(desc, Mapping):
        raise VmstateEncodeError("description is not an object")
    where = str(desc.get("vmsd_name") or desc.get("name") or "?")
    out = bytearray()
    try:
        _encode_vmsd(out, desc, decoded.fields, decoded.subsections, where)
    except RecursionError:
        raise VmstateEncodeError("description nested too deeply") from None
    return bytes(out)


# --------------------------------------------------------------------------- VMDESCRIPTION


@dataclass(frozen=True)
class VmDescription:
    page_size: int
    devices: list[dict]
    configuration: dict | None = None

    def find(self, name: str, instance_id: int = 0) -> dict | None:
        """The device object for idstr ``name`` and ``instance_id``, or None."""
        for d in self.devices:
            if d.get("name") == name and d.get("instance_id") == instance_id:
                return d
        return None


def _load_json(data: bytes | bytearray | memoryview | str, what: str) -> Any:
    try:
        return load_json(data, what)
    except JsonInputError as e:
        raise VmstateDecodeError(str(e), e.offset) from None


def parse_vmdescription(json_bytes: bytes | bytearray | memoryview | str) -> VmDescription:
    """Parse the VMDESCRIPTION trailer JSON (the ``len`` bytes after ``0x06 be32 len``)."""
    top = _load_json(json_bytes, "VMDESCRIPTION")
    if not isinstance(top, dict):
        raise VmstateDecodeError("VMDESCRIPTION: top level is not an object", 0)
    page_size = top.get("page_size")
    if not isinstance(page_size, int) or isinstance(page_size, bool):
        raise VmstateDecodeError("VMDESCRIPTION: 'page_size' missing or not an integer", 0)
    devices = top.get("devices")
    if not isinstance(devices, list):
        raise VmstateDecodeError("VMDESCRIPTION: 'devices' missing or not a list", 0)
    for i, d in enumerate(devices):
        if not isinstance(d, dict):
            raise VmstateDecodeError(f"VMDESCRIPTION: devices[{i}] is not an object", 0)
        if not isinstance(d.get("name"), str):
            raise VmstateDecodeError(f"VMDESCRIPTION: devices[{i}] has no string 'name'", 0)
        inst = d.get("instance_id")
        if not isinstance(inst, int) or isinstance(inst, bool):
            raise VmstateDecodeError(f"VMDESCRIPTION: devices[{i}] ({d['name']}) has no integer 'instance_id'", 0)
        if not isinstance(d.get("fields", []), list):
            raise VmstateDecodeError(f"VMDESCRIPTION: devices[{i}] ({d['name']}) 'fields' is not a list", 0)
        if "vmsd_name" not in d and "size" not in d:
            raise VmstateDecodeError(f"VMDESCRIPTION: devices[{i}] ({d['name']}) has neither 'vmsd_name' nor 'size'", 0)
    config = top.get("configuration")
    if config is not None and not isinstance(config, dict):
        raise VmstateDecodeError("VMDESCRIPTION: 'configuration' is not an object", 0)
    return VmDescription(page_size, devices, config)


# --------------------------------------------------------------------------- -dump-vmstate


@dataclass(frozen=True)
class DumpField:
    """A field of a -dump-vmstate description (declaration, not wire layout)."""

    name: str
    version_id: int
    field_exists: bool  # the field has an existence callback
    size: int  # C size of one element
    num: int | None = None  # element count of fixed arrays (10.0 dumps only)
    struct: "VmsdInfo | None" = None


@dataclass(frozen=True)
class VmsdInfo:
    """One vmsd as the destination binary declares it.

    ``type_names`` are the QOM types whose class vmsd this is.  When other
    types register a *different* vmsd under the same name (e.g. ``ne2000``),
    those are in ``alternatives``; :meth:`accepts_version` considers all.
    """

    name: str
    version_id: int
    minimum_version_id: int
    subsections: tuple[str, ...] = ()
    fields: tuple[DumpField, ...] = ()
    subsection_infos: tuple["VmsdInfo", ...] = ()
    type_names: tuple[str, ...] = ()
    alternatives: tuple["VmsdInfo", ...] = ()
    # False for a device description QEMU dumps with neither fields nor subsections: a
    # device that cannot migrate (`unmigratable`; QEMU refuses to migrate a guest with it)
    migratable: bool = True

    def accepts_version(self, version_id: int) -> bool:
        """minimum_version_id <= version_id <= version_id of this or an alternative."""
        return any(v.minimum_version_id <= version_id <= v.version_id
                   for v in (self, *self.alternatives))

    def subsection(self, name: str) -> "VmsdInfo | None":
        for s in self.subsection_infos:
            if s.name == name:
                return s
        return None

    def _shape(self) -> tuple:
        return (self.name, self.version_id, self.minimum_version_id, self.subsections,
                self.fields, self.subsection_infos)


class DumpVmstate(dict):
    """``dict[vmsd name, VmsdInfo]`` plus ``machine`` and ``by_type`` (QOM type → VmsdInfo)."""

    def __init__(self, *args, machine: str | None = None, by_type: dict | None = None, **kw):
        super().__init__(*args, **kw)
        self.machine = machine
        self.by_type: dict[str, VmsdInfo] = by_type or {}

    def lookup_idstr(self, idstr: str) -> VmsdInfo | None:
        return lookup_idstr(self, idstr)


def _dump_int(d: Mapping, key: str, where: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise VmstateDecodeError(f"-dump-vmstate: {where}: {key!r} missing or not an integer", 0)
    return v


def _dump_vmsd(d: Any, where: str, type_name: str | None = None) -> VmsdInfo:
    if not isinstance(d, Mapping):
        raise VmstateDecodeError(f"-dump-vmstate: {where}: description is not an object", 0)
    name = d.get("name")
    if not isinstance(name, str):
        raise VmstateDecodeError(f"-dump-vmstate: {where}: description has no string 'name'", 0)
    fields = []
    raw_fields = d.get("Fields", [])
    if not isinstance(raw_fields, list):
        raise VmstateDecodeError(f"-dump-vmstate: {where}: 'Fields' is not a list", 0)
    for f in raw_fields:
        if not isinstance(f, Mapping) or not isinstance(f.get("field"), str):
            raise VmstateDecodeError(f"-dump-vmstate: {where}: bad field object", 0)
        fw = f"{where}.{f['field']}"
        num = f.get("num")
        fields.append(DumpField(
            f["field"], _dump_int(f, "version_id", fw), bool(f.get("field_exists", False)),
            _dump_int(f, "size", fw), num if isinstance(num, int) else None,
            _dump_vmsd(f["Description"], fw) if "Description" in f else None))
    raw_subs = d.get("Subsections", [])
    if not isinstance(raw_subs, list):
        raise VmstateDecodeError(f"-dump-vmstate: {where}: 'Subsections' is not a list", 0)
    subs = tuple(_dump_vmsd(s, f"{where}/subsection") for s in raw_subs)
    # QEMU prints "Fields" and "Subsections" only when the description has them; a device
    # description with neither is one that blocks migration (only checked at the top level)
    migratable = type_name is None or "Fields" in d or "Subsections" in d
    return VmsdInfo(name, _dump_int(d, "version_id", where), _dump_int(d, "minimum_version_id", where),
                    tuple(s.name for s in subs), tuple(fields), subs,
                    (type_name,) if type_name else (), migratable=migratable)


def parse_dump_vmstate(json_text: str | bytes | bytearray | memoryview) -> DumpVmstate:
    """Parse ``-dump-vmstate`` output into ``{vmsd name: VmsdInfo}``.

    The file's top-level keys are QOM type names (plus ``vmschkmachine``,
    whose ``Name`` is the machine type); each entry's vmsd name is
    ``Description.name``.  Types sharing an identical description are merged
    (``type_names``); differing descriptions under one name become
    ``alternatives`` of the entry with the highest version.
    """
    top = _load_json(json_text, "-dump-vmstate")
    if not isinstance(top, dict):
        raise VmstateDecodeError("-dump-vmstate: top level is not an object", 0)
    machine = None
    by_type: dict[str, VmsdInfo] = {}
    groups: dict[str, list[VmsdInfo]] = {}
    for type_name, entry in top.items():
        if not isinstance(entry, dict):
            raise VmstateDecodeError(f"-dump-vmstate: {type_name!r} is not an object", 0)
        if type_name == "vmschkmachine":
            m = entry.get("Name")
            machine = m if isinstance(m, str) else None
            continue
        if "Description" not in entry:
            raise VmstateDecodeError(f"-dump-vmstate: {type_name!r} has no 'Description'", 0)
        info = _dump_vmsd(entry["Description"], type_name, type_name)
        by_type[type_name] = info
        variants = groups.setdefault(info.name, [])
        for i, v in enumerate(variants):
            if v._shape() == info._shape() and v.migratable == info.migratable:
                variants[i] = VmsdInfo(*v._shape(), type_names=v.type_names + (type_name,), migratable=v.migratable)
                break
        else:
            variants.append(info)
    result = DumpVmstate(machine=machine, by_type=by_type)
    for name, variants in groups.items():
        variants = [VmsdInfo(*v._shape(), type_names=tuple(sorted(v.type_names)), migratable=v.migratable)
                    for v in variants]
        variants.sort(key=lambda v: (-v.version_id, v.minimum_version_id, v.type_names))
        head, rest = variants[0], tuple(variants[1:])
        result[name] = VmsdInfo(*head._shape(), type_names=head.type_names, alternatives=rest,
                                migratable=head.migratable)
    return result


# vmsd names of sections that real pc-i440fx / q35 streams of QEMU 7.2 and 10.0
# carry but that -dump-vmstate of 7.2 and/or 10.0 does not list, because they are
# registered per instance or outside any device class ("ide": 7.2 only; 10.0
# lists it under piix3-ide/piix4-ide).  A lookup miss for these says nothing
# about whether the destination knows the section.
NOT_IN_DUMP_VMSTATE = frozenset({
    "timer", "cpu_common", "cpu", "apic", "PCIBUS", "i2c_bus", "acpi_build", "globalstate",
    "slirp", "ide",
})


def vmsd_name_candidates(idstr: str) -> list[str]:
    """Possible vmsd names of a section idstr, most specific first.

    A qdev device's section idstr is ``<device path>/<vmsd name>`` when the
    device has a path (PCI: ``0000:00:01.1/ide``; USB adds the port:
    ``0000:00:04.0/1/usb-ptr``), else just the vmsd name (``timer``, ``fdc``).
    Since a vmsd name could itself contain '/', every '/'-suffix is a candidate.
    """
    parts = idstr.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


def lookup_idstr(table: Mapping[str, VmsdInfo], idstr: str) -> VmsdInfo | None:
    """The VmsdInfo for a section idstr, or None when the table does not know it.

    Tries the whole idstr first, then shorter '/'-suffixes; the last path
    component is the usual hit.  None does not mean the destination lacks the
    section: -dump-vmstate lists only class-level device vmsds (see
    :data:`NOT_IN_DUMP_VMSTATE` for the misses seen on real streams).
    """
    for cand in vmsd_name_candidates(idstr):
        info = table.get(cand)
        if info is not None:
            return info
    return None
