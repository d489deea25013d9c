/* Shared by every wasmtop probe; prepended to each probe's text by probes/runtime.py.
 *
 * Compiled in by the loader (cflags): WASMTOP_NR_COUNTERS, CTR_RB_ATTEMPTS, CTR_RB_LOST,
 * CTR_MAP_FULL and the probe's own CTR_* indices, so Python is the one source of truth
 * for which counter lives where; EEXIST (the kernel headers' errno values are not included);
 * EXIT_GROUP_DEAD where a probe attaches sched_process_exit (its format has group_dead).
 */
#include <uapi/linux/ptrace.h>

/* Keeps the compiler from moving memory accesses across it (the kernel's, where its headers
 * define it). */
#ifndef barrier
#define barrier() asm volatile("" ::: "memory")
#endif

/* At sched_process_exit (current: the exiting thread, id its bpf_get_current_pid_tgid()): 1
 * when it is the last thread of its process. The tracepoint says so on Linux 6.9+
 * (EXIT_GROUP_DEAD); before that, the leader's exit is taken for it. */
#if EXIT_GROUP_DEAD
#define LAST_OF_GROUP(args, id) ((args)->group_dead)
#else
#define LAST_OF_GROUP(args, id) ((u32)(id) == (u32)((id) >> 32))
#endif

/* Per-CPU counters: ring-buffer attempts and failed reservations, full maps. Counting in the
 * kernel keeps `lost` true even when userspace is slow to drain. */
BPF_PERCPU_ARRAY(counters, u64, WASMTOP_NR_COUNTERS);

static __always_inline void count_event(u32 idx)
{
    u64 *c = counters.lookup(&idx);
    if (c)
        (*c)++;
}

/* Add n to a shared counter slot from lookup_or_try_init(); a full map (NULL slot) is counted,
 * never silent. (BCC allows no map calls inside macros, hence a slot argument.) */
static __always_inline void add_or_count_full(u64 *slot, u64 n)
{
    if (slot)
        __sync_fetch_and_add(slot, n);
    else
        count_event(CTR_MAP_FULL);
}

/* Log-linear bucket: 8 sub-buckets per power of two, so a bucket is at most 1/8 of its lower
 * bound wide (bcc's runqlat uses plain log2 buckets: up to 100 % error). Values below 8 get a
 * bucket each. Decoded by wasmtop.collector.quantiles.bucket_bounds. */
static __always_inline u32 floor_log2(u64 v)
{
    /* Not bcc's bpf_log2l: that one returns floor(log2(v)) + 1. */
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r;
}

static __always_inline u32 loglinear_bucket(u64 v)
{
    if (v < 8)
        return v;
    u32 lg = floor_log2(v);
    return (lg - 2) * 8 + ((v >> (lg - 3)) & 7);
}
