/*
 * The verdict oracle guest, C half: build page tables covering every case the engine
 * distinguishes, perform every access under a list of CPU configurations, record what the CPU did.
 *
 * Each case gets a private chain of tables from its own top-level slot down to its leaf, so a bit
 * set at one level of one case touches nothing else. All leaves map the same physical page
 * (TARGET_PA). The results (struct oracle_header and the arrays it points at, see oracle.h) stay
 * in memory for the host; the serial line says "ORACLE: done ..." (or "ORACLE: FATAL ...").
 *
 * Runs freestanding at CPL0 in long mode, on the identity map of the first 16 MiB; only the
 * .user section (boot.asm) is mapped user-accessible there.
 */
#include "oracle.h"

/* Entry bits (Intel SDM Vol. 3A Tables 4-14..4-20). */
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
#define AVL_HIGH (0x7full << 52) /* bits 52..58 */
#define PKEY(k) ((u64)(k) << 59)

#define CR0_WP (1ull << 16)
#define CR4_SMEP (1ull << 20)
#define CR4_SMAP (1ull << 21)
#define CR4_PKE (1ull << 22)
#define CR4_PKS (1ull << 24)
#define MSR_PKRS 0x6E1u
#define MSR_EFER 0xC0000080u
#define EFER_NXE (1ull << 11)

#define PAGE 4096ull
#define SIZE_2M (1ull << 21)
#define IDMAP_BYTES (16ull << 20)
#define POOL_PAGES 512
#define MAX_RECORDS 32768
#define SERIAL 0x3f8

/* ---- CPU access helpers ---------------------------------------------------------------- */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline u64 read_cr0(void) { u64 v; __asm__ volatile("mov %%cr0, %0" : "=r"(v)); return v; }
static inline u64 read_cr3(void) { u64 v; __asm__ volatile("mov %%cr3, %0" : "=r"(v)); return v; }
static inline u64 read_cr4(void) { u64 v; __asm__ volatile("mov %%cr4, %0" : "=r"(v)); return v; }
static inline void write_cr0(u64 v) { __asm__ volatile("mov %0, %%cr0" : : "r"(v) : "memory"); }
static inline void write_cr3(u64 v) { __asm__ volatile("mov %0, %%cr3" : : "r"(v) : "memory"); }
static inline void write_cr4(u64 v) { __asm__ volatile("mov %0, %%cr4" : : "r"(v) : "memory"); }
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

/* gcc may emit calls to memset for zeroing loops even when freestanding. */
void *memset(void *dst, int c, unsigned long n)
{
    u8 *p = dst;
    while (n--)
        *p++ = (u8)c;
    return dst;
}

/* ---- Symbols from boot.asm and link.ld ---------------------------------------------------- */

extern u64 probe(u64 va, u64 kind, u64 cpl, u64 ac);
extern void halt_forever(void) __attribute__((noreturn));
extern u64 gdt64[];
extern u64 trap_stubs[256];
extern u64 trap_error, trap_cr2, trap_rip;
extern u8 trap_stack_top[];
extern u8 __user_start[], __user_end[], __image_end[];

/* ---- Serial output ------------------------------------------------------------------------ */

static void putc_serial(char c)
{
    while (!(inb(SERIAL + 5) & 0x20)) /* wait for an empty transmit register */
        ;
    outb(SERIAL, (u8)c);
}

static void puts_serial(const char *s)
{
    while (*s)
        putc_serial(*s++);
}

static void put_hex(u64 v)
{
    puts_serial("0x");
    for (int shift = 60; shift >= 0; shift -= 4)
        putc_serial("0123456789abcdef"[(v >> shift) & 0xf]);
}

static void put_dec(u64 v)
{
    char buf[24];
    int i = 0;
    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        putc_serial(buf[--i]);
}

/* ---- Results ------------------------------------------------------------------------------ */

struct oracle_header oracle_results = {
    .magic = ORACLE_MAGIC,
    .version = ORACLE_VERSION,
    .record_size = sizeof(struct oracle_record),
};
static struct oracle_case case_table[256];
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

