"""xen-pte-decode, xen-cr4 and xen-pte-check under the real gdb."""

import json

import pytest

from gdbrun import ROOT, run_gdb, validators

DATA = ROOT / "gdb_xenpte" / "data"


def _ok(res):
    return res.ok().stdout


def _fields(out):
    """{field: (value, meaning)} from a decode table."""
    rows = {}
    for ln in out.splitlines()[3:]:
        parts = ln.split(None, 2)
        if len(parts) == 3:
            rows[parts[0]] = (parts[1], parts[2])
    return rows


def test_decode_plain_entry():
    out = _ok(run_gdb("xen-pte-decode 0x8000000000300163"))
    assert out.splitlines()[0] == ("pt entry 0x8000000000300163 (4-level paging, NXE=1, "
                                   "MAXPHYADDR 52, domain native)")
    f = _fields(out)
    assert f["P"][0] == "1" and f["US"] == ("0", "supervisor") and f["G"][0] == "1"
    assert f["frame"][0] == "0x300000" and f["XD"] == ("1", "no execute")
    assert not any(k.startswith("_PAGE") for k in f)


def test_decode_xen_bits_and_pkey_collision():
    out = _ok(run_gdb("xen-pte-decode 0x4010000000300067 --domain pv64 --xen 4.17 --xen-debug"))
    f = _fields(out)
    assert "_PAGE_GUEST_KERNEL" in f and "_PAGE_GNTTAB" in f
    assert "PKEY-COLLISION" in f and "bit 62" in f["PKEY-COLLISION"][1]
    release = _fields(_ok(run_gdb("xen-pte-decode 0x4010000000300067 --domain pv64 --xen 4.17")))
    assert "_PAGE_GUEST_KERNEL" in release and "_PAGE_GNTTAB" not in release


def test_decode_levels_and_modes():
    assert "RSVD" in _fields(_ok(run_gdb("xen-pte-decode 0x83 --level pml4")))
    out = _ok(run_gdb("xen-pte-decode 0x1e3 --level 2 --mode pae"))
    assert out.startswith("pd entry") and "maps a 2 MiB page" in out
    res = run_gdb("xen-pte-decode 0x1 --level pml5")
    assert _ok(res).startswith("pml5 entry") and "5-level" in res.stdout
    res = run_gdb("xen-pte-decode 0x1 --level pml4 --mode pae")
    assert [ln for ln in res.stderr.splitlines() if ln] == [
        "xen-pte-decode: PAE paging has no pml4 level (it has pdpt, pd, pt)"]


def test_decode_needs_a_value():
    res = run_gdb("xen-pte-decode")
    assert [ln for ln in res.stderr.splitlines() if ln] == [
        "xen-pte-decode: the following arguments are required: VALUE"]


def test_cr4_pv32_before_and_after_4_7():
    old = _ok(run_gdb("xen-cr4 0x660 --domain pv32 --xen 4.6"))
    new = _ok(run_gdb("xen-cr4 0x660 --domain pv32 --xen 4.17"))
    # A ring-1 kernel under Xen 4.6 runs with Xen's SMEP/SMAP: imposed, never its choice.
    assert "guest kernel: CPL 1; SMEP applies (imposed by Xen), SMAP applies (imposed by Xen)" \
        in old
    assert "guest kernel: CPL 1; SMEP does not apply, SMAP does not apply" in new
    assert "guest-visible CR4" in new


def test_cr4_pv64_kernel_is_ring3():
    out = _ok(run_gdb("xen-cr4 0x660 --domain pv64 --xen 4.17"))
    assert "guest kernel: CPL 3; SMEP does not apply, SMAP does not apply" in out


def test_cr4_without_a_value_or_target_is_one_error():
    res = run_gdb("xen-cr4")
    assert [ln for ln in res.stderr.splitlines() if ln] == [
        "xen-cr4: no CR4 to explain: give VALUE, --core FILE, or connect to a target"]


def test_check_groups_worst_first(image):
    out = _ok(run_gdb(f"xen-pte-check {image}"))
    heads = [ln.split("]")[0] + "]" for ln in out.splitlines() if ln.startswith("[")]
    # The guest chose SMEP/SMAP (its own CR4): its user pages faulting for its kernel are no
    # #PF-loop candidates (issue 14); nothing here is imposed.
    assert heads == ["[wx]"]
    assert "[wx] writable and executable mappings: 2 ranges, 3 pages" in out


def test_check_json_validates(image):
    validator = _check_validator()
    res = run_gdb(f"xen-pte-check --json {image}")
    recs = [json.loads(ln) for ln in _ok(res).splitlines()]
    for r in recs:
        validator.validate(r)
    assert [r["type"] for r in recs] == ["header"] + ["anomaly"] * 2 + ["summary"]
    assert recs[-1]["counts"] == {"wx": 2} and recs[-1]["pages"] == {"wx": 3}


def test_check_pv64_disallowed_and_xen_bits(image):
    out = _ok(run_gdb(f"xen-pte-check --domain pv64 --xen 4.17 {image}"))
    # A PV64 kernel runs at CPL3: SMEP/SMAP never trap it, so that category is gone.
    assert "[pf-loop]" not in out


def _check_validator():
    return validators()[1]


