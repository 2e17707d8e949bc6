"""Walks of one dump in one gdb share what they learnt (issue 15: ``xen-pte-dump --vcpu all``).

Two vCPUs whose top tables differ but whose kernel half is the same tables: the second command's
walk replays the kernel subtrees the first one walked, and must give exactly what a fresh gdb
gives. A dump replaced or rewritten under the same name is a different dump.
"""

import json
import pathlib
import sys

from builder import NX, P, RW, US, Builder
from gdbrun import run_gdb

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "sources"))
from writers import write_qemu_elf  # noqa: E402

CR0, CR4, CS_LONG = 0x80050033, 0x3006A0, 0xA09B00
KERNEL = 0xFFFF888000000000


def _space(kernel_nx: bool):
    """Pages of two address spaces sharing their kernel half; the number of kernel tables."""
    a = Builder("4level")
    a.map(0x400000, 0x200000, flags=P | RW | US)
    before = len(a.pages)
    for i in range(3):  # three PDPT entries, each a PD with a 2 MiB page and a PT of 4 KiB pages
        base = KERNEL + (i << 30)
        a.map(base, 0x40000000 + (i << 21), size=1 << 21, flags=P | RW | (NX if kernel_nx else 0))
        for k in range(16):
            a.map(base + (1 << 21) + k * 4096, 0x300000 + k * 4096, flags=P | RW | NX)
    kernel_tables = len(a.pages) - before
    b = Builder("4level", table_base=0x800000)
    b.map(0x7F0000000000, 0x210000, flags=P | RW | US | NX)
    for index in range(256, 512):  # the kernel half of b's L4 is a's
        b._put(b.root, index, a._get(a.root, index))
    pages = {**a.image(), **b.image()}
    regs = dict(cr0=CR0, cr4=CR4, cs_flags=CS_LONG)
    return pages, [dict(regs, cr3=a.cr3), dict(regs, cr3=b.cr3)], kernel_tables


def _write(path, kernel_nx=False):
    pages, vcpus, kernel_tables = _space(kernel_nx)
    write_qemu_elf(path, pages, vcpus)
    return kernel_tables


def _records(path):
    recs = [json.loads(ln) for ln in path.read_text().splitlines()]
    return [r for r in recs if r["type"] == "mapping"], recs[-1]


def test_second_vcpu_replays_the_shared_half_and_says_the_same(tmp_path):
    dump = tmp_path / "two.elf"
    kernel_tables = _write(dump)
    out = {name: tmp_path / f"{name}.jsonl" for name in ("v0", "v1", "fresh", "again")}
    memo = ("python import json, gdb_xenpte.gdbcmd.context as c; "
            "print(json.dumps({'replayed': c.kept_memo_stats()}))")
    res = run_gdb(f"xen-pte-walk --core {dump} --vcpu 0 --json -o {out['v0']}", memo,
                  f"xen-pte-walk --core {dump} --vcpu 1 --json -o {out['v1']}", memo,
                  f"xen-pte-walk --core {dump} --vcpu 1 --json --expand -o {out['again']}").ok()
    run_gdb(f"xen-pte-walk --core {dump} --vcpu 1 --json -o {out['fresh']}").ok()
    shared, shared_sum = _records(out["v1"])
    fresh, fresh_sum = _records(out["fresh"])
    assert shared == fresh and shared_sum == fresh_sum  # the summary's tables_read too
    assert any(r["va"].startswith("0xffff8880") for r in shared)  # the kernel half is there
    # ... but vCPU 1's walk replayed the kernel subtree (one L4 entry) vCPU 0's walk had read:
    # every one of its tables, and only those.
    replayed = [json.loads(ln)["replayed"] for ln in res.stdout.splitlines() if "replayed" in ln]
    assert replayed == [{"subtrees": 0, "tables": 0},
                        {"subtrees": 1, "tables": kernel_tables}]
    # Another kind of walk (--expand) of the same dump binds afresh, and is still exact.
    again, _ = _records(out["again"])
    assert [r["va"] for r in again] == [r["va"] for r in fresh]


def test_a_dump_rewritten_under_the_same_name_is_walked_afresh(tmp_path):
    dump, nx = tmp_path / "d.elf", tmp_path / "nx.elf"
    _write(dump)
    _write(nx, kernel_nx=True)  # same size: only the kernel 2 MiB pages' NX differs
    assert dump.stat().st_size == nx.stat().st_size
    outs = [tmp_path / f"{n}.jsonl" for n in range(3)]
    run_gdb(f"xen-pte-walk --core {dump} --vcpu 0 --json -o {outs[0]}",
            f"shell cp {nx} {dump}",  # rewritten in place: same inode, same size
            f"xen-pte-walk --core {dump} --vcpu 1 --json -o {outs[1]}",
            f"shell cp {tmp_path / 'nx.elf'} {tmp_path / 'new.elf'} && "
            f"mv {tmp_path / 'new.elf'} {dump}",  # replaced: a new inode
            f"xen-pte-walk --core {dump} --vcpu 1 --json -o {outs[2]}").ok()
    for out in outs[1:]:
        big = [r for r in _records(out)[0] if r["page_size"] == 1 << 21]
        assert len(big) == 3 and not any(r["effective"]["exec"] for r in big), big
