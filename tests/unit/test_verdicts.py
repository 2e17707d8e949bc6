"""Access verdicts against Intel SDM Vol. 3A §4.6 (access rights) and §4.6.2 (protection keys).

Each test states the SDM rule it checks; expectations come from the rule text, not from the code.
"""

import pytest

from gdb_xenpte.arch import CR0, CR4
from gdb_xenpte.model import Effective
from gdb_xenpte.verdicts import Judge, access_verdict

WP_ON = CR0.PG | CR0.PE | CR0.WP
WP_OFF = CR0.PG | CR0.PE
USER_RW = Effective(user=True, write=True, exec=True)
USER_RO = Effective(user=True, write=False, exec=True)
SUP_RO = Effective(user=False, write=False, exec=True)
SUP_NX = Effective(user=False, write=True, exec=False)


def v(eff, access, cpl, cr0=WP_ON, cr4=0, pkey=None, rsvd=False, **kw):
    return access_verdict(eff, pkey, rsvd, cpl=cpl, access=access, cr0=cr0, cr4=cr4, **kw)


def test_user_mode_cannot_touch_supervisor_addresses():
    """§4.6.1: user-mode accesses are allowed only to user-mode addresses."""
    for access in ("read", "write", "exec"):
        assert "USER-on-SUPERVISOR-page" in v(SUP_RO, access, 3).reasons


def test_user_write_to_read_only_faults_regardless_of_wp():
    """§4.6.1: user-mode writes need R/W=1 at every level; CR0.WP does not matter."""
    assert v(USER_RO, "write", 3, cr0=WP_OFF).reasons == ("RO",)
    assert v(USER_RO, "write", 3, cr0=WP_ON).reasons == ("RO",)


def test_supervisor_write_to_read_only_depends_on_wp():
    """§4.6.1: supervisor writes to read-only addresses are allowed iff CR0.WP=0."""
    assert v(SUP_RO, "write", 0, cr0=WP_OFF).ok is True
    assert v(SUP_RO, "write", 0, cr0=WP_ON).reasons == ("RO+WP",)


def test_nx_applies_to_both_modes():
    assert v(SUP_NX, "exec", 0).reasons == ("NX",)
    assert "NX" in v(Effective(True, True, False), "exec", 3).reasons


def test_smep_blocks_supervisor_fetch_from_user_address():
    """§4.6.1: with CR4.SMEP=1, supervisor-mode fetches from user-mode addresses fault."""
    assert v(USER_RW, "exec", 0, cr4=CR4.SMEP).reasons == ("SMEP",)
    assert v(USER_RW, "exec", 0, cr4=0).ok is True
    assert v(USER_RW, "exec", 3, cr4=CR4.SMEP).ok is True  # user fetch: not SMEP's business


def test_smap_with_ac_known_and_unknown():
    """§4.6.1: with CR4.SMAP=1, explicit supervisor data accesses to user-mode addresses fault
    unless EFLAGS.AC=1. Unknown AC gives a conditional verdict ("faults unless AC=1")."""
    assert v(USER_RW, "read", 0, cr4=CR4.SMAP, ac=0).reasons == ("SMAP",)
    assert v(USER_RW, "read", 0, cr4=CR4.SMAP, ac=1).ok is True
    cond = v(USER_RW, "read", 0, cr4=CR4.SMAP, ac=None)
    assert cond.ok is None and cond.reasons == ("SMAP[AC=0]",) and str(cond) == "fault:SMAP[AC=0]"


def test_smap_write_also_checks_wp():
    """§4.6.1: with SMAP and AC=1, a supervisor write to a user read-only page still needs
    CR0.WP=0."""
    assert v(USER_RO, "write", 0, cr4=CR4.SMAP, ac=1, cr0=WP_ON).reasons == ("RO+WP",)
    assert v(USER_RO, "write", 0, cr4=CR4.SMAP, ac=1, cr0=WP_OFF).ok is True


def test_ring1_is_supervisor():
    """§4.6: CPL < 3 is supervisor mode, so a ring-1 (32-bit PV) kernel is subject to SMAP."""
    assert v(USER_RW, "read", 1, cr4=CR4.SMAP, ac=0).reasons == ("SMAP",)


def test_pkru_governs_data_accesses_to_user_addresses():
    """§4.6.2: with CR4.PKE=1, PKRU.ADi forbids data accesses to user-mode addresses with key i,
    PKRU.WDi forbids user writes, and supervisor writes only if CR0.WP=1. Fetches unaffected."""
    pkru_ad5 = 1 << (2 * 5)
    pkru_wd5 = 1 << (2 * 5 + 1)
    assert v(USER_RW, "read", 3, cr4=CR4.PKE, pkey=5, pkru=pkru_ad5).reasons == ("PKEY5-AD",)
    assert v(USER_RW, "exec", 3, cr4=CR4.PKE, pkey=5, pkru=pkru_ad5).ok is True
    assert v(USER_RW, "read", 3, cr4=CR4.PKE, pkey=4, pkru=pkru_ad5).ok is True
    assert v(USER_RW, "write", 3, cr4=CR4.PKE, pkey=5, pkru=pkru_wd5).reasons == ("PKEY5-WD",)
    assert v(USER_RW, "read", 3, cr4=CR4.PKE, pkey=5, pkru=pkru_wd5).ok is True
    assert v(USER_RW, "write", 0, cr4=CR4.PKE, pkey=5, pkru=pkru_wd5, cr0=WP_OFF).ok is True
    assert v(USER_RW, "write", 0, cr4=CR4.PKE, pkey=5, pkru=pkru_wd5).reasons == ("PKEY5-WD",)
    assert v(USER_RW, "read", 3, cr4=0, pkey=5, pkru=pkru_ad5).ok is True  # PKE off: inert


def test_pkrs_governs_supervisor_addresses():
    """§4.6.2: with CR4.PKS=1, IA32_PKRS applies to data accesses to supervisor-mode addresses."""
    sup_rw = Effective(False, True, True)
    assert v(sup_rw, "read", 0, cr4=CR4.PKS, pkey=2, pkrs=1 << 4).reasons == ("PKEY2-AD",)
    assert v(sup_rw, "read", 0, cr4=CR4.PKE, pkey=2, pkru=1 << 4).ok is True  # PKRU: user only


def test_unknown_pkru_gives_conditional_reasons():
    got = v(USER_RW, "write", 3, cr4=CR4.PKE, pkey=3, pkru=None)
    assert got.ok is None and got.reasons == ("PKEY3-AD[PKRU?]", "PKEY3-WD[PKRU?]")


def test_reserved_bit_faults_every_access():
    for access in ("read", "write", "exec"):
        assert v(USER_RW, access, 0, rsvd=True).reasons == ("RSVD",)


def test_judge_uses_the_kernel_cpl_of_the_domain():
    """A 64-bit PV kernel runs at CPL3 (xen-pte-abi.md §4.4): its accesses are user-mode, so SMAP
    never applies to it even with CR4.SMAP set in hardware; a ring-1 PV32 kernel gets SMAP."""
    cr4 = CR4.SMAP | CR4.SMEP
    pv64 = Judge(WP_ON, cr4, kernel_cpl=3, ac=0).judge(USER_RW, None, False)
    assert all(x.ok for x in pv64.values())
    pv32 = Judge(WP_ON, cr4, kernel_cpl=1, ac=0).judge(USER_RW, None, False)
    assert str(pv32["kernel_read"]) == "fault:SMAP" and str(pv32["kernel_exec"]) == "fault:SMEP"
    assert pv32["user_read"].ok
