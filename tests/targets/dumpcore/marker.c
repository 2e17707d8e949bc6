/* domU marker: fill one page-aligned .bss page with a known pattern, report where it lives, spin.
 *
 * Freestanding (no libc: the CI machine has gcc but maybe no static libc) and static, so the
 * domU initramfs needs nothing but this file and busybox. It prints one line on stdout:
 *
 *   XENPTE-MARKER va=0x... pfn=0x... head=<first 32 bytes in hex>
 *
 * pfn comes from /proc/self/pagemap (bits 0-54, bit 63 = present): the guest's pseudo-physical
 * frame, which the dump's .xen_p2m must list. Then it spins in user mode for ever, so that when
 * the domain is paused the vCPU context is (almost surely) this process: its CR3 then maps va.
 * The pattern must match PATTERN in tests/targets/xl_dumpcore.py.
 */
#define PAGE 4096
/* .bss, so the page is anonymous memory that _start writes (not a page-cache copy of the file). */
static unsigned char page[PAGE] __attribute__((aligned(PAGE)));
static const char magic[] = "XENPTE-DUMPCORE-MARKER-PAGE-v1\n";

static long sys3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile ("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c)
                      : "rcx", "r11", "memory");
    return ret;
}

static long sys4(long nr, long a, long b, long c, long d)
{
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile ("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
                      : "rcx", "r11", "memory");
    return ret;
}

enum { SYS_write = 1, SYS_open = 2, SYS_pread64 = 17, SYS_exit = 60 };

static char out[256];
static int pos;

static void put(const char *s) { while (*s) out[pos++] = *s++; }

static void hex(unsigned long v, int digits)
{
    for (int i = digits - 1; i >= 0; i--)
        out[pos++] = "0123456789abcdef"[(v >> (4 * i)) & 15];
}

void _start(void)
{
    unsigned long va = (unsigned long)page, entry = 0;
    int i;
    for (i = 0; magic[i]; i++)
        page[i] = magic[i];
    for (; i < PAGE; i++)          /* bytes no other page is likely to hold */
        page[i] = (unsigned char)(i * 7 + 13);
    long fd = sys3(SYS_open, (long)"/proc/self/pagemap", 0, 0);
    if (fd < 0 || sys4(SYS_pread64, fd, (long)&entry, 8, (long)(va / PAGE * 8)) != 8)
        entry = 0;
    put("XENPTE-MARKER va=0x"); hex(va, 16);
    put(" pfn=0x"); hex(entry >> 63 ? entry & ((1UL << 55) - 1) : 0, 16);
    put(" head=");
    for (i = 0; i < 32; i++) hex(page[i], 2);
    put("\n");
    sys3(SYS_write, 1, (long)out, pos);
    for (;;)                        /* user-mode spin: keeps this mm on the vCPU */
        __asm__ volatile ("" ::: "memory");
}