/* Called by boot.asm for an exception outside a probe: a bug in the guest. */
void oracle_fatal(u64 vector, u64 error, u64 rip, u64 cr2) __attribute__((noreturn));
void oracle_fatal(u64 vector, u64 error, u64 rip, u64 cr2)
{
    oracle_results.state = STATE_FAILED;
    puts_serial("ORACLE: FATAL unexpected exception vector=");
    put_dec(vector);
    puts_serial(" error=");
    put_hex(error);
    puts_serial(" rip=");
    put_hex(rip);
    puts_serial(" cr2=");
    put_hex(cr2);
    putc_serial('\n');
    halt_forever();
}

/* ---- Descriptor tables ----------------------------------------------------------------- */

struct tss64 {
    u32 reserved0;
    u64 rsp[3];
    u64 reserved1;
    u64 ist[7];
    u64 reserved2;
    u16 reserved3;
    u16 iomap_base;
} __attribute__((packed));

static struct tss64 tss __attribute__((aligned(16)));
static u64 idt[512] __attribute__((aligned(16))); /* 256 gates of 16 bytes */

#define TSS_SELECTOR 0x28
#define GATE_INTERRUPT_DPL0 0x8E
#define GATE_INTERRUPT_DPL3 0xEE

static void setup_descriptors(void)
{
    /* TSS: RSP0 is where an exception raised at CPL3 switches the stack to. */
    tss.rsp[0] = (u64)trap_stack_top;
    tss.iomap_base = sizeof(tss); /* no I/O bitmap */
    u64 base = (u64)&tss, limit = sizeof(tss) - 1;
    gdt64[5] = (limit & 0xffff) | ((base & 0xffffff) << 16) | (0x89ull << 40) |
               (((limit >> 16) & 0xf) << 48) | (((base >> 24) & 0xff) << 56);
    gdt64[6] = base >> 32;
    __asm__ volatile("ltr %w0" : : "r"(TSS_SELECTOR));

    for (int v = 0; v < 256; v++) {
        u64 off = trap_stubs[v];
        /* Only the completion gate may be raised by `int` from CPL3. */
        u64 type = v == VEC_COMPLETED ? GATE_INTERRUPT_DPL3 : GATE_INTERRUPT_DPL0;
        idt[2 * v] = (off & 0xffff) | (0x08ull << 16) | (type << 40) | (((off >> 16) & 0xffff) << 48);
        idt[2 * v + 1] = off >> 32;
    }
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) idtr = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

/* ---- Page tables ------------------------------------------------------------------------ */

static u64 pool[POOL_PAGES][512] __attribute__((aligned(4096)));
static int pool_used;

static u64 *alloc_table(void)
{
    if (pool_used == POOL_PAGES)
        fail("page-table pool exhausted");
    u64 *t = pool[pool_used++];
    memset(t, 0, PAGE);
    return t;
}

/* Identity-map the first 16 MiB with 4 KiB pages below `top` slot 0. Supervisor everywhere
 * except the .user pages (and the upper levels, which must allow them). */
static void build_identity(u64 *root, int levels)
{
    u64 *t = root;
    for (int lvl = levels - 1; lvl > LVL_PD; lvl--) {
        u64 *next = alloc_table();
        t[0] = (u64)next | P | RW | US;
        t = next;
    }
    u64 *pd = t;
    for (u64 pa = 0; pa < IDMAP_BYTES; pa += PAGE) {
        u64 pde = (pa >> 21) & 511, pte = (pa >> 12) & 511;
        if (!pte)
            pd[pde] = (u64)alloc_table() | P | RW | US;
        u64 *pt = (u64 *)(pd[pde] & ~0xfffull);
        int user = pa >= (u64)__user_start && pa < (u64)__user_end;
        pt[pte] = pa | P | RW | (user ? US : 0);
    }
}

/* One mapping under test. The engine distinguishes every case below. */
struct case_def {
    const char *name;
    u8 leaf;            /* LVL_PT (4 KiB), LVL_PD (2 MiB) or LVL_PDPT (1 GiB) */
    u8 needs_la57;      /* changes the PML5 entry: only in 5-level runs */
    u8 upper_half;      /* place it in the upper (negative) half of the address space */
    u64 set[NLEVELS];   /* bits ORed into the entry at each level */
    u64 clear[NLEVELS]; /* bits cleared from it */
};

