; The verdict oracle guest for the legacy paging modes (32-bit and PAE), assembly half: multiboot
; entry, flat segments, the exception stubs and the probe. oracle32.c chooses the mode from the
; command line ("paging=32" or "paging=pae"), builds the tables, enables paging and runs.
;
; Same protocol as boot.asm (the long-mode guest): every probe ends with `int 0x81` or a fault,
; and trap_common returns from probe() on the saved stack; ring 3 is entered from ring 0 only.

bits 32

MB_MAGIC        equ 0x1BADB002
MB_FLAGS        equ 0x00000003
KERNEL_CS       equ 0x08
KERNEL_DS       equ 0x10
USER_CS         equ 0x18 | 3
USER_DS         equ 0x20 | 3
TARGET_DATA_OFF equ 8                   ; keep equal to oracle.h

section .multiboot progbits alloc noexec nowrite align=4
    dd MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

section .text.boot progbits alloc exec nowrite align=16
global _start, halt_forever
extern __bss_start, __bss_end, oracle32_main

_start:
    cli
    mov esi, ebx                        ; multiboot info survives the .bss wipe in esi
    mov edi, __bss_start
    mov ecx, __bss_end
    sub ecx, edi
    xor eax, eax
    rep stosb
    mov esp, boot_stack_top
    lgdt [gdt_ptr]
    jmp KERNEL_CS:.reload
.reload:
    ; DS/ES hold the DPL-3 data segment for good: an iret to ring 3 would null a DPL-0 one, and
    ; ring-3 data accesses through a null DS raise #GP instead of reaching the paging checks.
    mov ax, USER_DS
    mov ds, ax
    mov es, ax
    mov ax, KERNEL_DS
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    push esi                            ; oracle32_main(multiboot info)
    call oracle32_main
halt_forever:
    cli
    hlt
    jmp halt_forever

; u32 probe(u32 va, u32 kind, u32 cpl, u32 ac): as in boot.asm (cdecl here).
global probe
probe:
    push ebp
    push ebx
    push esi
    push edi
    mov [probe_esp], esp
    mov edi, [esp + 20]
    mov esi, [esp + 24]
    mov edx, [esp + 28]
    mov ecx, [esp + 32]
    xor eax, eax
    mov [trap_error], eax
    mov [trap_cr2], eax
    mov [trap_rip], eax
    mov byte [probe_active], 1
    invlpg [edi]
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
    mov al, [edi + TARGET_DATA_OFF]
    int 0x81
.kernel_write:
    mov byte [edi + TARGET_DATA_OFF], 0x5a
    int 0x81
.kernel_exec:
    call edi                            ; the target page starts with `int 0x81`
    ud2
.user:
    push USER_DS                        ; iret frame: SS, ESP, EFLAGS (IF=0, AC=0), CS, EIP
    push user_stack_top
    push 0x2
    push USER_CS
    push user_stub
    iretd

; Stack: vector, error code, then the CPU frame (EIP, CS, EFLAGS[, ESP, SS]).
trap_common:
    cmp byte [probe_active], 0
    je .unexpected
    mov byte [probe_active], 0
    mov eax, [esp + 4]
    mov [trap_error], eax
    mov eax, [esp + 8]
    mov [trap_rip], eax
    mov eax, cr2
    mov [trap_cr2], eax
    mov eax, [esp]
    mov esp, [probe_esp]
    clac
    pop edi
    pop esi
    pop ebx
    pop ebp
    ret
.unexpected:
    mov eax, cr2
    push eax                            ; oracle_fatal(vector, error, eip, cr2)
    push dword [esp + 12]
    push dword [esp + 12]
    push dword [esp + 12]
    extern oracle_fatal
    call oracle_fatal
    jmp halt_forever

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

; The only code that runs at CPL3 (edi = va, esi = kind); it touches no stack.
section .user progbits alloc exec write align=4096
user_stub:
    cmp esi, 1
    je .write
    cmp esi, 2
    je .exec
    mov al, [edi + TARGET_DATA_OFF]
    int 0x81
.write:
    mov byte [edi + TARGET_DATA_OFF], 0x5a
    int 0x81
.exec:
    jmp edi
align 16
    times 256 db 0
user_stack_top:

section .data progbits alloc noexec write align=16
global gdt32, trap_stubs
align 16
; Null, kernel code, kernel data, user code, user data (all flat 4 GiB), then the TSS that
; oracle32.c fills in.
gdt32:
    dq 0
    dq 0x00CF9A000000FFFF
    dq 0x00CF92000000FFFF
    dq 0x00CFFA000000FFFF
    dq 0x00CFF2000000FFFF
    dq 0
gdt_end:
gdt_ptr:
    dw gdt_end - gdt32 - 1
    dd gdt32

align 4
trap_stubs:
%assign v 0
%rep 256
    dd trap_stub_%[v]
%assign v v + 1
%endrep

section .bss nobits alloc noexec write align=4096
global trap_error, trap_cr2, trap_rip, trap_stack_top
boot_stack: resb 16384
boot_stack_top:
trap_stack: resb 16384                  ; TSS.ESP0: where CPL3 faults land
trap_stack_top:
probe_esp: resd 1
trap_error: resd 1
trap_cr2: resd 1
trap_rip: resd 1
probe_active: resb 1
