"""The matrix axis naming a set of one-sided settings ("src-global:migration.send-section-footer=off
+dst-cap:xbzrle", or a named set). The settings themselves and their options: check/sides.py."""

from __future__ import annotations

from conformance.check.sides import (  # noqa: F401 (the one-sided settings, re-exported for the tools)
    Sides,
    SidesError,
    add_options,
    from_args,
    from_options,
    parse_setting_value,
)


# The matrix axis: named sets, each one setting flipped on one side.
ONE_SIDED_SETS: dict[str, str] = {
    "none": "",
    "src-no-section-footer": "src-global:migration.send-section-footer=off",
    "dst-no-section-footer": "dst-global:migration.send-section-footer=off",
    "src-no-configuration": "src-global:migration.send-configuration=off",
    "dst-no-configuration": "dst-global:migration.send-configuration=off",
    "src-multifd-flush-each-section": "src-global:migration.multifd-flush-after-each-section=on",
    "dst-xbzrle": "dst-cap:xbzrle",
    "src-xbzrle": "src-cap:xbzrle",
}

_AXIS_KINDS = {"src-global": "source_globals", "dst-global": "dest_globals", "src-cap": "source_capabilities",
               "dst-cap": "dest_capabilities", "src-param": "source_parameters", "dst-param": "dest_parameters"}


def parse_axis(name: str) -> Sides:
    """A matrix one-sided set: a name of ONE_SIDED_SETS, or KIND:SETTING items joined by '+'
    (KIND: src-global, dst-global, src-cap, dst-cap, src-param, dst-param)."""
    text = ONE_SIDED_SETS.get(name, name)
    opts: dict[str, list[str]] = {v: [] for v in _AXIS_KINDS.values()}
    for item in filter(None, (i.strip() for i in text.split("+"))):
        kind, sep, setting = item.partition(":")
        if not sep or kind not in _AXIS_KINDS:
            raise SidesError(f"one-sided set {name!r}: {item!r} is not KIND:SETTING with KIND one of "
                             f"{', '.join(_AXIS_KINDS)} (named sets: {', '.join(ONE_SIDED_SETS)})")
        opts[_AXIS_KINDS[kind]].append(setting)
    try:
        return from_options(**opts)
    except SidesError as e:
        raise SidesError(f"one-sided set {name!r}: {e}") from None


def axis_text(s: Sides) -> str:
    """`s` in the axis syntax parse_axis reads ("" for no setting)."""
    def onoff(v):
        return "on" if v is True else "off" if v is False else str(v)
    items = [f"src-global:{g}" for g in s.source_globals] + [f"dst-global:{g}" for g in s.dest_globals]
    items += [f"src-cap:{k}={onoff(v)}" for k, v in s.source_capabilities.items()]
    items += [f"dst-cap:{k}={onoff(v)}" for k, v in s.dest_capabilities.items()]
    items += [f"src-param:{k}={onoff(v)}" for k, v in s.source_parameters.items()]
    items += [f"dst-param:{k}={onoff(v)}" for k, v in s.dest_parameters.items()]
    return "+".join(items)