/* U/S=0, R/W=0 and XD=1 at one level of a case whose leaf is at `leaf`. */
#define LEVEL_CASES(lvlname, lvl, leafname, leaf_lvl, la57)                                       \
    {.name = "us0_" lvlname "_" leafname, .leaf = leaf_lvl, .needs_la57 = la57,                   \
     .clear = {[lvl] = US}},                                                                     \
    {.name = "ro_" lvlname "_" leafname, .leaf = leaf_lvl, .needs_la57 = la57,                    \
     .clear = {[lvl] = RW}},                                                                     \
    {.name = "nx_" lvlname "_" leafname, .leaf = leaf_lvl, .needs_la57 = la57, .set = {[lvl] = NX}},

static const struct case_def cases[] = {
    {.name = "user_rw_4k", .leaf = LVL_PT},
    {.name = "user_rw_2m", .leaf = LVL_PD},
    {.name = "user_rw_1g", .leaf = LVL_PDPT},

    /* User/supervisor, read-only and no-execute at each level in turn. */
    LEVEL_CASES("pml5", LVL_PML5, "4k", LVL_PT, 1)
    LEVEL_CASES("pml4", LVL_PML4, "4k", LVL_PT, 0)
    LEVEL_CASES("pdpt", LVL_PDPT, "4k", LVL_PT, 0)
    LEVEL_CASES("pd", LVL_PD, "4k", LVL_PT, 0)
    LEVEL_CASES("pt", LVL_PT, "4k", LVL_PT, 0)
    LEVEL_CASES("pml5", LVL_PML5, "2m", LVL_PD, 1)
    LEVEL_CASES("pml4", LVL_PML4, "2m", LVL_PD, 0)
    LEVEL_CASES("pdpt", LVL_PDPT, "2m", LVL_PD, 0)
    LEVEL_CASES("pd", LVL_PD, "2m", LVL_PD, 0)
    LEVEL_CASES("pml5", LVL_PML5, "1g", LVL_PDPT, 1)
    LEVEL_CASES("pml4", LVL_PML4, "1g", LVL_PDPT, 0)
    LEVEL_CASES("pdpt", LVL_PDPT, "1g", LVL_PDPT, 0)

    /* Restrictions combined. */
    {.name = "sup_ro_pt", .leaf = LVL_PT, .clear = {[LVL_PT] = US | RW}},
    {.name = "sup_ro_nx_pt", .leaf = LVL_PT, .clear = {[LVL_PT] = US | RW}, .set = {[LVL_PT] = NX}},
    {.name = "user_ro_nx_2m", .leaf = LVL_PD, .clear = {[LVL_PD] = RW}, .set = {[LVL_PD] = NX}},
    {.name = "us0_pdpt_ro_pt", .leaf = LVL_PT, .clear = {[LVL_PDPT] = US, [LVL_PT] = RW}},

    /* Not present at each level; a non-present entry's other bits are ignored, reserved ones too. */
    {.name = "np_pml5", .leaf = LVL_PT, .needs_la57 = 1, .clear = {[LVL_PML5] = P}},
    {.name = "np_pml4", .leaf = LVL_PT, .clear = {[LVL_PML4] = P}},
    {.name = "np_pdpt", .leaf = LVL_PT, .clear = {[LVL_PDPT] = P}},
    {.name = "np_pd", .leaf = LVL_PT, .clear = {[LVL_PD] = P}},
    {.name = "np_pt", .leaf = LVL_PT, .clear = {[LVL_PT] = P}},
    {.name = "np_pd_2m", .leaf = LVL_PD, .clear = {[LVL_PD] = P}},
    {.name = "np_pdpt_1g", .leaf = LVL_PDPT, .clear = {[LVL_PDPT] = P}},
    {.name = "np_pt_rsvd45", .leaf = LVL_PT, .clear = {[LVL_PT] = P}, .set = {[LVL_PT] = BIT(45)}},

    /* Software-available bits (9-11, 52-58), bit 52 (Xen's _PAGE_GUEST_KERNEL) and bit 62. */
    {.name = "avl9_11_pt", .leaf = LVL_PT, .set = {[LVL_PT] = AVL_LOW}},
    {.name = "avl9_11_all_4k", .leaf = LVL_PT,
     .set = {AVL_LOW, AVL_LOW, AVL_LOW, AVL_LOW, AVL_LOW}},
    {.name = "avl52_58_pt", .leaf = LVL_PT, .set = {[LVL_PT] = AVL_HIGH}},
    {.name = "avl52_58_all_4k", .leaf = LVL_PT,
     .set = {AVL_HIGH, AVL_HIGH, AVL_HIGH, AVL_HIGH, AVL_HIGH}},
    {.name = "bit52_pt", .leaf = LVL_PT, .set = {[LVL_PT] = BIT(52)}},
    {.name = "bit52_sup_pt", .leaf = LVL_PT, .set = {[LVL_PT] = BIT(52)}, .clear = {[LVL_PT] = US}},
    {.name = "bit62_pt", .leaf = LVL_PT, .set = {[LVL_PT] = BIT(62)}},
    {.name = "bit62_upper_levels_4k", .leaf = LVL_PT,
     .set = {[LVL_PD] = BIT(62), [LVL_PDPT] = BIT(62), [LVL_PML4] = BIT(62), [LVL_PML5] = BIT(62)}},
    {.name = "pkey_bits_nonleaf_4k", .leaf = LVL_PT,
     .set = {[LVL_PD] = PKEY(15), [LVL_PDPT] = PKEY(15), [LVL_PML4] = PKEY(15)}},
    {.name = "avl_2m", .leaf = LVL_PD, .set = {[LVL_PD] = AVL_LOW | AVL_HIGH}},
    {.name = "avl_1g", .leaf = LVL_PDPT, .set = {[LVL_PDPT] = AVL_LOW | AVL_HIGH}},
    {.name = "bit62_2m", .leaf = LVL_PD, .set = {[LVL_PD] = BIT(62)}},

    /* Architectural bits that never cause a fault. */
    {.name = "flags_pt", .leaf = LVL_PT, .set = {[LVL_PT] = PWT | PCD | ACC | DIRTY | PAT_4K | G}},
    {.name = "flags_2m", .leaf = LVL_PD, .set = {[LVL_PD] = PWT | PCD | ACC | DIRTY | G | PAT_LARGE}},
    {.name = "flags_1g", .leaf = LVL_PDPT,
     .set = {[LVL_PDPT] = PWT | PCD | ACC | DIRTY | G | PAT_LARGE}},
    {.name = "g_pml4", .leaf = LVL_PT, .set = {[LVL_PML4] = G}},
    {.name = "g_pdpt_nonleaf", .leaf = LVL_PT, .set = {[LVL_PDPT] = G}},
    {.name = "g_pd_nonleaf", .leaf = LVL_PT, .set = {[LVL_PD] = G}},
    {.name = "g_pml5", .leaf = LVL_PT, .needs_la57 = 1, .set = {[LVL_PML5] = G}},

    /* Protection keys (bits 62:59 of a leaf; apply to user-mode addresses only). */
    {.name = "pkey1_pt", .leaf = LVL_PT, .set = {[LVL_PT] = PKEY(1)}},
    {.name = "pkey2_2m", .leaf = LVL_PD, .set = {[LVL_PD] = PKEY(2)}},
    {.name = "pkey3_1g", .leaf = LVL_PDPT, .set = {[LVL_PDPT] = PKEY(3)}},
    {.name = "pkey15_pt", .leaf = LVL_PT, .set = {[LVL_PT] = PKEY(15)}},
    {.name = "pkey1_sup_pt", .leaf = LVL_PT, .set = {[LVL_PT] = PKEY(1)}, .clear = {[LVL_PT] = US}},
    {.name = "pkey1_us0_pml4", .leaf = LVL_PT, .set = {[LVL_PT] = PKEY(1)}, .clear = {[LVL_PML4] = US}},
    {.name = "pkey1_ro_pt", .leaf = LVL_PT, .set = {[LVL_PT] = PKEY(1)}, .clear = {[LVL_PT] = RW}},
    {.name = "pkey2_nx_pt", .leaf = LVL_PT, .set = {[LVL_PT] = PKEY(2) | NX}},
    {.name = "pkey2_sup_2m", .leaf = LVL_PD, .set = {[LVL_PD] = PKEY(2)}, .clear = {[LVL_PD] = US}},
    {.name = "pkey3_sup_1g", .leaf = LVL_PDPT, .set = {[LVL_PDPT] = PKEY(3)},
     .clear = {[LVL_PDPT] = US}},
    {.name = "pkey1_sup_ro_pt", .leaf = LVL_PT, .set = {[LVL_PT] = PKEY(1)},
     .clear = {[LVL_PT] = US | RW}},

    /* Reserved bits: MAXPHYADDR (40 under -cpu max) up to 51, PS where no page can be mapped,
     * and the low address bits of a large page that must be zero. */
    {.name = "rsvd45_pt", .leaf = LVL_PT, .set = {[LVL_PT] = BIT(45)}},
    {.name = "rsvd40_pt", .leaf = LVL_PT, .set = {[LVL_PT] = BIT(40)}},
    {.name = "rsvd51_pt", .leaf = LVL_PT, .set = {[LVL_PT] = BIT(51)}},
    {.name = "rsvd45_pd_nonleaf", .leaf = LVL_PT, .set = {[LVL_PD] = BIT(45)}},
    {.name = "rsvd45_pdpt_nonleaf", .leaf = LVL_PT, .set = {[LVL_PDPT] = BIT(45)}},
    {.name = "rsvd45_pml4", .leaf = LVL_PT, .set = {[LVL_PML4] = BIT(45)}},
    {.name = "rsvd45_pml5", .leaf = LVL_PT, .needs_la57 = 1, .set = {[LVL_PML5] = BIT(45)}},
    {.name = "rsvd45_2m", .leaf = LVL_PD, .set = {[LVL_PD] = BIT(45)}},
    {.name = "rsvd45_1g", .leaf = LVL_PDPT, .set = {[LVL_PDPT] = BIT(45)}},
    {.name = "rsvd_ps_pml4", .leaf = LVL_PT, .set = {[LVL_PML4] = PS}},
    {.name = "rsvd_ps_pml5", .leaf = LVL_PT, .needs_la57 = 1, .set = {[LVL_PML5] = PS}},
    {.name = "rsvd_align13_2m", .leaf = LVL_PD, .set = {[LVL_PD] = BIT(13)}},
    {.name = "rsvd_align20_2m", .leaf = LVL_PD, .set = {[LVL_PD] = BIT(20)}},
    {.name = "rsvd_align13_1g", .leaf = LVL_PDPT, .set = {[LVL_PDPT] = BIT(13)}},
    {.name = "rsvd_align29_1g", .leaf = LVL_PDPT, .set = {[LVL_PDPT] = BIT(29)}},
    {.name = "rsvd45_sup_pt", .leaf = LVL_PT, .set = {[LVL_PT] = BIT(45)}, .clear = {[LVL_PT] = US}},

    /* The upper half of the address space (sign-extended VAs). */
    {.name = "upper_user_rw_4k", .leaf = LVL_PT, .upper_half = 1},
    {.name = "upper_us0_pml4_4k", .leaf = LVL_PT, .upper_half = 1, .clear = {[LVL_PML4] = US}},
    {.name = "upper_nx_2m", .leaf = LVL_PD, .upper_half = 1, .set = {[LVL_PD] = NX}},
};
#define NCASES ((int)(sizeof(cases) / sizeof(cases[0])))

