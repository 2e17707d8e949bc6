"""How one Xen build runs one domain: the version, build, boot options and hardware facts depend on.

Only a 64-bit (x86_64) hypervisor is modelled: the i386 Xen build, removed in 4.3, is not.
Versions are ``(major, minor, patch)``; Xen 3.0 to 4.22 are known, newer 4.x releases are taken
to behave like 4.22 (source checked up to master ``c447b7308b13``, 2026-08). Point-release
backports (e.g. XPTI in 4.6.x-4.10.x stable releases) are not modelled: a version selects the
behaviour of its ``x.y.0`` release.

Failure modes: :class:`~gdb_xenpte.errors.OptionError`, with one line, for an unknown version
string, a bad ``smep=``/``smap=`` value or one the version does not have, or an unknown domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Tuple, Union

from ..errors import OptionError
from .facts import FACTS, Version, cite, version_text

__all__ = ["DOMAIN_TYPES", "Hardware", "XenPolicy", "parse_version"]

DOMAIN_TYPES = ("hvm", "pv64", "pv32")

_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?\+?\s*$")

# Xen's boolean vocabulary (parse_bool in xen/common/kernel.c).
_TRUE = {"1", "yes", "on", "true", "enable"}
_FALSE = {"0", "no", "off", "false", "disable"}


def parse_version(text: Union[str, Tuple[int, ...]]) -> Version:
    """Turn ``"4.17"``, ``"3.0.3"``, ``"4.22+"`` or ``(4, 17)`` into ``(major, minor, patch)``.

    Known are 3.0 to 3.4 and every 4.x; 4.x newer than 4.22 behaves like 4.22.

    :param text: the version.
    :returns: a 3-tuple of ints.
    :raises OptionError: if it is not such a version.
    """
    if isinstance(text, float):
        # 4.10 and 4.1 are the same float: only strings and tuples say which was meant.
        raise OptionError(f"ambiguous Xen version {text!r}: give it as a string, e.g. '4.10'")
    if isinstance(text, tuple):
        parts = tuple(text) + (0,) * (3 - len(text))
        if len(parts) != 3 or not all(isinstance(p, int) and p >= 0 for p in parts):
            raise OptionError(f"bad Xen version {text!r}: expected e.g. (4, 17) or (3, 0, 3)")
    else:
        m = _VERSION_RE.match(str(text))
        if not m:
            raise OptionError(f"bad Xen version {text!r}: expected e.g. '4.17' or '3.0.3'")
        parts = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    major, minor = parts[0], parts[1]
    if not ((major == 3 and minor <= 4) or major == 4):
        raise OptionError(f"unknown Xen version {version_text(parts)}: known are 3.0-3.4 and 4.x")
    return parts


def _parse_sm_option(name: str, value: Union[bool, str], version: Version) -> Union[bool, str]:
    """Normalise a ``smep=``/``smap=`` value to True, False or ``"hvm"``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "hvm":
        if version < (4, 8, 0):
            raise OptionError(f"{name}=hvm needs Xen 4.8 or later (this is {version_text(version)})")
        return "hvm"
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise OptionError(f"bad {name}= value {value!r}: expected a boolean or 'hvm'")


@dataclass(frozen=True)
class Hardware:
    """CPU features that Xen's choices depend on (what CPUID offers Xen).

    :param vmx: Xen runs HVM guests with Intel VT-x (sets CR4.VMXE; needed for guest PKS);
        False for AMD SVM or no HVM support.
    """

    smep: bool = True
    smap: bool = True
    pku: bool = False
    pks: bool = False
    nx: bool = True
    vmx: bool = True
    xsave: bool = True
    fsgsbase: bool = True
    mce: bool = True


@dataclass(frozen=True)
class XenPolicy:
    """How one Xen build runs one domain: everything the Xen facts depend on.

    :param version: Xen release, ``"4.17"``/``"3.0.3"`` or a tuple; stored as a 3-tuple.
    :param domain: ``"hvm"``, ``"pv64"`` or ``"pv32"``.
    :param debug: a debug (``CONFIG_DEBUG``) hypervisor build: ``_PAGE_GNTTAB`` exists.
    :param smep: the ``smep=`` option: True, False or ``"hvm"`` (4.8+); Xen's strings accepted.
    :param smap: the ``smap=`` option, likewise.
    :param hw: the CPU's features.
    :param io_capable: the domain has iomem/ioport capabilities or passed-through devices (dom0
        usually does): it may set PWT/PCD/PAT on L1 entries.
    :param xpti: XPTI is active for this 64-bit PV domain (4.11+; ignored for 32-bit PV).
    :param pcid: this 64-bit PV domain uses PCID (``pcid=``, 4.11+; ignored for 32-bit PV).
    :param global_pages: the ``global-pages=`` option (4.14+; earlier versions behave as on).
    :param vtsc: Xen virtualises the TSC for this domain (forces CR4.TSD in PV context).
    :param hap: an HVM guest uses hardware-assisted paging (needed for guest PKE/PKS).
    :param superpages: Xen booted with ``allowsuperpage`` (3.4-4.9): PV L2 entries may set PSE.
    :raises OptionError: for an unknown version or domain, or a bad or unavailable option.
    """

    version: Union[Version, str]
    domain: str = "pv64"
    debug: bool = False
    smep: Union[bool, str] = True
    smap: Union[bool, str] = True
    hw: Hardware = field(default_factory=Hardware)
    io_capable: bool = False
    xpti: bool = False
    pcid: bool = False
    global_pages: bool = True
    vtsc: bool = False
    hap: bool = True
    superpages: bool = False

    def __post_init__(self):
        # Frozen: normalise through object.__setattr__ so comparisons see canonical values.
        version = parse_version(self.version)
        object.__setattr__(self, "version", version)
        domain = str(self.domain).strip().lower()
        if domain not in DOMAIN_TYPES:
            raise OptionError(f"unknown domain type {self.domain!r}: expected hvm, pv64 or pv32")
        if domain == "pv32" and version < FACTS["compat"].since:
            raise OptionError(f"32-bit PV guests on a 64-bit Xen need Xen 3.1 or later "
                              f"(this is {version_text(version)})")
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "smep", _parse_sm_option("smep", self.smep, version))
        object.__setattr__(self, "smap", _parse_sm_option("smap", self.smap, version))
        if self.superpages and not (3, 4, 0) <= version < (4, 10, 0):
            raise OptionError(f"allowsuperpage exists only in Xen 3.4-4.9 "
                              f"(this is {version_text(version)})")

    @property
    def is_pv(self) -> bool:
        return self.domain != "hvm"

    def has(self, key: str) -> bool:
        """Whether the fact ``key`` of :data:`FACTS` holds in this policy's version."""
        fact = FACTS[key]
        return fact.since <= self.version and (fact.until is None or self.version <= fact.until)

    def _feature(self, name: str) -> Tuple[bool, bool, str]:
        """SMEP/SMAP: (in Xen's own CR4, offered to HVM guests, why)."""
        hw = getattr(self.hw, name)
        option = getattr(self, name)
        key = "xen_" + name
        label = name.upper()
        if not self.has(key):
            return False, False, f"Xen {version_text(self.version)} does not use {label} ({cite(key)})"
        if not hw:
            return False, False, f"the CPU has no {label}"
        if option is False:
            return False, False, f"{name}=0 hides {label} from Xen and HVM guests"
        if option == "hvm":
            return False, True, f"{name}=hvm: Xen's own CR4 lacks {label} ({cite('smep_hvm')})"
        return True, True, f"Xen uses {label} ({cite(key)})"

