# A minimal 32-bit PAE PV kernel for Xen (boots as dom0, runs in ring 1).
#
# What it does, all reported on the Xen console with console_io, one "pv32: key=value" line each:
#   1. start_info fields, its CS (ring 1: 0xe019), and its own view of CR3 and CR4 (both reads trap
#      to Xen, which returns the folded L3 MFN and the guest-visible CR4);
#   2. makes two pages U=1: a data page with update_va_mapping and a code page with mmu_update
#      (the latter needs the PTE's machine address, found by walking its own PAE tables via the M2P);
#   3. reads, writes and executes those U=1 pages from ring 1. Under SMAP/SMEP in ring 1 each access
#      would #PF, and with no trap table that kills dom0 before "no-fault" is printed;
#   4. spins in ring 1 forever, with a cheap hypercall every few thousand iterations so that a
#      debugger stopping the machine at random also catches the CPU inside Xen.
#
# ABI facts used (Xen public headers: xen.h, elfnote.h, arch-x86/xen-x86_32.h):
#   entry with %esi = start_info VA; hypercalls are "call hypercall_page + 32*nr" with arguments in
#   ebx, ecx, edx, esi, edi; PAE PTEs are 64-bit, passed to update_va_mapping as (lo, hi).
# Assemble with "as --32", link with pv32.ld (build.py does both).

        .set VIRT_BASE,        0xC0000000
        .set M2P_VA,           0xF5800000       # compat machine_to_phys_mapping (PAE guest)

        .set HC_MMU_UPDATE,    1
        .set HC_UPDATE_VA,     14
        .set HC_XEN_VERSION,   17
        .set HC_CONSOLE_IO,    18
        .set HC_MMUEXT_OP,     26
        .set CONSOLEIO_WRITE,  0
        .set UVMF_INVLPG,      2
        .set MMUEXT_INVLPG_LOCAL, 7
        .set DOMID_SELF,       0x7FF0

        .set PTE_DATA_FLAGS,   0x067            # P RW US A D
        .set PTE_CODE_FLAGS,   0x025            # P US A (read-only, executable)

        # start_info offsets for a 32-bit guest (unsigned long and xen_pfn_t are 4 bytes)
        .set SI_NR_PAGES,      32
        .set SI_SHARED_INFO,   36
        .set SI_FLAGS,         40
        .set SI_PT_BASE,       60
        .set SI_NR_PT_FRAMES,  64
        .set SI_MFN_LIST,      68

        .set CODE_MAGIC,       0x600DC0DE
        .set DATA_MAGIC,       0x5A5A1234

# ---------------------------------------------------------------- ELF notes read by Xen's loader
        .macro note_str type, str
        .balign 4
        .long 4, 2f - 1f, \type
        .asciz "Xen"
1:      .asciz "\str"
2:      .balign 4
        .endm

        .macro note_long type, value
        .balign 4
        .long 4, 4, \type
        .asciz "Xen"
        .long \value
        .endm

        .section .note.Xen, "a", @note
        note_str  6, "gdb_xenpte-pv32"          # GUEST_OS
        note_str  7, "0.1"                      # GUEST_VERSION
        note_str  5, "xen-3.0"                  # XEN_VERSION
        note_str  8, "generic"                  # LOADER
        note_str  9, "yes"                      # PAE_MODE
        note_long 3, VIRT_BASE                  # VIRT_BASE
        note_long 4, VIRT_BASE                  # PADDR_OFFSET: link addresses are VAs
        note_long 1, _start                     # ENTRY
        note_long 2, hypercall_page             # HYPERCALL_PAGE

# ---------------------------------------------------------------- code
        .text
        .globl _start