/* Build the private chain of `c` from slot `slot` of the root; return the VA to probe. */
static u64 build_case(u64 *root, const struct case_def *c, int slot, int levels)
{
    int top = levels == 5 ? LVL_PML5 : LVL_PML4;
    u64 *table = root;
    int index = slot;
    for (int lvl = top;; lvl--) {
        u64 *next = 0, e;
        if (lvl == c->leaf) {
            u64 frame = c->leaf == LVL_PT ? TARGET_PA : c->leaf == LVL_PD ? TARGET_PA & ~(SIZE_2M - 1) : 0;
            e = frame | P | RW | US | (c->leaf != LVL_PT ? PS : 0);
        } else {
            next = alloc_table();
            e = (u64)next | P | RW | US;
        }
        table[index] = (e | c->set[lvl]) & ~c->clear[lvl];
        if (lvl == c->leaf)
            break;
        table = next;
        index = 0;
    }
    int va_bits = levels == 5 ? 57 : 48;
    u64 va = (u64)slot << (va_bits - 9);
    if (va & (1ull << (va_bits - 1)))
        va |= ~0ull << va_bits; /* canonical: sign-extend */
    /* Offset of TARGET_PA inside the large page. */
    if (c->leaf == LVL_PD)
        va += TARGET_PA & (SIZE_2M - 1);
    else if (c->leaf == LVL_PDPT)
        va += TARGET_PA;
    return va;
}

