; The verdict oracle guest, assembly half: multiboot entry, the switch to long mode, the exception
; stubs and the probe that performs one access and reports whether it faulted.
;
; Flow: QEMU's multiboot loader enters _start in 32-bit protected mode with paging off. We zero
; .bss, look for "paging=5" on the multiboot command line (LA57 can only be chosen before long mode
; is entered), identity-map the first GiB with boot tables, enable long mode and call
; oracle_main(la57, multiboot_info) in oracle.c, which builds the tables under test and runs.

bits 32

MB_MAGIC        equ 0x1BADB002
MB_FLAGS        equ 0x00000003          ; page-align modules, give memory info; ELF layout (no a.out kludge)
MB_INFO_CMDLINE equ 1 << 2

KERNEL_CS       equ 0x08
KERNEL_DS       equ 0x10
USER_CS         equ 0x18 | 3
USER_DS         equ 0x20 | 3

CR4_PAE         equ 1 << 5
CR4_LA57        equ 1 << 12
EFER_MSR        equ 0xC0000080
EFER_LME        equ 1 << 8
EFER_NXE        equ 1 << 11
SERIAL          equ 0x3F8
TARGET_DATA_OFF equ 8                   ; keep equal to oracle.h

section .multiboot progbits alloc noexec nowrite align=4
    dd MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

section .text.boot progbits alloc exec nowrite align=16
global _start
extern __bss_start, __bss_end, oracle_main

_start:
    cli
    mov esi, ebx                        ; multiboot info survives the .bss wipe in esi
    mov edi, __bss_start
    mov ecx, __bss_end
    sub ecx, edi
    xor eax, eax
    rep stosb
    mov [mb_info], esi
    mov esp, boot_stack_top

    ; ebp = 1 when the command line asks for 5-level paging.
    xor ebp, ebp
    test dword [esi], MB_INFO_CMDLINE
    jz .cmdline_done
    mov edi, [esi + 16]
.scan:
    xor ecx, ecx
.compare:
    mov al, [edi + ecx]
    cmp al, [want_la57 + ecx]
    jne .next
    inc ecx
    cmp ecx, want_la57_len
    jne .compare
    mov ebp, 1
    jmp .cmdline_done
.next:
    cmp byte [edi], 0
    je .cmdline_done
    inc edi
    jmp .scan
.cmdline_done:

    ; The CPU must offer long mode and NX (CPUID 80000001H:EDX bits 29 and 20), and LA57 if asked.
    mov eax, 0x80000001
    cpuid
    mov esi, msg_no_long_mode
    bt edx, 29
    jnc fail32
    bt edx, 20
    jnc fail32
    test ebp, ebp
    jz .tables
    mov eax, 7
    xor ecx, ecx
    cpuid
    mov esi, msg_no_la57
    bt ecx, 16
    jnc fail32

.tables:
    ; Boot tables: identity-map 1 GiB with 2 MiB pages, supervisor, RW. oracle.c replaces them.
    mov edi, boot_pd
    mov eax, 0x83                       ; P | RW | PS
    xor ecx, ecx
.fill_pd:
    mov [edi + ecx * 8], eax
    mov dword [edi + ecx * 8 + 4], 0
    add eax, 0x200000
    inc ecx
    cmp ecx, 512
    jne .fill_pd
    mov dword [boot_pdpt], boot_pd + 3
    mov dword [boot_pml4], boot_pdpt + 3
    mov dword [boot_pml5], boot_pml4 + 3

    mov eax, CR4_PAE
    mov ebx, boot_pml4
    test ebp, ebp
    jz .set_cr4
    or eax, CR4_LA57                    ; LA57 must be set before paging is enabled
    mov ebx, boot_pml5
.set_cr4:
    mov cr4, eax
    mov cr3, ebx
    mov ecx, EFER_MSR
    rdmsr
    or eax, EFER_LME | EFER_NXE
    wrmsr
    mov eax, cr0
    or eax, 0x80000001                  ; PG | PE
    mov cr0, eax
    lgdt [gdt_ptr]
    jmp KERNEL_CS:long_entry

; Print the NUL-terminated string at esi on COM1 and halt.
fail32:
    mov dx, SERIAL
.put:
    lodsb
    test al, al
    jz .halt
    out dx, al
    jmp .put
.halt:
    cli
    hlt
    jmp .halt

bits 64
long_entry:
    mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    mov rsp, boot_stack_top
    mov edi, ebp                        ; oracle_main(la57, multiboot info)
    mov esi, [mb_info]
    call oracle_main
global halt_forever
halt_forever:
    cli
    hlt
    jmp halt_forever