@pytest.fixture(scope="module")
def pv_image(tmp_path_factory):
    """A 64-bit PV guest's tables, all in guest-owned L4 slots (Xen owns 256-271)."""
    from builder import BIT52, G, NX, P, RW, US, Builder
    b = Builder("4level")
    b.map(0x400000, 0x200000, flags=P | RW | US)
    b.map(0x7F0000000000, 0x400000, flags=P | RW | US | NX, pkey=5)
    b.map(0xFFFF888000000000, 0x0, size=1 << 21, flags=P | RW | US | G)  # PSE: PV refuses it
    b.map(0xFFFFFFFF80000000, 0x300000, flags=P | US, extra=BIT52)  # Xen's kernel marking
    img = bytearray(0x800000)
    for addr, page in b.image().items():
        img[addr:addr + 4096] = page
    path = tmp_path_factory.mktemp("pv") / "pv64.raw"
    path.write_bytes(bytes(img))
    return f"--raw {path}@0 --cr3 {b.cr3:#x} --cr4 0x6a0 --efer 0xd01 --domain pv64 --xen 4.17"


def test_what_if_text_and_json(pv_image):
    pv = pv_image
    out = _ok(run_gdb(f"xen-pte-check {pv} --what-if no-guest-kernel-bit --what-if debug"))
    assert ("what-if no-guest-kernel-bit: this change changes the meaning of 1 more in 1 range; "
            "first: 0xffffffff80000000 (no longer Xen's: _PAGE_GUEST_KERNEL)") in out
    assert "what-if debug: nothing changes for this guest (4 pages in 4 mappings checked)" in out
    recs = [json.loads(ln) for ln in _ok(run_gdb(
        f"xen-pte-check --json {pv} --what-if pke --what-if xen=4.6")).splitlines()]
    validator = _check_validator()
    for r in recs:
        validator.validate(r)
    kinds = [r["type"] for r in recs]
    first_what_if = kinds.index("what-if")
    assert kinds[0] == "header" and set(kinds[1:first_what_if]) == {"anomaly"}
    pke = recs[first_what_if]
    # Every PV64 page is a user page, so PKE reaches all; only the key-5 page gains a key (key
    # 0 changes nothing under the all-allowed PKRU assumed).
    assert pke["scenario"] == "pke" and pke["breaks"] == 0 and pke["ranges"] == 1
    assert kinds[first_what_if:] == ["what-if", "change", "what-if", "summary"]
    changes = {r["va"]: r for r in recs if r["type"] == "change"}
    assert set(changes) == {"0x7f0000000000"}
    assert changes["0x7f0000000000"]["after"]["key"] == 5
    assert changes["0x7f0000000000"]["before"]["key"] is None
    assert recs[-1]["what_if"]["xen=4.6"]["changed"] == 0


def test_what_if_bad_scenario_is_one_line():
    res = run_gdb("xen-pte-check --what-if bogus")
    (line,) = [ln for ln in res.stderr.splitlines() if ln]
    assert line.startswith("xen-pte-check: argument --what-if: unknown what-if scenario 'bogus'")


def test_mapping_records_carry_disallowed_bits(pv_image):
    recs = run_gdb(f"xen-pte-walk --json {pv_image}").json_lines()
    big = next(r for r in recs if r.get("va") == "0xffff888000000000")
    assert big["disallowed"] == ["pd[0]: bit 7 (PSE)", "pd[0]: bit 8 (G)"]
    out = _ok(run_gdb(f"xen-pte-check {pv_image}"))
    assert "[pv-disallowed] bits Xen's PV disallow masks refuse" in out


def test_cr4_of_the_bundled_dom0_sample_agrees_with_the_walk():
    sample = ROOT / "gdb_xenpte" / "data" / "sample-xen-dom0.elf"
    out = _ok(run_gdb(f"xen-cr4 --core {sample} --domain pv64 --xen 4.17"))
    eff = next(ln for ln in out.splitlines() if ln.startswith("effective CR4 ")).split()[2]
    head = run_gdb(f"xen-pte-walk --json --core {sample} --domain pv64 --xen 4.17 "
                   "0xffffffff81000000").json_lines()[0]
    assert eff == head["effective_cr4"]
    assert "CPU CR4 " + head["cr4"] in out  # a QEMU dump holds the CPU's CR4, not the guest view
    assert "guest kernel: CPL 3; SMEP does not apply, SMAP does not apply" in out


def test_table_names_the_xen_slot_that_owns_a_row():
    """Rows below a Xen-owned L4 slot of a PV L4 say so in the table (256-271: Xen's, not the
    guest's; init_xen_l4_slots() in xen/arch/x86/mm.c); the guest's own rows keep their Xen bits."""
    sample = ROOT / "gdb_xenpte" / "data" / "sample-xen-dom0.elf"
    out = _ok(run_gdb(f"xen-pte-walk --core {sample} --domain pv64 --xen 4.17"))
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("0x")]
    slot = {r[0]: int(r[0].split("-")[0], 16) >> 39 & 0x1FF for r in rows}
    owned = [r for r in rows if 256 <= slot[r[0]] <= 271]
    assert owned and all(f"L4[{slot[r[0]]}]" in " ".join(r) for r in owned)
    assert all("Xen L4[" not in " ".join(r) for r in rows if slot[r[0]] >= 272)
    assert any("_PAGE_GUEST_KERNEL" in r for r in rows if slot[r[0]] == 511)
