/*
 * The verdict oracle guest: shared definitions of the C half and the results layout.
 *
 * The host reads the results straight out of guest memory (tests/targets/oracle.py), so the three
 * structs below are a file format: keep their sizes fixed, and bump ORACLE_VERSION together with
 * the struct formats in oracle.py whenever a field moves.
 */
#ifndef ORACLE_H
#define ORACLE_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define ORACLE_MAGIC 0x4c4352414f545058ull /* "XPTORACL" in little-endian bytes */
#define ORACLE_VERSION 2

/* Header state: the host polls the serial line, this is the in-memory confirmation. */
#define STATE_RUNNING 1
#define STATE_DONE 2
#define STATE_FAILED 3

/* The exception vector the guest records for an access that completed without a fault: every
 * probe ends with `int 0x81` (a DPL-3 gate) whether it ran at CPL0 or CPL3. */
#define VEC_COMPLETED 0x81

/* Access kinds, as recorded. */
#define KIND_READ 0
#define KIND_WRITE 1
#define KIND_EXEC 2

/* Paging-structure levels, leaf-first, as used by the case table and the builder. */
#define LVL_PT 0
#define LVL_PD 1
#define LVL_PDPT 2
#define LVL_PML4 3
#define LVL_PML5 4
#define NLEVELS 5

/* Physical page every test leaf maps (4 KiB leaf: its frame; 2 MiB leaf: the frame of its 2 MiB
 * region; 1 GiB leaf: frame 0, reached at offset TARGET_PA). It starts with `int 0x81`, so an
 * execute probe that succeeds ends like every other probe; reads and writes use TARGET_DATA_OFF so
 * they never overwrite that instruction. */
#define TARGET_PA 0x800000ull
#define TARGET_DATA_OFF 8

/* One mapping under test, as recorded for the host (64 bytes). */
struct oracle_case {
    u64 va;          /* the VA probed (canonical); reads/writes use va + TARGET_DATA_OFF */
    u32 id;          /* index in the case table */
    u8 leaf_level;   /* LVL_PT, LVL_PD or LVL_PDPT */
    u8 top_slot_pad[3];
    char name[48];   /* NUL-terminated case name */
};

/* One access the guest performed (72 bytes). */
struct oracle_record {
    u32 case_id;
    u8 kind;         /* KIND_* */
    u8 cpl;          /* 0 or 3 */
    u8 ac;           /* EFLAGS.AC during a CPL0 access (always 0 at CPL3) */
    u8 vector;       /* VEC_COMPLETED, or the exception vector raised (14 = #PF) */
    u64 va;          /* the exact address accessed */
    u64 cr0;
    u64 cr4;
    u64 efer;
    u32 pkru;        /* PKRU as last written (meaningful while CR4.PKE=1) */
    u32 error_code;  /* exception error code, 0 when none */
    u64 cr2;         /* CR2 after a #PF, else 0 */
    u64 rip;         /* RIP of the faulting instruction, else 0 */
    u32 pkrs;        /* IA32_PKRS as last written (meaningful while CR4.PKS=1) */
    u32 reserved;
};

/* The results header at symbol `oracle_results` (identity-mapped: its VA is its PA). */
struct oracle_header {
    u64 magic;
    u32 version;
    u32 state;           /* STATE_* */
    u32 n_cases;
    u32 n_records;
    u32 n_configs;
    u32 maxphyaddr;      /* CPUID.80000008H:EAX[7:0] */
    u64 cases_pa;
    u64 records_pa;
    u64 cr3;             /* root of the tables under test (PML4 or PML5) */
    u64 final_cr0;       /* control registers left loaded when the guest halts */
    u64 final_cr4;
    u64 final_efer;
    u32 levels;          /* 2 (32-bit paging), 3 (PAE), 4 or 5 */
    u32 record_size;     /* sizeof(struct oracle_record), checked by the host */
    char vendor[16];     /* CPUID.0 vendor string */
    u32 has_pks;         /* CPUID.(EAX=7,ECX=0):ECX[31]: the PKS configurations were run */
    u32 final_pkru;      /* PKRU left loaded at the halt (gdb cannot read PKRU) */
};

#endif
