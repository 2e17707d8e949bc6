"""Xen's structure layouts and symbols, from ``xen-syms`` (DWARF, via pyelftools) or from a crash
dump's VMCOREINFO_XEN note: no offset is written in this code, every one is read from the build.

:class:`XenSyms` opens a ``xen-syms`` with debug info and answers "where is ``arch.pv.ctrlreg``
in ``struct vcpu``" (:meth:`~XenSyms.field`: offset, size, element count, signedness), "how big is
``struct domain``" and "what is the address of ``domain_list``". Structures are found among the
compile units' top-level types (the first CU that includes ``xen/sched.h`` has them; a lookup
costs about 0.1 s); members are found by dotted path through named members, anonymous
structs/unions and typedefs. :class:`VmcoreinfoLayout` answers the same questions from the few
``SYMBOL``/``OFFSET``/``SIZE`` lines a crash dump's VMCOREINFO_XEN note carries; fields it lacks
raise :class:`MissingLayout`, and callers say what needs ``xen-syms``.

Failure modes: :class:`~gdb_xenpte.errors.SourceError` when the file cannot be opened, is not
ELF, or has no DWARF; :class:`MissingLayout` (an :class:`~gdb_xenpte.errors.OptionError`) for a
structure, member or symbol the build does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from .errors import OptionError, SourceError

__all__ = ["Field", "MissingLayout", "VmcoreinfoLayout", "XenSyms", "first_symbol"]

_QUALIFIERS = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
               "DW_TAG_atomic_type", "DW_TAG_restrict_type")


class MissingLayout(OptionError):
    """A structure, member or symbol the layout source does not know."""


@dataclass(frozen=True)
class Field:
    """Where a member lies and how to read it.

    :param offset: bytes from the start of the outer structure.
    :param size: bytes of the member (of one element for arrays).
    :param count: number of elements (1 unless an array).
    :param signed: True for signed integers.
    :param kind: ``"int"``, ``"pointer"``, ``"struct"``, ``"enum"``, ``"bool"``.
    :param bits: ``(bit offset, bit size)`` within the bytes at ``offset`` for a bitfield.
    """

    offset: int
    size: int
    count: int = 1
    signed: bool = False
    kind: str = "int"
    bits: Optional[tuple] = None

    def decode(self, data: bytes, index: int = 0) -> int:
        """The value of element ``index`` in ``data`` (the outer structure's bytes)."""
        at = self.offset + index * self.size
        value = int.from_bytes(data[at:at + self.size], "little", signed=self.signed)
        if self.bits is not None:
            shift, width = self.bits
            value = value >> shift & ((1 << width) - 1)
        return value


def _name(die) -> Optional[str]:
    attr = die.attributes.get("DW_AT_name")
    return attr.value.decode("utf-8", "replace") if attr is not None else None


class XenSyms:
    """Symbols and DWARF struct layouts of a ``xen-syms`` file.

    :param path: the ``xen-syms`` (ELF with .debug_info).
    :raises SourceError: if it cannot be read or has no DWARF.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            self._fh = open(path, "rb")
        except OSError as err:
            raise SourceError(path, f"cannot open xen-syms: {err.strerror or err}") from None
        try:
            self._elf = ELFFile(self._fh)
            if not self._elf.has_dwarf_info():
                raise SourceError(path, "xen-syms has no DWARF debug info: build Xen with "
                                        "CONFIG_DEBUG_INFO (debug=y) or give the unstripped "
                                        "xen-syms")
            self._dwarf = self._elf.get_dwarf_info()
        except (ELFError, ValueError, OSError) as err:
            self._fh.close()
            raise SourceError(path, f"not a readable ELF xen-syms: {err}") from None
        self._structs: Dict[str, object] = {}
        self._symbols: Optional[Dict[str, int]] = None
        self.name = f"xen-syms {path}"

    # -- symbols ---------------------------------------------------------------------------------

    def _load_symbols(self) -> Dict[str, int]:
        if self._symbols is None:
            out: Dict[str, int] = {}
            for section in self._elf.iter_sections():
                if isinstance(section, SymbolTableSection):
                    for sym in section.iter_symbols():
                        if sym.name and sym["st_value"]:
                            out.setdefault(sym.name, sym["st_value"])
            self._symbols = out
        return self._symbols

    def symbol(self, name: str) -> int:
        """The address of symbol ``name``; a function-local static (``crashing_cpu.1``) is found
        by its plain name when it is the only one.

        :raises MissingLayout: if there is no such symbol.
        """
        syms = self._load_symbols()
        if name in syms:
            return syms[name]
        local = [v for k, v in syms.items() if k.split(".", 1)[0] == name and k != name]
        if len(set(local)) == 1:
            return local[0]
        raise MissingLayout(f"{self.name} has no symbol {name}")

    def has_symbol(self, name: str) -> bool:
        try:
            self.symbol(name)
            return True
        except MissingLayout:
            return False

    # -- types -----------------------------------------------------------------------------------

    def _struct_die(self, name: str):
        """The struct/union named ``name`` (a tag, or a typedef of one, e.g. ``ept_entry_t``)."""
        die = self._type_die(name)
        if die.tag not in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            raise MissingLayout(f"{self.name}: {name} is not a struct or union")
        return die

    def _type_die(self, name: str):
        """A top-level struct, union or enum by tag name, or a typedef (resolved), by name.

        Compile units are scanned in order, only their top-level DIEs, until ``name`` is found.
        """
        die = self._structs.get(name)
        if die is not None:
            return die
        for cu in self._dwarf.iter_CUs():
            for child in cu.get_top_DIE().iter_children():
                attr = child.attributes.get("DW_AT_name")
                if attr is None:
                    continue
                key = attr.value.decode("utf-8", "replace")
                if child.tag in ("DW_TAG_structure_type", "DW_TAG_union_type",
                                 "DW_TAG_enumeration_type"):
                    if "DW_AT_byte_size" in child.attributes:
                        self._structs.setdefault(key, child)
                elif child.tag == "DW_TAG_typedef" and "DW_AT_type" in child.attributes:
                    target = self._strip(child)
                    if "DW_AT_byte_size" in target.attributes:
                        self._structs.setdefault(key, target)
            if name in self._structs:
                return self._structs[name]
        raise MissingLayout(f"{self.name} has no DWARF definition of {name}")

    def enum_names(self, name: str) -> Dict[int, str]:
        """``value -> enumerator name`` of the enum (or typedef of one) ``name``."""
        die = self._type_die(name)
        if die.tag != "DW_TAG_enumeration_type":
            raise MissingLayout(f"{self.name}: {name} is not an enum")
        out: Dict[int, str] = {}
        for child in die.iter_children():
            if child.tag == "DW_TAG_enumerator":
                out.setdefault(child.attributes["DW_AT_const_value"].value, _name(child) or "?")
        return out

    def size(self, struct: str) -> int:
        """``sizeof(struct <struct>)``."""
        return self._struct_die(struct).attributes["DW_AT_byte_size"].value

    @staticmethod
    def _strip(die):
        while die.tag in _QUALIFIERS:
            if "DW_AT_type" not in die.attributes:
                return die
            die = die.get_DIE_from_attribute("DW_AT_type")
        return die

    def _member(self, struct_die, name: str):
        """``(offset, member DIE)`` of ``name`` directly or via anonymous members."""
        for child in struct_die.iter_children():
            if child.tag != "DW_TAG_member":
                continue
            loc = child.attributes.get("DW_AT_data_member_location")
            offset = loc.value if loc is not None and isinstance(loc.value, int) else 0
            child_name = _name(child)
            if child_name == name:
                return offset, child
            if child_name is None:
                inner = self._strip(child.get_DIE_from_attribute("DW_AT_type"))
                found = self._member(inner, name)
                if found is not None:
                    return offset + found[0], found[1]
        return None

    def field(self, struct: str, path: str) -> Field:
        """The member at dotted ``path`` in ``struct <struct>`` (e.g. ``"arch.pv.ctrlreg"``).

        :raises MissingLayout: if the structure or a member on the path does not exist.
        """
        die = self._struct_die(struct)
        offset = 0
        member = None
        for part in path.split("."):
            found = self._member(die, part)
            if found is None:
                raise MissingLayout(f"{self.name}: struct {struct} has no member {path} "
                                    f"(no {part!r})")
            delta, member = found
            offset += delta
            die = self._strip(member.get_DIE_from_attribute("DW_AT_type"))
        return self._field(offset, member, die)

    def _field(self, offset: int, member, die) -> Field:
        bits = None
        if "DW_AT_bit_size" in member.attributes:
            width = member.attributes["DW_AT_bit_size"].value
            start = member.attributes.get("DW_AT_data_bit_offset")
            start = start.value if start is not None else 0
            offset += start // 8
            bits = (start % 8, width)
        count = 1
        if die.tag == "DW_TAG_array_type":
            count = 1
            for sub in die.iter_children():
                if sub.tag == "DW_TAG_subrange_type":
                    if "DW_AT_count" in sub.attributes:
                        count *= sub.attributes["DW_AT_count"].value
                    elif "DW_AT_upper_bound" in sub.attributes:
                        count *= sub.attributes["DW_AT_upper_bound"].value + 1
            die = self._strip(die.get_DIE_from_attribute("DW_AT_type"))
        kind = {"DW_TAG_pointer_type": "pointer", "DW_TAG_structure_type": "struct",
                "DW_TAG_union_type": "struct", "DW_TAG_enumeration_type": "enum"}.get(die.tag,
                                                                                     "int")
        size = die.attributes["DW_AT_byte_size"].value if "DW_AT_byte_size" in die.attributes \
            else 8
        signed = False
        if die.tag == "DW_TAG_base_type":
            encoding = die.attributes.get("DW_AT_encoding")
            signed = encoding is not None and encoding.value in (5, 6, 13)  # DW_ATE_signed*
            if encoding is not None and encoding.value == 2:
                kind = "bool"
        if kind == "struct" and size <= 8:
            # atomic_t, pagetable_t, ...: a one-word wrapper read as its first member.
            first = next((c for c in die.iter_children() if c.tag == "DW_TAG_member"), None)
            if first is not None:
                inner = self._strip(first.get_DIE_from_attribute("DW_AT_type"))
                if inner.tag == "DW_TAG_base_type":
                    enc = inner.attributes.get("DW_AT_encoding")
                    signed = enc is not None and enc.value in (5, 6, 13)
                    kind = "int"
        return Field(offset, size, count, signed, kind, bits)

    def build_id_note(self) -> Optional[Tuple[int, bytes]]:
        """``(VA, bytes)`` of the linked ``.note.gnu.build-id`` (Xen keeps it in its image, in
        read-only data, for livepatch and ``xen_build_id``), or None if this build has none."""
        syms = self._load_symbols()
        start, end = syms.get("__note_gnu_build_id_start"), syms.get("__note_gnu_build_id_end")
        if start is None or end is None or not 16 < end - start <= 4096:
            return None
        for section in self._elf.iter_sections():  # the linker put it inside another section
            base, size = section["sh_addr"], section["sh_size"]
            if base and section["sh_type"] != "SHT_NOBITS" and base <= start and end <= base + size:
                return start, section.data()[start - base:end - base]
        return None

    def close(self) -> None:
        self._fh.close()


class VmcoreinfoLayout:
    """The layout facts a VMCOREINFO_XEN note gives (no xen-syms): a few symbols and offsets.

    :param info: a :class:`~gdb_xenpte.sources.xen_crash.VmcoreInfo`.
    """

    name = "the dump's VMCOREINFO_XEN note"
    _ALIASES = {"idle_pg_table": "pgd_l4"}

    def __init__(self, info):
        self._info = info

    def symbol(self, name: str) -> int:
        syms = self._info.symbols
        for key in (name, self._ALIASES.get(name, "")):
            if key in syms:
                return syms[key]
        raise MissingLayout(f"{self.name} has no SYMBOL({name}): give --xen-syms FILE")

    def has_symbol(self, name: str) -> bool:
        return name in self._info.symbols or self._ALIASES.get(name) in self._info.symbols

    def size(self, struct: str) -> int:
        if struct in self._info.sizes:
            return self._info.sizes[struct]
        raise MissingLayout(f"{self.name} has no SIZE({struct}): give --xen-syms FILE")

    def field(self, struct: str, path: str) -> Field:
        key = f"{struct}.{path}"
        if key not in self._info.offsets:
            raise MissingLayout(f"{self.name} has no OFFSET({key}): give --xen-syms FILE")
        sizes = {"domain.domain_id": 2}  # domid_t; next_in_list and the rest: pointers
        return Field(self._info.offsets[key], sizes.get(key, 8),
                     kind="int" if key in sizes else "pointer")

    def close(self) -> None:
        pass


def first_symbol(layout, names: Iterable[str]) -> Optional[int]:
    """The address of the first of ``names`` the layout knows, else None."""
    for name in names:
        if layout.has_symbol(name):
            return layout.symbol(name)
    return None