_start:
        cld
        movl %esi, start_info

        lea msg_hello, %esi
        call puts
        call flush

        # start_info
        mov start_info, %ebx
        lea msg_si_magic, %esi
        call puts
        mov start_info, %esi            # magic: "xen-<version>-<platform>", NUL-terminated
        call puts
        call flush
        mov $SI_NR_PAGES, %ecx
        lea msg_nr_pages, %esi
        call put_si_field
        mov $SI_SHARED_INFO, %ecx
        lea msg_shared_info, %esi
        call put_si_field
        mov $SI_FLAGS, %ecx
        lea msg_flags, %esi
        call put_si_field
        mov $SI_PT_BASE, %ecx
        lea msg_pt_base, %esi
        call put_si_field
        mov $SI_NR_PT_FRAMES, %ecx
        lea msg_nr_pt_frames, %esi
        call put_si_field
        mov $SI_MFN_LIST, %ecx
        lea msg_mfn_list, %esi
        call put_si_field

        # privilege level and control registers as this ring-1 kernel sees them
        lea msg_cs, %esi
        xor %eax, %eax
        mov %cs, %ax
        call put_kv
        lea msg_cr3, %esi
        mov %cr3, %eax                  # emulated by Xen: folded L3 MFN (xen_pfn_to_cr3)
        call put_kv
        lea msg_cr4, %esi
        mov %cr4, %eax                  # emulated by Xen: the guest-visible CR4
        call put_kv

        # the 4 PAE L3 entries at pt_base (mapped read-only; Xen adds U and RW to them)
        mov start_info, %ebx
        mov SI_PT_BASE(%ebx), %ebx
        xor %edi, %edi
1:      lea msg_l3e, %esi
        call puts
        mov %edi, %eax
        call put_digit
        lea msg_eq, %esi
        call puts
        mov 4(%ebx,%edi,8), %eax
        call put_hex
        mov (%ebx,%edi,8), %eax
        call put_hex_nox
        call flush
        inc %edi
        cmp $4, %edi
        jb 1b

        # -- U=1 data page via update_va_mapping: pte = mfn_list[pfn] << 12 | flags
        lea user_data, %eax
        call pfn_to_mfn                 # eax = mfn
        mov %eax, %ecx
        shl $12, %ecx
        or $PTE_DATA_FLAGS, %ecx
        mov %eax, %edx
        shr $20, %edx                   # high half of the 64-bit PTE
        mov %ecx, pte_data
        mov %edx, pte_data + 4
        lea user_data, %ebx
        mov $UVMF_INVLPG, %esi
        call hypercall_page + HC_UPDATE_VA * 32
        test %eax, %eax
        jnz fail_uva
        lea msg_user_data, %esi
        lea user_data, %eax
        mov pte_data, %edx
        call put_va_pte

        # -- U=1 code page via mmu_update on its L1 entry's machine address
        lea user_code, %eax
        call pfn_to_mfn
        mov %eax, %ecx
        shl $12, %ecx
        or $PTE_CODE_FLAGS, %ecx
        shr $20, %eax
        mov %ecx, mmu_req + 8           # val
        mov %eax, mmu_req + 12
        mov %ecx, pte_code
        lea user_code, %eax
        call l1e_machine_address        # edx:eax = machine address of the L1 entry
        mov %eax, mmu_req               # ptr (low 2 bits 0 = MMU_NORMAL_PT_UPDATE)
        mov %edx, mmu_req + 4
        lea mmu_req, %ebx
        mov $1, %ecx
        xor %edx, %edx
        mov $DOMID_SELF, %esi
        call hypercall_page + HC_MMU_UPDATE * 32
        test %eax, %eax
        jnz fail_mmu
        lea user_code, %eax             # the entry was never used, but flush it anyway
        mov %eax, mmuext_req + 4
        lea mmuext_req, %ebx
        mov $1, %ecx
        xor %edx, %edx
        mov $DOMID_SELF, %esi
        call hypercall_page + HC_MMUEXT_OP * 32
        test %eax, %eax
        jnz fail_mmu
        lea msg_user_code, %esi
        lea user_code, %eax
        mov pte_code, %edx
        call put_va_pte

        # -- ring-1 (supervisor) accesses to the U=1 pages: SMAP would fault the first two,
        # SMEP the call
        mov user_data, %eax             # read
        mov %eax, seen_read
        movl $DATA_MAGIC, user_data + 4 # write
        mov user_data + 4, %eax
        cmp $DATA_MAGIC, %eax
        jne fail_rw
        call user_code                  # execute
        cmp $CODE_MAGIC, %eax
        jne fail_exec
        lea msg_nofault, %esi
        call puts
        mov seen_read, %eax
        call put_hex
        lea msg_nofault_exec, %esi
        call puts
        mov $CODE_MAGIC, %eax
        call put_hex
        call flush

        lea msg_spin, %esi
        call puts
        call flush
        .globl spin_ring1