; ---------------------------------------------------------------------------------------------
; u64 probe(u64 va, u64 kind, u64 cpl, u64 ac)
;
; Perform one access (kind 0 read, 1 write, 2 execute) to va at CPL 0 or 3, with EFLAGS.AC = ac
; for CPL0. Returns the vector that ended the probe: VEC_COMPLETED (0x81) when the access
; completed, otherwise the exception raised; trap_error, trap_cr2 and trap_rip describe it.
;
; Every path leaves through an interrupt: a completed access executes `int 0x81`, a faulting one
; raises its exception. trap_common then restores the stack saved here and returns to the caller,
; so no handler ever irets back into a probe (in particular never ring 3 -> ring 3: QEMU 7.2's TCG
; SMAP-checks such an iretq wrongly). CPL3 is entered from CPL0 only.
global probe
probe:
    push rbp
    push rbx
    push r12
    push r13
    push r14
    push r15
    mov [probe_rsp], rsp
    xor eax, eax
    mov [trap_error], rax
    mov [trap_cr2], rax
    mov [trap_rip], rax
    mov byte [probe_active], 1
    invlpg [rdi]                        ; no stale translation from an earlier configuration
    test edx, edx
    jnz .user
    test ecx, ecx
    jz .ac_clear
    stac
    jmp .kernel_access
.ac_clear:
    clac
.kernel_access:
    cmp esi, 1
    je .kernel_write
    cmp esi, 2
    je .kernel_exec
    mov al, [rdi + TARGET_DATA_OFF]
    int 0x81
.kernel_write:
    mov byte [rdi + TARGET_DATA_OFF], 0x5a
    int 0x81
.kernel_exec:
    call rdi                            ; the target page starts with `int 0x81`
    ud2
.user:
    push USER_DS                        ; iretq frame: SS, RSP, RFLAGS (IF=0, AC=0), CS, RIP
    mov rax, user_stack_top
    push rax
    push 0x2
    push USER_CS
    mov rax, user_stub
    push rax
    iretq

; Common tail of every exception and of `int 0x81`. Stack: vector, error code, then the CPU frame.
trap_common:
    cmp byte [probe_active], 0
    je .unexpected
    mov byte [probe_active], 0
    mov rax, [rsp + 8]
    mov [trap_error], rax
    mov rax, [rsp + 16]
    mov [trap_rip], rax
    mov rax, cr2
    mov [trap_cr2], rax
    mov rax, [rsp]                      ; the vector is the probe's result
    mov rsp, [probe_rsp]
    clac
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbx
    pop rbp
    ret
.unexpected:
    mov rdi, [rsp]
    mov rsi, [rsp + 8]
    mov rdx, [rsp + 16]
    mov rcx, cr2
    and rsp, -16
    extern oracle_fatal
    call oracle_fatal                   ; does not return
    jmp halt_forever

; One stub per vector: push a dummy error code where the CPU pushes none, then the vector.
%assign v 0
%rep 256
trap_stub_%[v]:
%if v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30
%else
    push 0
%endif
    push v
    jmp trap_common
%assign v v + 1
%endrep

; ---------------------------------------------------------------------------------------------
; The only code that runs at CPL3: do the access probe() asked for (rdi = va, rsi = kind), then
; report completion through the DPL-3 gate. It touches no stack, so PKRU values that deny key 0
; cannot disturb it (instruction fetches are not subject to protection keys).
section .user progbits alloc exec write align=4096
user_stub:
    cmp esi, 1
    je .write
    cmp esi, 2
    je .exec
    mov al, [rdi + TARGET_DATA_OFF]
    int 0x81
.write:
    mov byte [rdi + TARGET_DATA_OFF], 0x5a
    int 0x81
.exec:
    jmp rdi
align 16
    times 256 db 0
user_stack_top:

section .rodata progbits alloc noexec nowrite align=8
want_la57:      db "paging=5"
want_la57_len   equ $ - want_la57
msg_no_long_mode: db "ORACLE: FATAL the CPU lacks long mode or NX", 10, 0
msg_no_la57:    db "ORACLE: FATAL paging=5 asked but the CPU lacks LA57", 10, 0

section .data progbits alloc noexec write align=16
global gdt64, trap_stubs
mb_info: dd 0
align 16
; Null, kernel code64, kernel data, user code64, user data, then a 16-byte TSS descriptor that
; oracle.c fills in (its base is only known at link time as a 64-bit address).
gdt64:
    dq 0
    dq 0x00209A0000000000
    dq 0x00CF92000000FFFF
    dq 0x0020FA0000000000
    dq 0x00CFF2000000FFFF
    dq 0, 0
gdt_end:
gdt_ptr:
    dw gdt_end - gdt64 - 1
    dd gdt64

align 8
trap_stubs:
%assign v 0
%rep 256
    dq trap_stub_%[v]
%assign v v + 1
%endrep

section .bss nobits alloc noexec write align=4096
global trap_error, trap_cr2, trap_rip, trap_stack_top
boot_pml5: resb 4096
boot_pml4: resb 4096
boot_pdpt: resb 4096
boot_pd: resb 4096
boot_stack: resb 16384
boot_stack_top:
trap_stack: resb 16384                  ; TSS.RSP0: where CPL3 faults land
trap_stack_top:
probe_rsp: resq 1
trap_error: resq 1
trap_cr2: resq 1
trap_rip: resq 1
probe_active: resb 1
