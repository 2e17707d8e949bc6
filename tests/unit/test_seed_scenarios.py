"""The seed mail's scenarios (xen-pv-pte-abi-thread.txt), end to end through session + walker.

Facts: xen-pte-abi.md §1.5 (bit 52 on PV64 L1), §3 (PKE never for PV), §4.3 (SMEP/SMAP cleared in
ring 1 since Xen 4.7, ea3e8edfdb), §4.4 (PV64 kernel at CPL3), Intel SDM Vol. 3A §4.6.
"""

from builder import BIT52, BIT62, G, NX, P, RW, US, A, Builder
from gdb_xenpte.arch import CR4, EFER
from gdb_xenpte.session import Options, prepare
from gdb_xenpte.sources.base import VcpuRegs
from gdb_xenpte.sources.memory import MemorySource

LM = EFER.LME | EFER.LMA | EFER.NXE
CR0 = 0x80050033  # PG|WP|AM|NE|ET|MP|PE


def source(b, domain, cr4, guest_view=True, root=None, translate=None):
    regs = VcpuRegs(0, cr0=CR0, cr3=root if root is not None else b.cr3, cr4=cr4, efer=LM,
                    cr4_is_guest_view=guest_view)
    return MemorySource(b.image(), f"{domain} image", translate_frame=translate, vcpus=[regs],
                        domain=domain)


def by_va(session):
    return {m.va: m for m in session.walker().iter_mappings(coalesce=False)}


def pv32_guest():
    """A 32-bit PV guest's own tables (PAE-shaped, IA-32e entries): a kernel page (U=0) and a
    user page (U=1) the ring-1 kernel reads, writes and executes."""
    b = Builder("pv32", upper=P | RW | US | A)
    b.map(0xC0001000, 0x5000, flags=P | RW | A)        # kernel page
    b.map(0x08048000, 0x6000, flags=P | RW | US | A)   # user page
    return b


def test_pv32_kernel_on_xen_4_6_with_smap_loops_on_user_pages():
    """Xen 4.6 left SMEP/SMAP on in ring 1: a PV32 kernel touching a user page takes a SMAP
    fault it does not understand (the seed's infinite #PF loop)."""
    s = prepare(source(pv32_guest(), "pv32", 0x660), Options(xen="4.6", ac=0))
    assert s.effective_cr4 & CR4.SMAP and s.effective_cr4 & CR4.SMEP
    assert s.judge.kernel_cpl == 1 and s.mode == "pv32"
    user = by_va(s)[0x08048000]
    assert str(user.verdicts["kernel_read"]) == "fault:SMAP"
    assert str(user.verdicts["kernel_write"]) == "fault:SMAP"
    assert str(user.verdicts["kernel_exec"]) == "fault:SMEP"
    assert str(user.verdicts["user_read"]) == "ok"


def test_pv32_kernel_on_xen_4_7_is_fine():
    s = prepare(source(pv32_guest(), "pv32", 0x660), Options(xen="4.7", ac=0))
    assert not s.effective_cr4 & (CR4.SMAP | CR4.SMEP)
    user = by_va(s)[0x08048000]
    assert all(str(user.verdicts[k]) == "ok" for k in ("kernel_read", "kernel_write",
                                                        "kernel_exec"))


def test_pv32_smap_hvm_option_keeps_ring1_free_of_smap_even_on_old_rules():
    """smap=hvm (4.8+): Xen's own CR4 lacks SMAP, so PV context never has it."""
    s = prepare(source(pv32_guest(), "pv32", 0x660), Options(xen="4.8", smap="hvm", ac=0))
    assert not s.effective_cr4 & CR4.SMAP


def pv64_guest():
    """A 64-bit PV guest's kernel L4 after Xen's adjust_guest_l1e: kernel pages U=1 + bit 52,
    user pages U=1 + G (xen-pte-abi.md §1.5)."""
    b = Builder("4level", upper=P | RW | US | A)
    b.map(0xFFFF888000001000, 0x5000, flags=P | RW | US | A, extra=BIT52 | NX)
    b.map(0xFFFFFFFF81000000, 0x6000, flags=P | US | A, extra=BIT52)
    b.map(0x00400000, 0x7000, flags=P | RW | US | A | G)
    return b


