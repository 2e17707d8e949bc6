"""The crash target's parsers on text captured from a real run (tests/targets/xen_crash.py).

Excerpts of ``xl debug-keys d`` / ``q`` and ``xen-mfndump dump-p2m`` as Xen 4.17.5 and its tools
printed them on 2026-12-07 (stack dumps and rangesets trimmed; no pCPU was in Xen at that 'd', so
the "CPU2 host state" block is written in the format of xen/common/keyhandler.c and
xen/arch/x86/x86_64/traps.c), and the marker page rule shared with ``xencrash/marker.c``.
"""

from targets.xen_crash import marker_page, parse_debug_key_d, parse_debug_key_q, parse_p2m

KEY_D = """(XEN) 'd' pressed -> dumping registers
(XEN) 
(XEN) *** Dumping CPU0 guest state (d0v0): ***
(XEN) ----[ Xen-4.17.5  x86_64  debug=n  Not tainted ]----
(XEN) CPU:    0
(XEN) RIP:    e033:[<ffffffff81a442b5>]
(XEN) RFLAGS: 0000000000000246   EM: 0   CONTEXT: pv guest (d0v0)
(XEN) r15: 0000000000000000   cr0: 0000000080050033   cr4: 0000000000150660
(XEN) cr3: 000000005ed9e000   cr2: 0000555b0a49c748
(XEN) ds: 0000   es: 0000   fs: 0000   gs: 0000   ss: e02b   cs: e033
(XEN) *** Dumping CPU1 guest state (d2v0): ***
(XEN) ----[ Xen-4.17.5  x86_64  debug=n  Not tainted ]----
(XEN) CPU:    1
(XEN) RIP:    0033:[<00000000004012a1>]
(XEN) r15: 0000000000000000   cr0: 0000000080050033   cr4: 0000000000150664
(XEN) cr3: 0000000023b15000   cr2: 0000000000403020
(XEN) *** Dumping CPU2 host state: ***
(XEN) RIP:    e008:[<ffff82d040201234>] idle_loop+0x1/0x2
(XEN) r15: 0000000000000000   cr0: 000000008005003b   cr4: 00000000007506e0
(XEN) cr3: 000000005f062000   cr2: 0000000000000000
"""

KEY_Q = """(XEN) General information for domain 1:
(XEN)     refcnt=3 dying=0 pause_count=1
(XEN)     nr_pages=32768 xenheap_pages=2 dirty_cpus={} max_pages=33024
(XEN) VCPU information and callbacks for domain 1:
(XEN)   UNIT0 affinities: hard={1} soft={0-1}
(XEN)     VCPU0: CPU1 [has=F] poll=0 upcall_pend=01 upcall_mask=00 
(XEN)     pause_count=0 pause_flags=0
(XEN) No periodic timer
(XEN) General information for domain 2:
(XEN)     refcnt=3 dying=0 pause_count=0
(XEN) VCPU information and callbacks for domain 2:
(XEN)   UNIT0 affinities: hard={1} soft={0-1}
(XEN)     VCPU0: CPU1 [has=T] poll=0 upcall_pend=00 upcall_mask=00 dirty_cpu=1
(XEN)     pause_count=0 pause_flags=0
(XEN) No periodic timer
"""

P2M = """ --- Dumping P2M for domain 1 ---
 Guest Width: 8, PT Levels: 4 P2M size: = 32768
  pfn=0x0 ==> mfn=0x5b800 (type 0x0)
  pfn=0x2a10 ==> mfn=0x5d410 (type 0xc) pinned L4
  pfn=0x3312 ==> mfn=0x5cd12 (type 0xb) pinned L3
 --- End of P2M for domain 1 ---
"""


def test_debug_key_d_one_record_per_pcpu_block():
    recs = parse_debug_key_d(KEY_D)
    assert [(r["pcpu"], r["context"], r["domid"], r["vcpu"]) for r in recs] == [
        (0, "guest", 0, 0), (1, "guest", 2, 0), (2, "host", None, None)]
    assert [r["cr3"] for r in recs] == [0x5ED9E000, 0x23B15000, 0x5F062000]
    assert [r["cr4"] for r in recs] == [0x150660, 0x150664, 0x7506E0]
    assert [r["cs"] for r in recs] == [0xE033, 0x33, 0xE008]
    assert recs[1]["rip"] == 0x4012A1


def test_debug_key_q_pause_counts_and_pcpus():
    doms = parse_debug_key_q(KEY_Q)
    assert doms[1]["pause_count"] == 1 and doms[2]["pause_count"] == 0
    assert doms[1]["vcpus"] == {0: {"pcpu": 1, "has": False, "pause_count": 0}}
    assert doms[2]["vcpus"] == {0: {"pcpu": 1, "has": True, "pause_count": 0}}


def test_p2m_lines_with_types():
    p2m = parse_p2m(P2M)
    assert p2m == {0: {"mfn": 0x5B800, "type": ""}, 0x2A10: {"mfn": 0x5D410, "type": "pinned L4"},
                   0x3312: {"mfn": 0x5CD12, "type": "pinned L3"}}


def test_marker_page_names_its_domain():
    a, b = marker_page("paused"), marker_page("running")
    assert len(a) == len(b) == 4096 and a != b
    assert a.startswith(b"XENPTE-XENCRASH-MARKER-v1 paused\n")
    # the head the "running" domU printed on 2026-12-07 (XENPTE-XENCRASH-MARKER ... head=...)
    assert b[:32].hex() == "58454e5054452d58454e43524153482d4d41524b45522d76312072756e6e696e"