/* ---- CPU configurations ----------------------------------------------------------------- */

struct config {
    u8 wp, smep, smap, pke, nxe;
    u32 pkru;
    u8 pks;   /* CR4.PKS: keys for supervisor-mode addresses, from IA32_PKRS */
    u32 pkrs;
};

/* PKRU: bit 2k is AD (access disable) and bit 2k+1 WD (write disable) of key k. */
#define AD(k) (1u << (2 * (k)))
#define WD(k) (1u << (2 * (k) + 1))

/* Field order: WP, SMEP, SMAP, PKE, NXE, PKRU; the _PKS form adds CR4.PKS=1 and IA32_PKRS. */
#define CFG(wp, smep, smap, pke, nxe, pkru) {wp, smep, smap, pke, nxe, pkru, 0, 0}
#define CFG_PKS(wp, smep, smap, pke, nxe, pkru, pkrs) {wp, smep, smap, pke, nxe, pkru, 1, pkrs}

static const struct config configs[] = {
    /* Every WP x SMEP x SMAP combination, NX on, keys off. */
    CFG(0, 0, 0, 0, 1, 0), CFG(0, 0, 1, 0, 1, 0), CFG(0, 1, 0, 0, 1, 0), CFG(0, 1, 1, 0, 1, 0),
    CFG(1, 0, 0, 0, 1, 0), CFG(1, 0, 1, 0, 1, 0), CFG(1, 1, 0, 0, 1, 0), CFG(1, 1, 1, 0, 1, 0),
    /* EFER.NXE=0: XD becomes a reserved bit. */
    CFG(1, 1, 1, 0, 0, 0), CFG(0, 0, 0, 0, 0, 0),
    /* Protection keys with several PKRU values. */
    CFG(1, 1, 1, 1, 1, 0),
    CFG(1, 1, 1, 1, 1, AD(1) | WD(2)),
    CFG(1, 1, 1, 1, 1, WD(1) | AD(2) | WD(3)),
    CFG(0, 0, 0, 1, 1, WD(1) | AD(2) | WD(3)),
    CFG(1, 0, 1, 1, 1, AD(0) | WD(8) | AD(3) | AD(15)),
    CFG(1, 1, 0, 1, 1, 0x55555554u), /* AD for every key but 0 */
    CFG(1, 0, 0, 1, 1, 0xAAAAAAAAu), /* WD for every key */
    CFG(0, 1, 1, 1, 1, 0xAAAAAAAAu),
    CFG(1, 1, 1, 1, 0, AD(1) | WD(2)),
    /* Supervisor protection keys (run only if the CPU has PKS), with and without user keys. */
    CFG_PKS(1, 1, 1, 0, 1, 0, AD(1) | WD(2)),
    CFG_PKS(0, 1, 1, 0, 1, 0, WD(1) | AD(2) | WD(3)),
    CFG_PKS(1, 0, 0, 1, 1, AD(1), WD(1) | AD(3)),
    CFG_PKS(1, 1, 1, 1, 1, WD(1), 0x55555554u),
};
#define NCONFIGS ((int)(sizeof(configs) / sizeof(configs[0])))

