/* wasmtop scheduler probe: migrations, context switches, on-CPU time and preemption delay.
 *
 * Uses tracepoint arguments only (never kernel struct layouts: the headers BCC compiles against
 * may be of another kernel version).
 *
 * Compiled in by probes/sched.py:
 *   cflags  MAX_THREADS, HIST_ENTRIES, RINGBUF_PAGES, THRESHOLD_NS,
 *           PREV_STATE_MASK, CTR_*
 *   text    the FILTER_TGID and FILTER_CGROUP placeholders: expressions true for a task to skip,
 *           `0` when the filter is off (the bcc tools' FILTER_PID idiom).
 *
 * struct thread_stats, struct trace_ctx and trace_ctx_of() (the trace-context map, through the
 * slot userspace fills; empty when it is off) come from shared.bpf.h. The trace-context probe
 * reads `threads` through a slot of its own that userspace fills with this map.
 */

BPF_HASH(threads, u32, struct thread_stats, MAX_THREADS);

/* On-CPU time per thread; per-CPU values, so each CPU adds to its own slot without atomics
 * and the slot index is the CPU. */
BPF_PERCPU_HASH(cpu_time_ns, u32, u64, MAX_THREADS);

/* Entries shared by the threads of a process (histogram, matrix) are added to with atomics. */
struct migration_key {
    u32 tgid;
    u16 from_cpu;
    u16 to_cpu;
};
BPF_HASH(migration_matrix, struct migration_key, u64, MAX_THREADS);

struct hist_key {
    u32 tgid;
    u32 bucket;
};
BPF_HASH(preempt_delay_hist, struct hist_key, u64, HIST_ENTRIES);

/* Window maximum per process: written with update_elem (under the bucket lock) so that
 * userspace's lookup-and-delete each tick never loses a value. */
BPF_HASH(preempt_delay_max_ns, u32, u64, MAX_THREADS);

struct preempted {
    u64 ts;
    u32 tgid;
    u32 cpu;
    u32 preemptor_tid;
    u32 preemptor_tgid;
    char preemptor_comm[16];
};
BPF_HASH(preempted_at, u32, struct preempted, MAX_THREADS);

struct running {
    u32 tid;
    u32 _pad;
    u64 since;
};
BPF_PERCPU_ARRAY(running_since, struct running, 1);

struct preempt_event {
    u64 ts_ns;
    u64 delay_ns;
    u32 pid;
    u32 tid;
    u32 cpu;
    u32 preemptor_pid;
    u32 preemptor_tid;
    u32 flags;                 /* PREEMPT_F_TRACE_CTX: trace_id/span_id hold the thread's context */
    char comm[16];
    char preemptor_comm[16];
    u8 trace_id[16];
    u8 span_id[8];
    u64 thread_preemptions;    /* the thread's completed preemptions, this one included: two
                                * events of a thread with consecutive values had no shorter
                                * preemption between them (alert rules' "N in a row") */
};
#define PREEMPT_F_TRACE_CTX 1
BPF_RINGBUF_OUTPUT(preempt_events, RINGBUF_PAGES);

