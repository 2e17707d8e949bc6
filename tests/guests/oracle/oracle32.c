/*
 * The verdict oracle guest for the legacy paging modes, C half (built with -m32): 32-bit paging
 * (CR4.PAE=0, CR4.PSE=1 for 4 MiB pages) or PAE paging, chosen by "paging=32" / "paging=pae" on
 * the multiboot command line. Same results format as the long-mode guest (oracle.h), with
 * header.levels = 2 (32-bit) or 3 (PAE).
 *
 * Each case gets its own page-directory entry (and page table): in 32-bit paging a PDE slot of the
 * one page directory, in PAE a PDE slot under PDPTEs 1..3. PDPTEs themselves cannot vary per case:
 * there are four, loaded when CR3 is written, and a reserved bit in one raises #GP at that write.
 * Protection keys do not exist in these modes; one configuration sets CR4.PKE with every key
 * access-disabled to show that nothing changes.
 */
#include "oracle.h"

#define P (1ull << 0)
#define RW (1ull << 1)
#define US (1ull << 2)
#define PWT (1ull << 3)
#define PCD (1ull << 4)
#define ACC (1ull << 5)
#define DIRTY (1ull << 6)
#define PS (1ull << 7)
#define PAT_4K (1ull << 7)
#define G (1ull << 8)
#define PAT_LARGE (1ull << 12)
#define NX (1ull << 63)
#define BIT(n) (1ull << (n))
#define AVL_LOW (BIT(9) | BIT(10) | BIT(11))

#define CR0_PG (1u << 31)
#define CR0_WP (1u << 16)
#define CR4_PSE (1u << 4)
#define CR4_PAE (1u << 5)
#define CR4_SMEP (1u << 20)
#define CR4_SMAP (1u << 21)
#define CR4_PKE (1u << 22)
#define MSR_EFER 0xC0000080u
#define EFER_NXE (1ull << 11)