/* The configuration left loaded when the guest halts (what gdb then reads). */
static const struct config final_config = CFG(1, 1, 1, 1, 1, AD(1) | WD(2));

static void apply_config(const struct config *cfg)
{
    u64 cr0 = read_cr0() & ~CR0_WP;
    write_cr0(cr0 | (cfg->wp ? CR0_WP : 0));
    u64 cr4 = read_cr4() & ~(CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_PKS);
    cr4 |= (cfg->smep ? CR4_SMEP : 0) | (cfg->smap ? CR4_SMAP : 0) | (cfg->pke ? CR4_PKE : 0) |
           (cfg->pks ? CR4_PKS : 0);
    write_cr4(cr4);
    u64 efer = rdmsr(MSR_EFER) & ~EFER_NXE;
    wrmsr(MSR_EFER, efer | (cfg->nxe ? EFER_NXE : 0));
    if (cfg->pke)
        wrpkru(cfg->pkru); /* WRPKRU raises #UD while CR4.PKE=0 */
    if (cfg->pks)
        wrmsr(MSR_PKRS, cfg->pkrs);
    write_cr3(read_cr3()); /* flush non-global translations */
}

/* ---- Main ------------------------------------------------------------------------------- */

static void require_features(u32 *maxphyaddr)
{
    u32 a, b, c, d;
    cpuid(0, 0, &a, &b, &c, &d);
    u32 *vendor = (u32 *)oracle_results.vendor;
    vendor[0] = b;
    vendor[1] = d;
    vendor[2] = c;
    cpuid(7, 0, &a, &b, &c, &d);
    oracle_results.has_pks = !!(c & (1u << 31));
    if (!(b & (1u << 7)))
        fail("the CPU lacks SMEP (use -cpu max)");
    if (!(b & (1u << 20)))
        fail("the CPU lacks SMAP (use -cpu max)");
    if (!(c & (1u << 3)))
        fail("the CPU lacks PKU (use -cpu max)");
    cpuid(0x80000001, 0, &a, &b, &c, &d);
    if (!(d & (1u << 26)))
        fail("the CPU lacks 1 GiB pages (use -cpu max)");
    cpuid(0x80000008, 0, &a, &b, &c, &d);
    *maxphyaddr = a & 0xff;
}