static __always_inline void emit_preemption(u64 now, u32 tid, struct preempted *w, u64 delay,
                                            struct thread_stats *st)
{
    count_event(CTR_RB_ATTEMPTS);
    struct preempt_event *ev = preempt_events.ringbuf_reserve(sizeof(*ev));
    if (!ev) {
        count_event(CTR_RB_LOST);
        return;
    }
    ev->ts_ns = now;
    ev->delay_ns = delay;
    ev->pid = w->tgid;
    ev->tid = tid;
    ev->cpu = w->cpu;
    ev->preemptor_pid = w->preemptor_tgid;
    ev->preemptor_tid = w->preemptor_tid;
    ev->thread_preemptions = st->preemptions;
    __builtin_memcpy(ev->comm, st->comm, sizeof(ev->comm));
    /* The request the thread was working on when it lost the CPU: it has not run since, so the
     * runtime cannot have changed the entry in between. */
    struct trace_ctx *ctx = trace_ctx_of(tid);
    if (ctx) {
        ev->flags = PREEMPT_F_TRACE_CTX;
        __builtin_memcpy(ev->trace_id, ctx->trace_id, sizeof(ev->trace_id));
        __builtin_memcpy(ev->span_id, ctx->span_id, sizeof(ev->span_id));
    } else {
        ev->flags = 0;
        __builtin_memset(ev->trace_id, 0, sizeof(ev->trace_id));
        __builtin_memset(ev->span_id, 0, sizeof(ev->span_id));
    }
    __builtin_memcpy(ev->preemptor_comm, w->preemptor_comm, sizeof(ev->preemptor_comm));
    /* No wakeup: userspace drains on a timer, so a busy CPU never pays for one per event. */
    preempt_events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

static __always_inline void account_cpu_time(u32 tid, u64 ns)
{
    u64 init = 0;
    u64 *slot = cpu_time_ns.lookup_or_try_init(&tid, &init);
    if (slot)
        *slot += ns;
    else
        count_event(CTR_MAP_FULL);
}

static __always_inline void finish_preemption(u32 tid, u64 now)
{
    struct preempted *w = preempted_at.lookup(&tid);
    if (!w)
        return;
    struct preempted copy = *w;
    preempted_at.delete(&tid);
    if (now < copy.ts)
        return;
    u64 delay = now - copy.ts;

    struct thread_stats *st = threads.lookup(&tid);
    if (!st)
        return;
    st->preempt_delay_ns += delay;
    st->preemptions += 1;

    struct hist_key hk = {.tgid = copy.tgid, .bucket = loglinear_bucket(delay)};
    u64 zero = 0;
    add_or_count_full(preempt_delay_hist.lookup_or_try_init(&hk, &zero), 1);

    u64 *max = preempt_delay_max_ns.lookup(&copy.tgid);
    if (!max || *max < delay) {
        if (preempt_delay_max_ns.update(&copy.tgid, &delay))
            count_event(CTR_MAP_FULL);
    }

    if (delay >= THRESHOLD_NS) {
        st->over_threshold += 1;
        emit_preemption(now, tid, &copy, delay, st);
    }
}

static __always_inline struct thread_stats *thread_entry(u32 tid, u32 tgid, const char *comm)
{
    struct thread_stats *st = threads.lookup(&tid);
    if (st) {
        if (st->tgid != tgid) /* tid reused by another process */
            st->tgid = tgid;
        return st;
    }
    struct thread_stats fresh = {.tgid = tgid};
    bpf_probe_read_kernel(&fresh.comm, sizeof(fresh.comm), comm);
    if (threads.update(&tid, &fresh)) {
        count_event(CTR_MAP_FULL);
        return 0;
    }
    return threads.lookup(&tid);
}

int wasmtop_sched_switch(struct tracepoint__sched__sched_switch *args)
{
    u64 now = bpf_ktime_get_ns();
    u32 prev = args->prev_pid;
    u32 next = args->next_pid;

    /* Who ran on this CPU since when: read for prev's on-CPU time, then handed to next. */
    u32 zero_idx = 0;
    u64 ran_since = 0;
    struct running *r = running_since.lookup(&zero_idx);
    if (r) {
        if (r->tid == prev)
            ran_since = r->since;
        r->tid = next;
        r->since = now;
    }

    u32 tgid = bpf_get_current_pid_tgid() >> 32; /* current is still prev here */
    if (prev != 0 && !(@@FILTER_TGID@@) && !(@@FILTER_CGROUP@@)) {
        struct thread_stats *st = thread_entry(prev, tgid, args->prev_comm);
        if (st) {
            st->switches += 1;
            if (ran_since && now > ran_since)
                account_cpu_time(prev, now - ran_since);
            /* Still runnable when switched out: it did not give up the CPU, it lost it. */
            if ((args->prev_state & PREV_STATE_MASK) == 0) {
                st->involuntary += 1;
                bpf_probe_read_kernel(&st->comm, sizeof(st->comm), args->prev_comm);
                struct preempted w = {
                    .ts = now, .tgid = tgid, .cpu = bpf_get_smp_processor_id(),
                    .preemptor_tid = next};
                struct thread_stats *nst = threads.lookup(&next);
                w.preemptor_tgid = nst ? nst->tgid : next;
                bpf_probe_read_kernel(&w.preemptor_comm, sizeof(w.preemptor_comm),
                                      args->next_comm);
                if (preempted_at.update(&prev, &w))
                    count_event(CTR_MAP_FULL);
            }
        }
    }

    if (next != 0)
        finish_preemption(next, now);
    return 0;
}

int wasmtop_sched_migrate(struct tracepoint__sched__sched_migrate_task *args)
{
    u32 tid = args->pid; /* the migrated task, not the current one */
    struct thread_stats *st = threads.lookup(&tid);
    if (!st) {
        /* Not seen running yet, or filtered out: counted, so the matrix never hides it. */
        count_event(CTR_MIGRATIONS_UNTRACKED);
        return 0;
    }
    st->migrations += 1;
    struct migration_key key = {
        .tgid = st->tgid, .from_cpu = args->orig_cpu, .to_cpu = args->dest_cpu};
    u64 zero = 0;
    add_or_count_full(migration_matrix.lookup_or_try_init(&key, &zero), 1);
    return 0;
}
