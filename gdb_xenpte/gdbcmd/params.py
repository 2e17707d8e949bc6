"""``set xen-pte …`` / ``show xen-pte …``: session defaults for the commands' options.

Each parameter is one row of :data:`PARAMETERS`; a command option, when given, wins over the
parameter. ``get_set_string`` validates string values and, since gdb does not roll ``value``
back when it raises, restores the previous value itself before raising ``gdb.GdbError``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import gdb

from ..domain_cpu import DOMAINS
from ..errors import OptionError
from ..xen import parse_version

__all__ = [
    "PARAMETERS",
    "Spec",
    "XenPteParameter",
    "XenPteSetPrefix",
    "XenPteShowPrefix",
    "register",
    "value",
]


class Spec(NamedTuple):
    """One ``set xen-pte`` parameter: its name, gdb parameter kind, default and summary."""

    name: str
    kind: int
    default: Any
    summary: str  # completes "Set ..." / "Show ..."
    doc: str
    choices: Sequence[str] = ()
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns an error text or None


def _version(v: str) -> Optional[str]:
    """One grammar with ``--xen``: :func:`gdb_xenpte.xen.parse_version` decides."""
    if v in ("", "auto"):
        return None
    try:
        parse_version(v)
    except OptionError as err:
        return f"{err} (or auto)"
    return None


def _register_value(v: str) -> Optional[str]:
    if v == "unknown":
        return None
    try:
        n = int(v, 0)
    except ValueError:
        return f"'{v}' is not a number (or unknown)"
    return None if 0 <= n < 1 << 32 else f"{v} does not fit in 32 bits"


def _maxphyaddr(v: int) -> Optional[str]:
    return None if v == 0 or 32 <= v <= 52 else f"{v} is not 0 (auto) or 32..52"


PARAMETERS: Sequence[Spec] = (
    Spec("xen-version", gdb.PARAM_STRING, "auto", "the Xen version whose PTE ABI is assumed",
         "Choose the Xen version (MAJOR.MINOR) whose bit meanings and CR4 policy apply.\n"
         "auto takes it from the source (xl dump-core notes), else the newest version known.",
         check=_version),
    Spec("xen-debug", gdb.PARAM_BOOLEAN, False, "whether Xen is a debug build",
         "Say whether Xen is a debug build.\n"
         "A debug build changes the meaning of some software PTE bits."),
    Spec("domain", gdb.PARAM_ENUM, "auto", "the kind of domain whose tables are walked",
         "Choose the kind of domain: native (no Xen), hvm, pv64 or pv32.\nauto takes it from "
         "the source, else native unless something names Xen.",
         choices=("auto",) + DOMAINS),
    Spec("smep", gdb.PARAM_ENUM, "auto", "Xen's smep= boot option",
         "Give Xen's smep= boot option: on, off or hvm.\nauto assumes Xen's default.",
         choices=("auto", "on", "off", "hvm")),
    Spec("smap", gdb.PARAM_ENUM, "auto", "Xen's smap= boot option",
         "Give Xen's smap= boot option: on, off or hvm.\nauto assumes Xen's default.",
         choices=("auto", "on", "off", "hvm")),
    Spec("maxphyaddr", gdb.PARAM_ZUINTEGER, 0, "the CPU's physical-address width",
         "Give the physical-address width in bits (CPUID.80000008H:EAX[7:0]).\n"
         "Entry bits from it up to 51 are reserved. 0 means auto: from the source, else 52.",
         check=_maxphyaddr),
    Spec("pkru", gdb.PARAM_STRING, "unknown", "the PKRU value used for verdicts",
         "Give the PKRU used for user-page protection-key verdicts.\n"
         "unknown reports both outcomes (QEMU's gdbstub does not expose PKRU).",
         check=_register_value),
    Spec("pkrs", gdb.PARAM_STRING, "unknown", "the IA32_PKRS value used for verdicts",
         "Give the IA32_PKRS used for supervisor-page protection-key verdicts.\n"
         "unknown reports both outcomes.", check=_register_value),
    Spec("ac", gdb.PARAM_ENUM, "unknown", "EFLAGS.AC assumed for SMAP verdicts",
         "Give EFLAGS.AC for explicit supervisor accesses to user pages (SMAP).\n"
         "0, 1, or unknown for both verdicts.", choices=("unknown", "0", "1")),
    Spec("coalesce", gdb.PARAM_BOOLEAN, True, "whether walks merge equal neighbouring pages",
         "Say whether walks merge neighbouring pages with equal attributes into ranges."),
    Spec("limit", gdb.PARAM_ZUINTEGER_UNLIMITED, -1, "the most mappings a walk prints",
         "Give the most mappings a walk prints.\nunlimited (or 0) means no limit."),
    Spec("fast-path", gdb.PARAM_BOOLEAN, True, "whether live QEMU reads may use /proc/PID/mem",
         "Say whether live QEMU reads may use /proc/<qemu-pid>/mem.\n"
         "The fast path reads each RAM block at its host address (needs ptrace rights); without\n"
         "it, or when it fails, reads go through the gdbstub's PhyMemMode."),
)

_params: Dict[str, "XenPteParameter"] = {}


class XenPteParameter(gdb.Parameter):
    """Base of the ``xen-pte`` parameters; subclasses are made from :data:`PARAMETERS` rows."""

    spec: Spec

    def __init__(self):
        spec = self.spec
        if spec.choices:
            super().__init__(f"xen-pte {spec.name}", gdb.COMMAND_DATA, spec.kind,
                             list(spec.choices))
        else:
            super().__init__(f"xen-pte {spec.name}", gdb.COMMAND_DATA, spec.kind)
        self.value = spec.default
        self._last = spec.default

    def get_set_string(self) -> str:
        problem = self.spec.check(self.value) if self.spec.check else None
        if problem:
            self.value = self._last
            raise gdb.GdbError(f"set xen-pte {self.spec.name}: {problem}")
        self._last = self.value
        return ""

    def get_show_string(self, svalue: str) -> str:
        summary = self.spec.summary
        return f"{summary[0].upper()}{summary[1:]}: {svalue}."


def _make(spec: Spec) -> type:
    words = "".join(w.capitalize() for w in spec.name.split("-"))
    return type(f"XenPte{words}Parameter", (XenPteParameter,), {
        "__doc__": spec.doc, "spec": spec,
        "set_doc": f"Set {spec.summary}.", "show_doc": f"Show {spec.summary}."})


class XenPteSetPrefix(gdb.Command):
    """Set defaults of the xen-pte commands (each one also has a command option)."""

    def __init__(self):
        super().__init__("set xen-pte", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)

    def invoke(self, argument: str, from_tty: bool) -> None:
        gdb.execute("help set xen-pte", from_tty)


class XenPteShowPrefix(gdb.Command):
    """Show defaults of the xen-pte commands."""

    def __init__(self):
        super().__init__("show xen-pte", gdb.COMMAND_DATA, gdb.COMPLETE_NONE, True)

    def invoke(self, argument: str, from_tty: bool) -> None:
        for name, p in _params.items():
            gdb.write(f"xen-pte {name}: {p.get_show_string(_show(p))}\n")


def _show(p: XenPteParameter) -> str:
    v = p.value
    if isinstance(v, bool):
        return "on" if v else "off"
    if v is None or (p.spec.kind == gdb.PARAM_ZUINTEGER_UNLIMITED and v == -1):
        return "unlimited"
    return str(v)


def register() -> List[gdb.Command]:
    """Create the prefixes and every parameter."""
    made = [XenPteSetPrefix(), XenPteShowPrefix()]
    for spec in PARAMETERS:
        _params[spec.name] = _make(spec)()
    return made + list(_params.values())


def value(name: str) -> Any:
    """The parameter's current value as the engine wants it: None for unknown/auto/unlimited."""
    p = _params.get(name)
    v = p.value if p is not None else next(s.default for s in PARAMETERS if s.name == name)
    if v in ("auto", "unknown") or v is None:
        return None
    if name in ("pkru", "pkrs"):
        return int(v, 0)
    if name == "ac":
        return int(v)
    if name == "maxphyaddr":
        return v or None
    if name == "limit":
        return None if v in (-1, 0) else v
    return v