spin_ring1:                             # the test recognises this range by its symbols
        mov $4096, %ecx
1:      incl spin_count
        pause
        dec %ecx
        jnz 1b
        xor %ebx, %ebx                  # XENVER_version: a cheap trip through Xen
        call hypercall_page + HC_XEN_VERSION * 32
        jmp spin_ring1
        .globl spin_ring1_end
spin_ring1_end:

fail_uva:
        lea msg_fail_uva, %esi
        jmp fail
fail_mmu:
        lea msg_fail_mmu, %esi
        jmp fail
fail_rw:
        lea msg_fail_rw, %esi
        jmp fail
fail_exec:
        lea msg_fail_exec, %esi
fail:
        call put_kv
1:      pause
        jmp 1b

# eax = VA inside the 1:1 bootstrap region -> eax = its MFN (mfn_list[(va - VIRT_BASE) >> 12])
pfn_to_mfn:
        sub $VIRT_BASE, %eax
        shr $12, %eax
        mov start_info, %edx
        mov SI_MFN_LIST(%edx), %edx
        mov (%edx,%eax,4), %eax
        ret

# eax = VA -> edx:eax = machine address of its L1 entry. Walks pt_base (L3, a VA) -> L2 MFN ->
# M2P -> L2 VA in the bootstrap region -> L1 MFN. Assumes MFNs below 2^32 (RAM < 16 TiB).
l1e_machine_address:
        push %ebx
        push %esi
        mov %eax, %esi                  # esi = VA
        mov start_info, %ebx
        mov SI_PT_BASE(%ebx), %ebx
        mov %esi, %eax
        shr $30, %eax
        mov (%ebx,%eax,8), %eax         # L3 entry, low half
        shr $12, %eax                   # L2 MFN
        mov M2P_VA(,%eax,4), %eax       # L2 PFN
        shl $12, %eax
        add $VIRT_BASE, %eax            # L2 VA
        mov %esi, %edx
        shr $21, %edx
        and $511, %edx
        mov (%eax,%edx,8), %eax         # L2 entry, low half
        shr $12, %eax                   # L1 MFN
        mov %eax, %edx
        shr $20, %edx                   # high half of MFN << 12
        shl $12, %eax
        shr $12, %esi
        and $511, %esi
        lea (%eax,%esi,8), %eax
        pop %esi
        pop %ebx
        ret

# ---------------------------------------------------------------- console output
# Lines are built in linebuf and written with one console_io call by flush.

# esi = "key", ecx = start_info offset: prints "pv32: key=<hex>"
put_si_field:
        mov start_info, %eax
        mov (%eax,%ecx), %eax
        # fall through
# esi = "key", eax = value: prints a whole "pv32: key=0x..." line
put_kv:
        push %eax
        call puts
        pop %eax
        call put_hex
        jmp flush

# esi = "key", eax = VA, edx = PTE low half: "pv32: key va=0x... pte=0x..."
put_va_pte:
        push %edx
        push %eax
        call puts
        lea msg_va, %esi
        call puts
        pop %eax
        call put_hex
        lea msg_pte, %esi
        call puts
        pop %eax
        call put_hex
        jmp flush