def test_pv64_kernel_pages_carry_bit_52_and_smep_smap_do_not_apply():
    s = prepare(source(pv64_guest(), "pv64", 0x660), Options(xen="4.17"))
    assert s.judge.kernel_cpl == 3
    # Xen itself runs with SMEP/SMAP; they are in the hardware CR4 but do not bind a CPL3 kernel.
    assert s.effective_cr4 & CR4.SMEP and s.effective_cr4 & CR4.SMAP
    assert any("CPL3" in n for n in s.kernel_notes)
    m = by_va(s)
    kdata, ktext, user = m[0xFFFF888000001000], m[0xFFFFFFFF81000000], m[0x400000]
    assert kdata.xen_bits == ("_PAGE_GUEST_KERNEL",) and kdata.effective.user
    assert ktext.xen_bits == ("_PAGE_GUEST_KERNEL",)
    assert user.xen_bits == ()
    for mp in (kdata, ktext, user):
        assert not any("SMAP" in str(v) or "SMEP" in str(v) for v in mp.verdicts.values())
    assert str(user.verdicts["kernel_exec"]) == "ok"  # the CPL3 kernel may run user code
    assert str(kdata.verdicts["kernel_exec"]) == "fault:NX"


def test_hvm_pke_user_page_key_5_with_pkru_ad5_faults():
    """HVM: the guest's own CR4.PKE governs; PKRU.AD5 forbids data access to key-5 user pages
    (SDM §4.6.2) — for the kernel too."""
    b = Builder("4level")
    b.map(0x7000, 0x9000, flags=P | RW | US | A, pkey=5)
    src = source(b, "hvm", CR4.PAE | CR4.PKE | CR4.SMAP, guest_view=False)
    s = prepare(src, Options(xen="4.17", pkru=1 << 10, ac=1))
    m = by_va(s)[0x7000]
    assert m.pkey == 5
    assert str(m.verdicts["user_read"]) == "fault:PKEY5-AD"
    assert str(m.verdicts["kernel_read"]) == "fault:PKEY5-AD"
    assert str(m.verdicts["user_exec"]) == "ok"


def test_bit_62_in_a_debug_build_under_pke_is_a_collision():
    """Debug Xen sets bit 62 (_PAGE_GNTTAB) on grant mappings; bit 62 is also PKEY bit 3, so such
    an entry's 'key 8' is really a Xen bit (xen-pte-abi.md §1.3, §3)."""
    b = Builder("4level", upper=P | RW | US | A)
    b.map(0xFFFFC90000001000, 0x5000, flags=P | RW | US | A, extra=BIT62 | NX)
    s = prepare(source(b, "pv64", 0x660), Options(xen="4.17", xen_debug=True))
    t = s.walker().trace(0xFFFFC90000001000)
    names = {name: meaning for name, _v, meaning in t.steps[-1].bits}
    assert "_PAGE_GNTTAB" in names and "PKEY-COLLISION" in names
    assert t.mapping.xen_bits == ("_PAGE_GNTTAB",) and t.mapping.pkey == 8
    # In a release build bit 62 is the guest's own, but Xen then lets the guest set it.
    s = prepare(source(b, "pv64", 0x660), Options(xen="4.17", xen_debug=False))
    assert s.walker().trace(0xFFFFC90000001000).mapping.xen_bits == ()


def test_guest_set_bit_62_violates_the_debug_disallow_mask():
    """L1_DISALLOW_MASK has _PAGE_GNTTAB in debug builds: a guest may not set bit 62 itself."""
    b = Builder("4level", upper=P | RW | US | A)
    b.map(0x1000, 0x5000, flags=P | RW | US | A | 0x10, extra=BIT62)  # PCD too: not I/O-capable
    s = prepare(source(b, "pv64", 0x660), Options(xen="4.17", xen_debug=True))
    (m,) = s.walker().iter_mappings()
    assert any("bit 62" in d for d in m.disallowed) and any("bit 4" in d for d in m.disallowed)