void oracle_main(u32 la57, u32 multiboot_info)
{
    (void)multiboot_info;
    int levels = la57 ? 5 : 4;
    puts_serial("ORACLE: start levels=");
    put_dec(levels);
    putc_serial('\n');
    oracle_results.state = STATE_RUNNING;
    oracle_results.levels = levels;
    if ((u64)__image_end > TARGET_PA)
        fail("the image overlaps the target page");
    require_features(&oracle_results.maxphyaddr);
    setup_descriptors();

    u64 *root = alloc_table();
    build_identity(root, levels);
    int n = 0, lower_slot = 1, upper_slot = 256;
    for (int i = 0; i < NCASES; i++) {
        const struct case_def *c = &cases[i];
        if (c->needs_la57 && levels != 5)
            continue;
        int slot = c->upper_half ? upper_slot++ : lower_slot++;
        struct oracle_case *out = &case_table[n];
        out->va = build_case(root, c, slot, levels);
        out->id = (u32)n;
        out->leaf_level = c->leaf;
        for (int k = 0; k < (int)sizeof(out->name) - 1 && c->name[k]; k++)
            out->name[k] = c->name[k];
        n++;
    }
    /* The target page: `int 0x81` at offset 0 ends a successful execute probe. */
    u8 *target = (u8 *)TARGET_PA;
    target[0] = 0xcd;
    target[1] = VEC_COMPLETED;
    write_cr3((u64)root);

    oracle_results.n_cases = (u32)n;
    oracle_results.cases_pa = (u64)case_table;
    oracle_results.records_pa = (u64)records;
    oracle_results.cr3 = (u64)root;

    u32 nrec = 0, nconfigs = 0;
    for (int k = 0; k < NCONFIGS; k++) {
        const struct config *cfg = &configs[k];
        if (cfg->pks && !oracle_results.has_pks)
            continue;
        nconfigs++;
        apply_config(cfg);
        u64 cr0 = read_cr0(), cr4 = read_cr4(), efer = rdmsr(MSR_EFER);
        for (int i = 0; i < n; i++) {
            /* CPL0 with AC=0 and AC=1, then CPL3 (AC plays no part in user accesses). */
            for (int mode = 0; mode < 3; mode++) {
                u64 cpl = mode == 2 ? 3 : 0, ac = mode == 1;
                for (u64 kind = KIND_READ; kind <= KIND_EXEC; kind++) {
                    if (nrec == MAX_RECORDS)
                        fail("results table full");
                    u64 va = case_table[i].va;
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
                    r->pkrs = cfg->pkrs;
                    r->error_code = (u32)trap_error;
                    r->cr2 = r->vector == 14 ? trap_cr2 : 0;
                    r->rip = r->vector == VEC_COMPLETED ? 0 : trap_rip;
                }
            }
        }
        oracle_results.n_records = nrec;
    }
    oracle_results.n_configs = nconfigs;

    apply_config(&final_config);
    oracle_results.final_cr0 = read_cr0();
    oracle_results.final_cr4 = read_cr4();
    oracle_results.final_efer = rdmsr(MSR_EFER);
    oracle_results.final_pkru = final_config.pkru;
    oracle_results.state = STATE_DONE;
    puts_serial("ORACLE: done cases=");
    put_dec((u64)n);
    puts_serial(" configs=");
    put_dec(nconfigs);
    puts_serial(" records=");
    put_dec(nrec);
    putc_serial('\n');
    halt_forever();
}
