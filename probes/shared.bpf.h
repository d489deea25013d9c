/* Structures of maps shared between probes: the scheduler probe's per-thread statistics (read by
 * the trace-context probe at each captured request) and the pinned trace-context map (written by
 * runtimes and sidecars, read by both), with the slot through which both reach the latter.
 * Prepended by probes/probeset.py to the probes that list it in their `headers`, so both sides
 * compile the same layout. */

/* thread_stats.wait_kind */
#define WAIT_PREEMPTED 1
#define WAIT_WOKEN 2

/* Each field of a thread's stats has one writer at a time: switch-out, switch-in, wake-up and
 * migration of a thread are serialised by the scheduler (under the run-queue lock of the queue
 * it leaves, waits on or joins), so plain increments and stores lose nothing. */
struct thread_stats {
    /* What a wake-up and the wait it starts touch come first, so that they share cache lines.
     * A switch also touches the window maxima and pending amounts at the end; moving them up
     * next to these was measured and gained nothing (docs/benchmarks.md, the edge service). */
    u32 tgid;
    u32 wait_kind;             /* the wait in progress: WAIT_PREEMPTED or WAIT_WOKEN */
    u64 switches;              /* times switched out */
    u64 wait_since;            /* runnable and not running since (0: not waiting) */
    u64 wait_attributed_until; /* the wait before this is already split among culprits */
    u32 wait_cpu;              /* the run queue it waits on */
    u32 wait_holder_tid;       /* wake-ups: on the target CPU when it was woken */
    u32 wait_other_tid;        /* the preemptor, or the waker */
    u32 wait_other_tgid;
    u64 wakeups;               /* completed wake-up waits: its wake-up sequence number */
    u64 wakeup_delay_ns;       /* cumulative: sched_wakeup(_new) -> next switch-in */
    u64 last_wakeup_ns;        /* when the latest completed wake-up woke it */
    u64 last_wakeup_delay_ns;  /* how long that wake-up waited to run */
    u64 idle_wait_ns;          /* of its waits, the part its CPU spent in the idle task */
    u64 involuntary;           /* switched out while still runnable */
    u64 preempt_delay_ns;      /* cumulative: involuntary switch-out -> next switch-in */
    u64 preemptions;           /* completed preemption delays */
    u64 migrations;            /* sched_migrate_task of this thread */
    u64 over_threshold;        /* preemption delays >= THRESHOLD_NS */
    u64 wakeups_over_threshold;
    u64 wakeup_charged;        /* written by the trace-context probe only (in the thread's own
                                * syscalls): the latest wake-up number charged to a request */
    u32 note_sleep;            /* set by the trace-context probe on threads of traced processes
                                * (and on their process's leader), inherited by new threads of
                                * either: record sleep_nr and sleep_fd. 2: the leader was found
                                * marked too (the probe stops looking it up) */
    u32 sleep_nr;              /* 1 + the syscall it last went to sleep in (0: none noted since
                                * the trace-context probe last looked); written at switch-out */
    u64 sleep_fd;              /* that syscall's first argument (the fd, for reads) */
    char comm[16];
    char wait_other_comm[16];  /* the preemptor's (a waker's is looked up when it is sent) */
    /* The process's window maximum of each kind of wait ([0] preemption, [1] wake-up) as this
     * thread last saw it in the map, and the window (max_window) it saw it in: a wait no
     * longer than that, in that window, needs no look at the map (sched.bpf.c add_hist). */
    u64 max_seen[2];
    u32 max_window[2];
    /* On-CPU time not yet in cpu_time_ns: run_ns on CPU run_cpu - 1 (0: none), added to the
     * map only when the thread is switched out on another CPU (sched.bpf.c account_cpu_time) */
    u32 run_cpu;
    /* Wait behind one process not yet in waited_behind: behind_ns behind behind_tgid (0: none),
     * added to the map only when a wait is behind another process (sched.bpf.c add_run) */
    u32 behind_tgid;
    u64 run_ns;
    u64 behind_ns;
    /* Each owner again, after its amount: userspace copies an entry while the probe may be
     * changing it, upwards or downwards (the kernel's memcpy chooses). The probe empties the
     * amount, names the new owner in both places, then adds; a copy whose two owners differ
     * is torn and its amount is left for the next reading, and one whose owners agree pairs
     * them with that owner's amount (or with an emptied one). */
    u32 run_cpu2;
    u32 behind_tgid2;
};

/* /sys/fs/bpf/wasmtop/trace_ctx: thread id -> the request it is working on (docs/tracing.md). */
struct trace_ctx {
    u8 trace_id[16];
    u8 span_id[8];
};

/* The trace-context map belongs to no module: userspace makes it (or opens the one another
 * wasmtop pinned) and puts it in slot 0 of trace_ctx_slot, a map-in-map, so both probes read the
 * same map without BCC opening a pin (it opens pins by id, which needs CAP_SYS_ADMIN).
 * trace_ctx_layout only tells the kernel which maps the slot takes; nothing uses its entry.
 * An empty slot (trace-context map off) finds no context. */
BPF_HASH(trace_ctx_layout, u32, struct trace_ctx, 1);
BPF_ARRAY_OF_MAPS(trace_ctx_slot, "trace_ctx_layout", 1);

static __always_inline struct trace_ctx *trace_ctx_of(u32 tid)
{
    int zero = 0;
    void *map = trace_ctx_slot.lookup(&zero);
    return map ? bpf_map_lookup_elem(map, &tid) : NULL;
}

/* The calling thread's user registers as saved at syscall entry (x86-64 struct pt_regs): which
 * syscall is in progress and its arguments. Reached through bpf_task_pt_regs (Linux 5.15+, BTF),
 * so a tracepoint inside a syscall sees that syscall's arguments without a syscall tracepoint.
 * The helper hands back a BTF pointer, so its fields are plain loads that the verifier checks
 * against the kernel's own struct pt_regs (no bpf_probe_read_kernel call: 40 ns less a read on
 * a host whose returns are costly). Only compiled where USER_REGS is 1 (x86-64 with BTF). */
#if USER_REGS
struct user_regs {
    u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di, orig_ax;
};

static __always_inline const struct user_regs *saved_regs(void)
{
    return (const struct user_regs *)bpf_task_pt_regs((void *)bpf_get_current_task_btf());
}

/* The syscall in progress (orig_ax) and its first three arguments (di, si, dx) into r; the
 * other fields are left as they are. */
static __always_inline void user_regs(struct user_regs *r)
{
    const struct user_regs *saved = saved_regs();
    r->orig_ax = saved->orig_ax;
    r->di = saved->di;
    r->si = saved->si;
    r->dx = saved->dx;
}

/* The syscall the calling thread is in: 1 + its number, and its first argument. */
static __always_inline u32 user_syscall(u64 *arg0)
{
    const struct user_regs *saved = saved_regs();
    *arg0 = saved->di;
    return (u32)saved->orig_ax + 1;
}
#endif