def test_xen_l4_slots_are_labelled():
    b = pv64_guest()
    b.set(0xFFFF810000000000, "pml4", b.root | P | RW | US | A)  # slot 258: linear self-map
    s = prepare(source(b, "pv64", 0x660), Options(xen="4.17"))
    lin = [m for m in s.walker().iter_mappings() if m.va >> 39 & 511 == 258]
    assert lin and all("Xen L4 slot 258" in m.notes[0] for m in lin)


def test_pv32_hypervisor_area_is_xens_not_the_guests():
    """From 0xF5800000 up a PV32 guest's top L2 holds Xen's entries (compat M2P): they are
    labelled Xen's and Xen's guest ABI (disallow masks, Xen bits) is not applied to them."""
    b = pv32_guest()
    b.map(0xF5800000, 0x7000, flags=P | RW | A | 0x100)  # G: disallowed on a guest L1
    b.map(0xC0002000, 0x8000, flags=P | RW | A | 0x10)    # PCD: disallowed for a guest page
    s = prepare(source(b, "pv32", 0x660), Options(xen="4.17"))
    m = by_va(s)
    assert "Xen's area of a 32-bit PV guest" in m[0xF5800000].notes[0]
    assert m[0xF5800000].disallowed == ()
    assert m[0xC0002000].disallowed == ("pt[2]: bit 4 (PCD)",)


def test_pv32_compat_l4_slot_4_is_xens():
    """A PV32 vCPU's compat L4 maps Xen's per-domain area at slot 4 as well (config.h:208)."""
    b = Builder("4level", upper=P | RW | US | A)
    b.map(4 << 39, 0x7000, flags=P | RW | A)
    s = prepare(source(b, "pv32", 0x50660, guest_view=False), Options(xen="4.17"))
    (m,) = s.walker().iter_mappings()
    assert m.notes[0].startswith("Xen L4 slot 4: per-domain area") and m.disallowed == ()


def test_live_stop_in_ring1_is_the_pv_context_not_xens_cr4():
    """Measured on real Xen 4.17 (real-targets.md): CR4 is 0x50660 while ring-1 PV32 code runs
    and 0x350660 in Xen on the same CPU. A live stop in ring 1 (CS 0xe019) must give the same
    effective CR4 for 4.17 as a stop in Xen, and still show SMEP/SMAP for the 4.6 what-if."""
    b = pv32_guest()

    def live(cr4, cs):
        regs = VcpuRegs(0, cr0=CR0, cr3=b.cr3, cr4=cr4, efer=LM, cs=cs)
        return MemorySource(b.image(), "live", vcpus=[regs], domain="pv32")

    from gdb_xenpte.whatif import what_if
    for cr4, cs in ((0x50660, 0xE019), (0x350660, 0xE008)):
        opts = Options(xen="4.17", global_pages=False, ac=0, mode="pv32")  # root: guest L3
        s = prepare(live(cr4, cs), opts)
        assert s.effective_cr4 == 0x50660, (hex(cr4), hex(s.effective_cr4))
        # "What if this were Xen 4.6?" derives 4.6's ring-1 CR4: SMEP/SMAP stay on.
        r = what_if(s, "xen=4.6", opts)
        assert [c.va for c in r.broken] == [0x08048000], hex(cr4)
    s = prepare(live(0x50660, 0xE019), Options(xen="4.17"))
    assert s.effective_cr4 == 0x50660 and any("global-pages off" in n for n in s.notes)