# esi = NUL-terminated string, appended to linebuf
puts:
        push %edi
        mov linepos, %edi
1:      lodsb
        test %al, %al
        jz 2f
        stosb
        jmp 1b
2:      mov %edi, linepos
        pop %edi
        ret

# eax = 0..9, appended as one decimal digit
put_digit:
        push %edi
        mov linepos, %edi
        add $48, %al                    # '0'
        stosb
        mov %edi, linepos
        pop %edi
        ret

# eax appended as "0x" and 8 hex digits (put_hex_nox: without "0x")
put_hex:
        push %eax
        lea msg_0x, %esi
        call puts
        pop %eax
put_hex_nox:
        push %edi
        push %ecx
        mov linepos, %edi
        mov $8, %ecx
1:      rol $4, %eax
        push %eax
        and $15, %eax
        mov hexdigits(%eax), %al
        stosb
        pop %eax
        dec %ecx
        jnz 1b
        mov %edi, linepos
        pop %ecx
        pop %edi
        ret

# writes linebuf plus "\n" to the Xen console and empties it; preserves all but eax
flush:
        push %ebx
        push %ecx
        push %edx
        mov linepos, %ecx
        movb $10, (%ecx)             # '\n'
        inc %ecx
        lea linebuf, %edx
        sub %edx, %ecx                  # count
        mov $CONSOLEIO_WRITE, %ebx
        call hypercall_page + HC_CONSOLE_IO * 32
        lea linebuf, %edx
        add $6, %edx                    # keep the "pv32: " prefix
        mov %edx, linepos
        pop %edx
        pop %ecx
        pop %ebx
        ret

# ---------------------------------------------------------------- pages Xen fills or we remap
        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill 4096, 1, 0xcc

        .globl user_code
user_code:                              # made U=1, read-only; called from ring 1
        mov $CODE_MAGIC, %eax
        ret
        .balign 4096, 0xcc

# ---------------------------------------------------------------- data
        .data
        .balign 4096
        .globl user_data
user_data:                              # made U=1, writable; read and written from ring 1
        .long 0xFEEDF00D, 0
        .balign 4096, 0

        .balign 8
mmu_req:    .quad 0, 0                  # struct mmu_update { u64 ptr, val }
mmuext_req: .long MMUEXT_INVLPG_LOCAL, 0, 0  # struct mmuext_op (32-bit layout)
pte_data:   .quad 0
pte_code:   .long 0
start_info: .long 0
seen_read:  .long 0
        .globl spin_count
spin_count: .long 0
linepos:    .long linebuf + 6
linebuf:    .ascii "pv32: "
            .fill 250, 1, 0
hexdigits:  .ascii "0123456789abcdef"

msg_hello:        .asciz "hello from ring 1"
msg_si_magic:     .asciz "magic="
msg_nr_pages:     .asciz "nr_pages="
msg_shared_info:  .asciz "shared_info="
msg_flags:        .asciz "flags="
msg_pt_base:      .asciz "pt_base="
msg_nr_pt_frames: .asciz "nr_pt_frames="
msg_mfn_list:     .asciz "mfn_list="
msg_cs:           .asciz "cs="
msg_cr3:          .asciz "cr3="
msg_cr4:          .asciz "cr4="
msg_l3e:          .asciz "l3e"
msg_eq:           .asciz "="
msg_0x:           .asciz "0x"
msg_va:           .asciz " va="
msg_pte:          .asciz " pte="
msg_user_data:    .asciz "user-data"
msg_user_code:    .asciz "user-code"
msg_nofault:      .asciz "no-fault read="
msg_nofault_exec: .asciz " exec="
msg_spin:         .asciz "spinning"
msg_fail_uva:     .asciz "error update_va_mapping="
msg_fail_mmu:     .asciz "error mmu_update="
msg_fail_rw:      .asciz "error read-back="
msg_fail_exec:    .asciz "error exec="