#define PAGE 4096u
#define IDMAP_BYTES (16u << 20)
#define POOL_PAGES 256
#define MAX_RECORDS 16384
#define SERIAL 0x3f8

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u32 read_cr0(void) { u32 v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline u32 read_cr3(void) { u32 v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline u32 read_cr4(void) { u32 v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline void write_cr0(u32 v) { __asm__ volatile("mov %0, %%cr0" : : "r"(v) : "memory"); }
static inline void write_cr3(u32 v) { __asm__ volatile("mov %0, %%cr3" : : "r"(v) : "memory"); }
static inline void write_cr4(u32 v) { __asm__ volatile("mov %0, %%cr4" : : "r"(v) : "memory"); }
static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}
static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)) : "memory");
}
static inline void wrpkru(u32 v) { __asm__ volatile("wrpkru" : : "a"(v), "c"(0), "d"(0) : "memory"); }
static inline void cpuid(u32 leaf, u32 sub, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

void *memset(void *dst, int c, unsigned long n)
{
    u8 *p = dst;
    while (n--)
        *p++ = (u8)c;
    return dst;
}

extern u32 probe(u32 va, u32 kind, u32 cpl, u32 ac);
extern void halt_forever(void) __attribute__((noreturn));
extern u64 gdt32[];
extern u32 trap_stubs[256];
extern u32 trap_error, trap_cr2, trap_rip;
extern u8 trap_stack_top[];
extern u8 __user_start[], __user_end[], __image_end[];

static void putc_serial(char c)
{
    while (!(inb(SERIAL + 5) & 0x20))
        ;
    outb(SERIAL, (u8)c);
}

static void puts_serial(const char *s)
{
    while (*s)
        putc_serial(*s++);
}

static void put_hex(u32 v)
{
    puts_serial("0x");
    for (int shift = 28; shift >= 0; shift -= 4)
        putc_serial("0123456789abcdef"[(v >> shift) & 0xf]);
}

static void put_dec(u32 v)
{
    char buf[12];
    int i = 0;
    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        putc_serial(buf[--i]);
}

struct oracle_header oracle_results = {
    .magic = ORACLE_MAGIC,
    .version = ORACLE_VERSION,
    .record_size = sizeof(struct oracle_record),
};
static struct oracle_case case_table[128];
static struct oracle_record records[MAX_RECORDS];

_Static_assert(sizeof(struct oracle_record) == 72, "record layout is a file format");
_Static_assert(sizeof(struct oracle_case) == 64, "case layout is a file format");
_Static_assert(sizeof(struct oracle_header) == 112, "header layout is a file format");

static void fail(const char *why) __attribute__((noreturn));
static void fail(const char *why)
{
    oracle_results.state = STATE_FAILED;
    puts_serial("ORACLE: FATAL ");
    puts_serial(why);
    putc_serial('\n');
    halt_forever();
}

void oracle_fatal(u32 vector, u32 error, u32 eip, u32 cr2) __attribute__((noreturn));
void oracle_fatal(u32 vector, u32 error, u32 eip, u32 cr2)
{
    oracle_results.state = STATE_FAILED;
    puts_serial("ORACLE: FATAL unexpected exception vector=");
    put_dec(vector);
    puts_serial(" error=");
    put_hex(error);
    puts_serial(" eip=");
    put_hex(eip);
    puts_serial(" cr2=");
    put_hex(cr2);
    putc_serial('\n');
    halt_forever();
}

/* ---- Descriptor tables ----------------------------------------------------------------- */

struct tss32 {
    u16 link, reserved0;
    u32 esp0;
    u16 ss0, reserved1;
    u32 unused[22];
    u16 trap, iomap_base;
} __attribute__((packed));

static struct tss32 tss __attribute__((aligned(16)));
static u64 idt[256] __attribute__((aligned(16)));

#define TSS_SELECTOR 0x28
#define KERNEL_DS 0x10

static void setup_descriptors(void)
{
    tss.esp0 = (u32)trap_stack_top;
    tss.ss0 = KERNEL_DS;
    tss.iomap_base = sizeof(tss);
    u64 base = (u32)&tss, limit = sizeof(tss) - 1;
    gdt32[5] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
               (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    __asm__ volatile("ltr %w0" : : "r"(TSS_SELECTOR));
    for (int v = 0; v < 256; v++) {
        u64 off = trap_stubs[v];
        u64 type = v == VEC_COMPLETED ? 0xEE : 0x8E; /* 32-bit interrupt gate, DPL 3 / 0 */
        idt[v] = (off & 0xffff) | (0x08ull << 16) | (type << 40) | (((off >> 16) & 0xffff) << 48);
    }
    struct {
        u16 limit;
        u32 base;
    } __attribute__((packed)) idtr = {sizeof(idt) - 1, (u32)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

/* ---- Page tables ------------------------------------------------------------------------ */

static u8 pool[POOL_PAGES][PAGE] __attribute__((aligned(4096)));
static int pool_used;
static int pae;                                     /* 1: PAE paging, 0: 32-bit paging */
static u64 pdpt[4] __attribute__((aligned(32)));    /* PAE only */
static u64 pae_pd[4];                               /* PAE: the PD under each PDPTE */

static void *alloc_table(void)
{
    if (pool_used == POOL_PAGES)
        fail("page-table pool exhausted");
    void *t = pool[pool_used++];
    memset(t, 0, PAGE);
    return t;
}

static void set_entry(void *table, u32 index, u64 e)
{
    if (pae)
        ((u64 *)table)[index] = e;
    else
        ((u32 *)table)[index] = (u32)e;
}

static u64 get_entry(void *table, u32 index)
{
    return pae ? ((u64 *)table)[index] : ((u32 *)table)[index];
}

/* The page directory covering `va` (32-bit: the only one; PAE: the one under its PDPTE). */
static void *pd_for(u32 va, void *pd32)
{
    return pae ? (void *)(u32)pae_pd[va >> 30] : pd32;
}

static void build_identity(void *pd32)
{
    u32 pt_span = pae ? (2u << 20) : (4u << 20);
    for (u32 pa = 0; pa < IDMAP_BYTES; pa += PAGE) {
        void *pd = pd_for(pa, pd32);
        u32 pde = pae ? (pa >> 21) & 511 : pa >> 22;
        u32 pte = (pa % pt_span) / PAGE;
        if (!pte)
            set_entry(pd, pde, (u32)alloc_table() | P | RW | US);
        void *pt = (void *)(u32)(get_entry(pd, pde) & ~0xfffull);
        int user = pa >= (u32)__user_start && pa < (u32)__user_end;
        set_entry(pt, pte, pa | P | RW | (user ? US : 0));
    }
}

#define M32 1
#define MPAE 2

struct case_def {
    const char *name;
    u8 leaf;          /* LVL_PT (4 KiB) or LVL_PD (4 MiB in 32-bit paging, 2 MiB in PAE) */
    u8 modes;         /* M32 | MPAE */
    u64 set[2];       /* bits ORed into the PT / PD entry */
    u64 clear[2];
};

static const struct case_def cases[] = {
    {.name = "user_rw_4k", .leaf = LVL_PT, .modes = M32 | MPAE},
    {.name = "user_rw_large", .leaf = LVL_PD, .modes = M32 | MPAE},
    {.name = "us0_pd_4k", .leaf = LVL_PT, .modes = M32 | MPAE, .clear = {[LVL_PD] = US}},
    {.name = "ro_pd_4k", .leaf = LVL_PT, .modes = M32 | MPAE, .clear = {[LVL_PD] = RW}},
    {.name = "us0_pt_4k", .leaf = LVL_PT, .modes = M32 | MPAE, .clear = {[LVL_PT] = US}},
    {.name = "ro_pt_4k", .leaf = LVL_PT, .modes = M32 | MPAE, .clear = {[LVL_PT] = RW}},
    {.name = "us0_large", .leaf = LVL_PD, .modes = M32 | MPAE, .clear = {[LVL_PD] = US}},
    {.name = "ro_large", .leaf = LVL_PD, .modes = M32 | MPAE, .clear = {[LVL_PD] = RW}},
    {.name = "sup_ro_pt", .leaf = LVL_PT, .modes = M32 | MPAE, .clear = {[LVL_PT] = US | RW}},
    {.name = "np_pd", .leaf = LVL_PT, .modes = M32 | MPAE, .clear = {[LVL_PD] = P}},
    {.name = "np_pt", .leaf = LVL_PT, .modes = M32 | MPAE, .clear = {[LVL_PT] = P}},
    {.name = "np_large", .leaf = LVL_PD, .modes = M32 | MPAE, .clear = {[LVL_PD] = P}},
    {.name = "avl9_11_pt", .leaf = LVL_PT, .modes = M32 | MPAE, .set = {[LVL_PT] = AVL_LOW}},
    {.name = "avl9_11_pd_nonleaf", .leaf = LVL_PT, .modes = M32 | MPAE, .set = {[LVL_PD] = AVL_LOW}},
    {.name = "avl9_11_large", .leaf = LVL_PD, .modes = M32 | MPAE, .set = {[LVL_PD] = AVL_LOW}},
    {.name = "flags_pt", .leaf = LVL_PT, .modes = M32 | MPAE,
     .set = {[LVL_PT] = PWT | PCD | ACC | DIRTY | PAT_4K | G}},
    {.name = "flags_large", .leaf = LVL_PD, .modes = M32 | MPAE,
     .set = {[LVL_PD] = PWT | PCD | ACC | DIRTY | G | PAT_LARGE}},
    {.name = "g_pd_nonleaf", .leaf = LVL_PT, .modes = M32 | MPAE, .set = {[LVL_PD] = G}},

    /* PAE only: XD, and bits 62:MAXPHYADDR are reserved (no software or key bits up there). */
    {.name = "nx_pd_4k", .leaf = LVL_PT, .modes = MPAE, .set = {[LVL_PD] = NX}},
    {.name = "nx_pt_4k", .leaf = LVL_PT, .modes = MPAE, .set = {[LVL_PT] = NX}},
    {.name = "nx_large", .leaf = LVL_PD, .modes = MPAE, .set = {[LVL_PD] = NX}},
    {.name = "sup_nx_pt", .leaf = LVL_PT, .modes = MPAE, .set = {[LVL_PT] = NX},
     .clear = {[LVL_PT] = US}},
    {.name = "rsvd52_pt", .leaf = LVL_PT, .modes = MPAE, .set = {[LVL_PT] = BIT(52)}},
    {.name = "rsvd62_pt", .leaf = LVL_PT, .modes = MPAE, .set = {[LVL_PT] = BIT(62)}},
    {.name = "rsvd45_pt", .leaf = LVL_PT, .modes = MPAE, .set = {[LVL_PT] = BIT(45)}},
    {.name = "rsvd40_pt", .leaf = LVL_PT, .modes = MPAE, .set = {[LVL_PT] = BIT(40)}},
    {.name = "rsvd45_pd_nonleaf", .leaf = LVL_PT, .modes = MPAE, .set = {[LVL_PD] = BIT(45)}},
    {.name = "rsvd58_pd_nonleaf", .leaf = LVL_PT, .modes = MPAE, .set = {[LVL_PD] = BIT(58)}},
    {.name = "rsvd45_2m", .leaf = LVL_PD, .modes = MPAE, .set = {[LVL_PD] = BIT(45)}},
    {.name = "rsvd_align13_2m", .leaf = LVL_PD, .modes = MPAE, .set = {[LVL_PD] = BIT(13)}},
    {.name = "rsvd_align20_2m", .leaf = LVL_PD, .modes = MPAE, .set = {[LVL_PD] = BIT(20)}},

    /* 32-bit paging only: a 4 MiB PDE holds PA bits 39:32 in bits 20:13 (PSE-36 with MAXPHYADDR
     * 40), so bit 21 is reserved. */
    {.name = "rsvd21_4m", .leaf = LVL_PD, .modes = M32, .set = {[LVL_PD] = BIT(21)}},
};
#define NCASES ((int)(sizeof(cases) / sizeof(cases[0])))

/* Build case `c` in slot `slot`; return the VA to probe. */
static u32 build_case(void *pd32, const struct case_def *c, u32 slot)
{
    u32 va = pae ? ((1 + slot / 512) << 30) | ((slot % 512) << 21) : (4 + slot) << 22;
    void *pd = pd_for(va, pd32);
    u32 pde = pae ? (va >> 21) & 511 : va >> 22;
    u64 e;
    if (c->leaf == LVL_PD) {
        e = TARGET_PA | P | RW | US | PS;
    } else {
        void *pt = alloc_table();
        set_entry(pt, 0, (TARGET_PA | P | RW | US | c->set[LVL_PT]) & ~c->clear[LVL_PT]);
        e = (u32)pt | P | RW | US;
    }
    set_entry(pd, pde, (e | c->set[LVL_PD]) & ~c->clear[LVL_PD]);
    return va;
}

/* ---- Configurations --------------------------------------------------------------------- */

struct config {
    u8 wp, smep, smap, pke, nxe;
    u32 pkru;
};

static const struct config configs[] = {
    {0, 0, 0, 0, 1, 0}, {0, 0, 1, 0, 1, 0}, {0, 1, 0, 0, 1, 0}, {0, 1, 1, 0, 1, 0},
    {1, 0, 0, 0, 1, 0}, {1, 0, 1, 0, 1, 0}, {1, 1, 0, 0, 1, 0}, {1, 1, 1, 0, 1, 0},
    /* EFER.NXE=0: XD is a reserved bit in PAE entries (32-bit entries have none). */
    {1, 1, 1, 0, 0, 0}, {0, 0, 0, 0, 0, 0},
    /* CR4.PKE with every key access-disabled: keys exist only in 4- and 5-level paging. */
    {1, 1, 1, 1, 1, 0x55555555u},
};
#define NCONFIGS ((int)(sizeof(configs) / sizeof(configs[0])))

static const struct config final_config = {1, 1, 1, 0, 1, 0};

static void apply_config(const struct config *cfg)
{
    write_cr0((read_cr0() & ~CR0_WP) | (cfg->wp ? CR0_WP : 0));
    u32 cr4 = read_cr4() & ~(CR4_SMEP | CR4_SMAP | CR4_PKE);
    cr4 |= (cfg->smep ? CR4_SMEP : 0) | (cfg->smap ? CR4_SMAP : 0) | (cfg->pke ? CR4_PKE : 0);
    write_cr4(cr4);
    wrmsr(MSR_EFER, (rdmsr(MSR_EFER) & ~EFER_NXE) | (cfg->nxe ? EFER_NXE : 0));
    if (cfg->pke)
        wrpkru(cfg->pkru);
    write_cr3(read_cr3()); /* flush translations (and reload the PDPTEs under PAE) */
}

/* True if the NUL-terminated `s` contains `word`. */
static int contains(const char *s, const char *word)
{
    for (; *s; s++) {
        int i = 0;
        while (word[i] && s[i] == word[i])
            i++;
        if (!word[i])
            return 1;
    }
    return 0;
}

void oracle32_main(u32 multiboot_info)
{
    const u32 *mbi = (const u32 *)multiboot_info;
    pae = (mbi[0] & (1u << 2)) && contains((const char *)mbi[4], "paging=pae");
    puts_serial(pae ? "ORACLE: start levels=3 (PAE)\n" : "ORACLE: start levels=2 (32-bit)\n");
    oracle_results.state = STATE_RUNNING;
    oracle_results.levels = pae ? 3 : 2;
    if ((u32)__image_end > TARGET_PA)
        fail("the image overlaps the target page");

    u32 a, b, c, d;
    cpuid(0, 0, &a, &b, &c, &d);
    u32 *vendor = (u32 *)oracle_results.vendor;
    vendor[0] = b;
    vendor[1] = d;
    vendor[2] = c;
    cpuid(7, 0, &a, &b, &c, &d);
    if (!(b & (1u << 7)) || !(b & (1u << 20)) || !(c & (1u << 3)))
        fail("the CPU lacks SMEP, SMAP or PKU (use -cpu max)");
    cpuid(0x80000001, 0, &a, &b, &c, &d);
    if (!(d & (1u << 20)))
        fail("the CPU lacks NX");
    cpuid(0x80000008, 0, &a, &b, &c, &d);
    oracle_results.maxphyaddr = a & 0xff;
    setup_descriptors();

    void *pd32 = 0;
    u32 root;
    if (pae) {
        for (int i = 0; i < 4; i++) {
            pae_pd[i] = (u32)alloc_table();
            pdpt[i] = pae_pd[i] | P;
        }
        root = (u32)pdpt;
    } else {
        pd32 = alloc_table();
        root = (u32)pd32;
    }
    build_identity(pd32);
    int n = 0;
    for (int i = 0; i < NCASES; i++) {
        const struct case_def *cd = &cases[i];
        if (!(cd->modes & (pae ? MPAE : M32)))
            continue;
        struct oracle_case *out = &case_table[n];
        out->va = build_case(pd32, cd, (u32)n);
        out->id = (u32)n;
        out->leaf_level = cd->leaf;
        for (int k = 0; k < (int)sizeof(out->name) - 1 && cd->name[k]; k++)
            out->name[k] = cd->name[k];
        n++;
    }
    u8 *target = (u8 *)TARGET_PA;
    target[0] = 0xcd;
    target[1] = VEC_COMPLETED;

    write_cr3(root);
    write_cr4(CR4_PSE | (pae ? CR4_PAE : 0));
    wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_NXE);
    write_cr0(read_cr0() | CR0_PG);

    oracle_results.n_cases = (u32)n;
    oracle_results.cases_pa = (u32)case_table;
    oracle_results.records_pa = (u32)records;
    oracle_results.cr3 = root;

    u32 nrec = 0;
    for (int k = 0; k < NCONFIGS; k++) {
        const struct config *cfg = &configs[k];
        apply_config(cfg);
        u64 cr0 = read_cr0(), cr4 = read_cr4(), efer = rdmsr(MSR_EFER);
        for (int i = 0; i < n; i++) {
            for (int mode = 0; mode < 3; mode++) {
                u32 cpl = mode == 2 ? 3 : 0, ac = mode == 1;
                for (u32 kind = KIND_READ; kind <= KIND_EXEC; kind++) {
                    if (nrec == MAX_RECORDS)
                        fail("results table full");
                    u32 va = (u32)case_table[i].va;
                    struct oracle_record *r = &records[nrec++];
                    r->vector = (u8)probe(va, kind, cpl, ac);
                    r->case_id = (u32)i;
                    r->kind = (u8)kind;
                    r->cpl = (u8)cpl;
                    r->ac = (u8)ac;
                    r->va = kind == KIND_EXEC ? va : va + TARGET_DATA_OFF;
                    r->cr0 = cr0;
                    r->cr4 = cr4;
                    r->efer = efer;
                    r->pkru = cfg->pkru;
                    r->error_code = trap_error;
                    r->cr2 = r->vector == 14 ? trap_cr2 : 0;
                    r->rip = r->vector == VEC_COMPLETED ? 0 : trap_rip;
                }
            }
        }
        oracle_results.n_records = nrec;
    }
    oracle_results.n_configs = NCONFIGS;

    apply_config(&final_config);
    if (pae) {
        /* QEMU 7.2's TCG sets the accessed bit (bit 5) of the in-memory PDPTEs as it walks,
         * although in PAE paging that bit is reserved and the CPU uses the PDPTE values loaded
         * at the CR3 write. Put back the values loaded, so that the tables the host walks are
         * the ones the accesses were translated with. The cases live under PDPTEs 1..3, which
         * nothing touches from here on. */
        for (int i = 0; i < 4; i++)
            pdpt[i] = pae_pd[i] | P;
    }
    oracle_results.final_cr0 = read_cr0();
    oracle_results.final_cr4 = read_cr4();
    oracle_results.final_efer = rdmsr(MSR_EFER);
    oracle_results.final_pkru = final_config.pkru;
    oracle_results.state = STATE_DONE;
    puts_serial("ORACLE: done cases=");
    put_dec((u32)n);
    puts_serial(" configs=");
    put_dec(NCONFIGS);
    puts_serial(" records=");
    put_dec(nrec);
    putc_serial('\n');
    halt_forever();
}