def test_live_stop_in_guest_context_uses_the_cpus_cr4_as_is():
    """Measured on real Xen 4.17 + PV64 dom0 (tests/live/test_xen_dom0.py): the CPU shows
    0x150660 in dom0 context, while deriving from Xen's CR4 with default options gives PGE and
    drops dom0's own FSGSBASE. A stop in guest context is the truth: it is used bit for bit."""
    b = pv64_guest()
    regs = VcpuRegs(0, cr0=CR0, cr3=b.cr3, cr4=0x150660, efer=LM, cs=0xE033)
    src = MemorySource(b.image(), "live", vcpus=[regs], domain="pv64")
    s = prepare(src, Options(xen="4.17"))
    assert s.effective_cr4 == 0x150660
    assert s.state.origins["effective_cr4"].kind == "observed"
    # Every bit is explained as it is in the value used (issue 13: not the policy's bits).
    assert "PGE=0: clear in the CPU's CR4" in "\n".join(s.state.cr4.explanation)
    assert any("differs in" in n for n in s.notes)
    # Stopped in Xen (CS 0xe008) with dom0's L4 loaded, Xen runs dom0's context CR4 (lazy).
    regs = VcpuRegs(0, cr0=CR0, cr3=b.cr3, cr4=0x150660, efer=LM, cs=0xE008)
    src = MemorySource(b.image(), "live", vcpus=[regs], domain="pv64")
    assert prepare(src, Options(xen="4.17")).effective_cr4 == 0x150660


def test_domain_is_told_by_xens_code_selectors():
    """Xen's flat selectors (xen-x86_64.h: FLAT_RING3_CS64 0xe033; xen-x86_32.h: FLAT_RING1_CS
    0xe019) mark a PV guest's context; without them the tables are taken as the guest's own."""
    b = pv64_guest()
    for cs, domain in ((0xE033, "pv64"), (0xE019, "pv32"), (0xE008, "pv64"), (0x10, "native"),
                       (None, "native")):
        regs = VcpuRegs(0, cr0=CR0, cr3=b.cr3, cr4=0x20, efer=LM, cs=cs)
        s = prepare(MemorySource(b.image(), "dump", vcpus=[regs]), Options())
        assert s.domain == domain, hex(cs or 0)
        assert (s.policy is None) == (domain == "native")
        # Naming Xen (a version) without a kind makes a non-PV context an HVM guest of Xen.
        named = prepare(MemorySource(b.image(), "dump", vcpus=[regs]), Options(xen="4.17"))
        assert named.domain == ("hvm" if domain == "native" else domain), hex(cs or 0)
    assert prepare(MemorySource(b.image(), "d", vcpus=[regs]), Options(domain="pv64")).domain \
        == "pv64"


def test_io_capable_domains_may_set_cache_attributes():
    """l1_disallow_mask(): PWT/PCD/PAT are allowed on L1 for I/O-capable PV domains such as dom0
    (xen/arch/x86/mm.c); others may not set them."""
    b = Builder("4level", upper=P | RW | US | A)
    b.map(0x1000, 0x5000, flags=P | RW | US | A | 0x18)
    (m,) = prepare(source(b, "pv64", 0x660), Options(xen="4.17")).walker().iter_mappings()
    assert m.disallowed == ("pt[1]: bit 3 (PWT)", "pt[1]: bit 4 (PCD)")
    s = prepare(source(b, "pv64", 0x660), Options(xen="4.17", io_capable=True))
    (m,) = s.walker().iter_mappings()
    assert m.disallowed == ()


def test_xen_superpage_leaves_in_the_pv32_hypervisor_area():
    """Xen maps the compat M2P with 2 MiB leaves in a PV32 guest's top L2 at 0xF5800000 up: PSE
    there is Xen's doing, not a guest entry Xen failed to refuse."""
    b = pv32_guest()
    b.map(0xF5800000, 0x200000, size=1 << 21, flags=P | A)
    s = prepare(source(b, "pv32", 0x660), Options(xen="4.17"))
    m = by_va(s)[0xF5800000]
    assert m.page_size == 1 << 21 and m.xen_owned and m.disallowed == ()
    assert "Xen's area of a 32-bit PV guest" in m.notes[0]
