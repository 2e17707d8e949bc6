/* domU marker for the crashed-host target: one page of tagged content, its VA and PFN, a spin.
 *
 * Like tests/targets/dumpcore/marker.c, but the page names the domain (argv[1], the tag the domU
 * got on its kernel command line), so that two domUs' pages differ and a walk that lands in the
 * wrong domain cannot pass. Freestanding and static (no libc). It prints one line on stdout:
 *
 *   XENPTE-XENCRASH-MARKER tag=<tag> va=0x... pfn=0x... head=<first 32 bytes in hex>
 *
 * Page content (must match marker_page() in tests/targets/xen_crash.py):
 *   "XENPTE-XENCRASH-MARKER-v1 <tag>\n", then byte i = (i * 7 + 13 + 31 * s) & 0xff for the rest,
 *   where s is the sum of the tag's bytes.
 * pfn is from /proc/self/pagemap (bits 0-54 when bit 63 is set): the guest's pseudo-physical frame.
 * Then it spins in user mode for ever, so a vCPU stopped or paused runs this address space.
 */
#define PAGE 4096
static unsigned char page[PAGE] __attribute__((aligned(PAGE)));
static const char magic[] = "XENPTE-XENCRASH-MARKER-v1 ";

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

enum { SYS_write = 1, SYS_open = 2, SYS_pread64 = 17 };

static char out[320];
static int pos;

static void put(const char *s) { while (*s && pos < (int)sizeof(out) - 1) out[pos++] = *s++; }

static void hex(unsigned long v, int digits)
{
    for (int i = digits - 1; i >= 0; i--)
        out[pos++] = "0123456789abcdef"[(v >> (4 * i)) & 15];
}

/* The kernel enters with argc at (%rsp), argv[] above it: hand %rsp to cmain. */
__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall cmain\n\thlt\n");

void __attribute__((used, noreturn)) cmain(long *sp)
{
    const char *tag = sp[0] > 1 ? (const char *)sp[2] : "none";
    unsigned long va = (unsigned long)page, entry = 0;
    unsigned int s = 0;
    int i = 0, j;
    for (j = 0; magic[j]; j++)
        page[i++] = magic[j];
    for (j = 0; tag[j] && j < 64; j++) {
        page[i++] = tag[j];
        s += (unsigned char)tag[j];
    }
    page[i++] = '\n';
    for (; i < PAGE; i++)          /* bytes no other page is likely to hold */
        page[i] = (unsigned char)(i * 7 + 13 + 31 * s);
    long fd = sys3(SYS_open, (long)"/proc/self/pagemap", 0, 0);
    if (fd < 0 || sys4(SYS_pread64, fd, (long)&entry, 8, (long)(va / PAGE * 8)) != 8)
        entry = 0;
    put("XENPTE-XENCRASH-MARKER tag="); put(tag);
    put(" va=0x"); hex(va, 16);
    put(" pfn=0x"); hex(entry >> 63 ? entry & ((1UL << 55) - 1) : 0, 16);
    put(" head=");
    for (i = 0; i < 32; i++) hex(page[i], 2);
    put("\n");
    sys3(SYS_write, 1, (long)out, pos);
    for (;;)                        /* user-mode spin: keeps this mm on the vCPU */
        __asm__ volatile ("" ::: "memory");
}
