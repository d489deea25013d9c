/* wasmtop scheduler probe: migrations, context switches, on-CPU time, and run-queue delay in
 * its two kinds: preemption delay (switched out while runnable -> next switch-in) and wake-up
 * delay (sched_wakeup / sched_wakeup_new -> next switch-in), each split by the tasks that held
 * the CPU meanwhile.
 *
 * Uses tracepoint arguments only (never kernel struct layouts: the headers BCC compiles against
 * may be of another kernel version).
 *
 * Compiled in by probes/sched.py:
 *   cflags  MAX_THREADS, HIST_ENTRIES, CPU_TIME_ENTRIES, BEHIND_ENTRIES, MAX_CPUS,
 *           HISTORY_LEN (a power of two), RINGBUF_PAGES, THRESHOLD_NS, PREV_STATE_MASK, CTR_*
 *   text    the FILTER_TGID and FILTER_CGROUP placeholders: expressions true for a task to skip,
 *           `0` when the filter is off (the bcc tools' FILTER_PID idiom).
 *
 * struct thread_stats, struct trace_ctx and trace_ctx_of() (the trace-context map, through the
 * slot userspace fills; empty when it is off) come from shared.bpf.h. The trace-context probe
 * reads `threads` through a slot of its own that userspace fills with this map.
 */

BPF_HASH(threads, u32, struct thread_stats, MAX_THREADS);

/* On-CPU time per (thread, CPU), but for the thread's latest run of slices on one CPU, which
 * its own entry holds (thread_stats.run_ns): most switches add to that and touch no map.
 * Written only at the thread's own switch-outs, so plain adds. */
struct cpu_key {
    u32 tid;
    u32 cpu;
};
BPF_HASH(cpu_time_ns, struct cpu_key, u64, CPU_TIME_ENTRIES);

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
BPF_HASH(wakeup_delay_hist, struct hist_key, u64, HIST_ENTRIES);

/* Window maximum per process: written with update_elem (under the bucket lock) so that
 * userspace's lookup-and-delete each tick never loses a value. Per-CPU values: each CPU's is
 * written by that CPU alone (tracing programs do not nest on a CPU), so the look, the compare
 * and the write are never raced by another thread of the process; userspace takes the
 * largest. */
BPF_PERCPU_HASH(preempt_delay_max_ns, u32, u64, MAX_THREADS);
BPF_PERCPU_HASH(wakeup_delay_max_ns, u32, u64, MAX_THREADS);
/* The window's number: userspace adds one after it has taken the window's maxima (and starts
 * it at 1, so that a fresh entry's max_window of 0 matches none). */
BPF_ARRAY(max_window, u32, 1);

/* Who ran on each CPU lately: a ring of the last HISTORY_LEN slices, each running from its
 * `since` to the next one's (the newest to now). Written only by the CPU itself in
 * sched_switch, under its run-queue lock; read by that CPU, and by sched_migrate_task of a
 * queued task, which also holds that lock. A slice's tgid is filled when it ends (the task is
 * `current` then); 0 with a non-zero tid means not known yet. */
struct slice {
    u64 since;
    u32 tid;
    u32 tgid;
};
struct cpu_history {
    u32 head;
    u32 _pad;
    struct slice s[HISTORY_LEN];
};
BPF_ARRAY(cpu_history, struct cpu_history, MAX_CPUS);
#define HISTORY_MASK (HISTORY_LEN - 1)

/* Run-queue wait per (waiting process, process that held the CPU), cumulative ns. Wait behind
 * the idle task is kept per thread instead (thread_stats.idle_wait_ns); CULPRIT_HISTORY_SHORT
 * is wait older than the CPU's history reached. Wait that finds the map full is counted in
 * CTR_MAP_FULL; userspace takes it, with anything else not split, as the difference between a
 * process's total wait and what was split. */
struct behind_key {
    u32 victim;
    u32 culprit;
};
BPF_HASH(waited_behind, struct behind_key, u64, BEHIND_ENTRIES);
#define CULPRIT_HISTORY_SHORT 0xffffffff

/* A thread's wait in progress lives in its thread_stats entry (wait_* fields, shared.bpf.h):
 * one lookup serves the counters and the wait. */
/* WAIT_PREEMPTED, WAIT_WOKEN: shared.bpf.h (the trace-context probe reads them too) */

struct preempt_event {
    u64 ts_ns;
    u64 delay_ns;
    u32 pid;
    u32 tid;
    u32 cpu;
    u32 preemptor_pid;
    u32 preemptor_tid;
    u32 flags;                 /* F_TRACE_CTX: trace_id/span_id hold the thread's context */
    char comm[16];
    char preemptor_comm[16];
    u8 trace_id[16];
    u8 span_id[8];
    u64 thread_preemptions;    /* the thread's completed preemptions, this one included: two
                                * events of a thread with consecutive values had no shorter
                                * preemption between them (alert rules' "N in a row") */
};
BPF_RINGBUF_OUTPUT(preempt_events, RINGBUF_PAGES);

struct wakeup_event {
    u64 ts_ns;                 /* when it finally ran */
    u64 delay_ns;
    u64 thread_wakeups;        /* the thread's completed wake-ups, this one included */
    u32 pid;
    u32 tid;
    u32 cpu;                   /* where it ran */
    u32 waker_pid;             /* current at sched_wakeup (for wake-ups from interrupts: the
                                * interrupted task; 0 when queued to an idle CPU) */
    u32 waker_tid;
    u32 holder_pid;            /* on the target CPU when it was woken */
    u32 holder_tid;
    u32 replaced_pid;          /* the task it replaced on the CPU */
    u32 replaced_tid;
    u32 flags;
    char comm[16];
    char waker_comm[16];
    char replaced_comm[16];
    u8 trace_id[16];
    u8 span_id[8];
};
BPF_RINGBUF_OUTPUT(wakeup_events, RINGBUF_PAGES);
#define F_TRACE_CTX 1

/* The request the thread was working on: it has not run since it began to wait, so the
 * runtime cannot have changed the entry in between. Returns the flags. */
static __always_inline u32 stamp_trace_ctx(u32 tid, u8 *trace_id, u8 *span_id)
{
    struct trace_ctx *ctx = trace_ctx_of(tid);
    if (ctx) {
        __builtin_memcpy(trace_id, ctx->trace_id, 16);
        __builtin_memcpy(span_id, ctx->span_id, 8);
        return F_TRACE_CTX;
    }
    __builtin_memset(trace_id, 0, 16);
    __builtin_memset(span_id, 0, 8);
    return 0;
}

static __always_inline void emit_preemption(u64 now, u32 tid, u64 delay,
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
    ev->pid = st->tgid;
    ev->tid = tid;
    ev->cpu = st->wait_cpu;
    ev->preemptor_pid = st->wait_other_tgid;
    ev->preemptor_tid = st->wait_other_tid;
    ev->thread_preemptions = st->preemptions;
    __builtin_memcpy(ev->comm, st->comm, sizeof(ev->comm));
    ev->flags = stamp_trace_ctx(tid, ev->trace_id, ev->span_id);
    __builtin_memcpy(ev->preemptor_comm, st->wait_other_comm, sizeof(ev->preemptor_comm));
    /* No wakeup: userspace drains on a timer, so a busy CPU never pays for one per event. */
    preempt_events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

static __always_inline void emit_wakeup(u64 now, u32 tid, u64 delay,
                                        struct thread_stats *st, u32 cpu, u32 replaced_tid,
                                        u32 replaced_tgid, const void *replaced_comm)
{
    count_event(CTR_RB_ATTEMPTS);
    struct wakeup_event *ev = wakeup_events.ringbuf_reserve(sizeof(*ev));
    if (!ev) {
        count_event(CTR_RB_LOST);
        return;
    }
    ev->ts_ns = now;
    ev->delay_ns = delay;
    ev->thread_wakeups = st->wakeups;
    ev->pid = st->tgid;
    ev->tid = tid;
    ev->cpu = cpu;
    ev->waker_pid = st->wait_other_tgid;
    ev->waker_tid = st->wait_other_tid;
    ev->holder_tid = st->wait_holder_tid;
    ev->holder_pid = 0;
    __builtin_memset(ev->waker_comm, 0, sizeof(ev->waker_comm));
    /* Named from their own entries (a task seen switching out has one) on this rare path. */
    u32 waker = st->wait_other_tid, holder = st->wait_holder_tid;
    struct thread_stats *ws = waker ? threads.lookup(&waker) : 0;
    if (ws)
        __builtin_memcpy(ev->waker_comm, ws->comm, sizeof(ev->waker_comm));
    struct thread_stats *hs = holder ? threads.lookup(&holder) : 0;
    if (hs)
        ev->holder_pid = hs->tgid;
    ev->replaced_pid = replaced_tgid;
    ev->replaced_tid = replaced_tid;
    __builtin_memcpy(ev->comm, st->comm, sizeof(ev->comm));
    bpf_probe_read_kernel(ev->replaced_comm, sizeof(ev->replaced_comm), replaced_comm);
    ev->flags = stamp_trace_ctx(tid, ev->trace_id, ev->span_id);
    wakeup_events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

/* What the thread ran on its previous CPU goes into the map. */
static __always_inline void flush_cpu_time(struct thread_stats *st, u32 tid)
{
    if (!st->run_cpu || !st->run_ns)
        return;
    struct cpu_key key = {.tid = tid, .cpu = st->run_cpu - 1};
    u64 init = 0;
    u64 *slot = cpu_time_ns.lookup_or_try_init(&key, &init);
    if (slot)
        *slot += st->run_ns;
    else
        count_event(CTR_MAP_FULL);
    st->run_ns = 0;
    barrier(); /* emptied before a new CPU is named (thread_stats: run_cpu2) */
}

/* A slice of ns on cpu ended for the thread (entry st). */
static __always_inline void account_cpu_time(struct thread_stats *st, u32 tid, u32 cpu, u64 ns)
{
    if (st->run_cpu != cpu + 1) {
        flush_cpu_time(st, tid);
        st->run_cpu = cpu + 1;
        barrier();
        st->run_cpu2 = cpu + 1;
        barrier();
    }
    st->run_ns += ns;
}

static __always_inline void add_behind(u32 victim, u32 culprit, u64 ns)
{
    struct behind_key key = {.victim = victim, .culprit = culprit};
    u64 zero = 0;
    add_or_count_full(waited_behind.lookup_or_try_init(&key, &zero), ns);
}

/* The wait behind one process that the thread's entry holds goes into the map. */
static __always_inline void flush_behind(struct thread_stats *st)
{
    if (st->behind_tgid && st->behind_ns)
        add_behind(st->tgid, st->behind_tgid, st->behind_ns);
    st->behind_ns = 0;
    barrier(); /* emptied before a new process is named (thread_stats: behind_tgid2) */
}

/* Wait behind the idle task (the wake-up still on its way to an idle CPU: the common case of a
 * wake-up to another CPU) is summed in the thread's own entry, which needs no map update; so is
 * wait behind the process it last waited behind (two threads taking turns, or one hog), which
 * reaches the map when the thread waits behind another. */
static __always_inline void add_run(struct thread_stats *st, u32 culprit, u64 ns)
{
    if (!culprit) {
        st->idle_wait_ns += ns;
        return;
    }
    if (culprit == CULPRIT_HISTORY_SHORT) {
        add_behind(st->tgid, culprit, ns);
        return;
    }
    if (culprit != st->behind_tgid) {
        flush_behind(st);
        st->behind_tgid = culprit;
        barrier();
        st->behind_tgid2 = culprit;
        barrier();
    }
    st->behind_ns += ns;
}

/* Split [from, to) of a wait on this history's CPU among the processes that ran in it, newest
 * slice first; runs of one process are added up before they touch the map. */
static __always_inline void attribute_wait(struct cpu_history *h, struct thread_stats *st,
                                           u64 from, u64 to)
{
    u32 victim = st->tgid;
    u64 end = to;
    u32 head = h->head;
    u32 run_tgid = 0;
    u64 run_ns = 0;
    for (u32 i = 0; i < HISTORY_LEN; i++) {
        if (end <= from)
            break;
        struct slice *s = &h->s[(head - i) & HISTORY_MASK];
        u64 start = s->since;
        if (!start || start >= end) /* empty, or not in order: stop rather than guess */
            break;
        u64 seg_start = start > from ? start : from;
        u32 tgid = s->tgid;
        if (!tgid && s->tid) { /* still running on another CPU: not switched out yet */
            struct thread_stats *ts = threads.lookup(&s->tid);
            tgid = ts ? ts->tgid : CULPRIT_HISTORY_SHORT;
        }
        if (run_ns && tgid != run_tgid) {
            add_run(st, run_tgid, run_ns);
            run_ns = 0;
        }
        run_tgid = tgid;
        run_ns += end - seg_start;
        end = start;
    }
    if (run_ns)
        add_run(st, run_tgid, run_ns);
    if (end > from) /* older than the history reaches */
        add_behind(victim, CULPRIT_HISTORY_SHORT, end - from);
}

/* A finished wait of the thread (entry st) into its process's histogram and window maximum.
 *
 * The maximum's map is looked at only when the wait is longer than the process's maximum as
 * this thread last saw it in this window (max_seen, max_window): within a window a maximum only
 * grows, so a wait no longer than one seen in it is already covered. Userspace takes the
 * window's maxima and then moves to the next window; a wait that ends between the two, or runs
 * across them, counts in either window, as it always could. A wait after the move finds its
 * thread's max_window behind and looks at the map. */
static __always_inline void add_hist(u32 kind, struct thread_stats *st, u64 delay)
{
    u32 tgid = st->tgid;
    struct hist_key hk = {.tgid = tgid, .bucket = loglinear_bucket(delay)};
    u64 zero = 0;
    u64 *slot;
    int i = kind == WAIT_WOKEN;
    if (i)
        slot = wakeup_delay_hist.lookup_or_try_init(&hk, &zero);
    else
        slot = preempt_delay_hist.lookup_or_try_init(&hk, &zero);
    add_or_count_full(slot, 1);

    u32 first = 0;
    u32 *w = max_window.lookup(&first);
    u32 window = w ? *w : 0;
    if (window && st->max_window[i] == window && delay <= st->max_seen[i])
        return;
    u64 *max = i ? wakeup_delay_max_ns.lookup(&tgid) : preempt_delay_max_ns.lookup(&tgid);
    if (max && *max >= delay) {
        st->max_seen[i] = *max;
        st->max_window[i] = window;
        return;
    }
    if (i ? wakeup_delay_max_ns.update(&tgid, &delay) : preempt_delay_max_ns.update(&tgid, &delay)) {
        count_event(CTR_MAP_FULL);
        return;
    }
    st->max_seen[i] = delay; /* this CPU's value; the process's maximum is at least that */
    st->max_window[i] = window;
}

/* `next` (its entry `st`) is about to run on this CPU: end its wait, if it was waiting. */
static __always_inline void finish_wait(struct thread_stats *st, u32 tid, u64 now, u32 cpu,
                                        struct cpu_history *h, u32 prev, u32 prev_tgid,
                                        const void *prev_comm)
{
    u64 since = st->wait_since;
    if (!since)
        return;
    st->wait_since = 0;
    if (now < since)
        return;
    u64 delay = now - since;
    u64 from = st->wait_attributed_until;
    if (h && st->wait_cpu == cpu && from < now)
        attribute_wait(h, st, from, now);
    else if (from < now) /* moved between queues unseen: not split, never guessed */
        add_behind(st->tgid, CULPRIT_HISTORY_SHORT, now - from);

    if (st->wait_kind == WAIT_PREEMPTED) {
        st->preempt_delay_ns += delay;
        st->preemptions += 1;
        add_hist(WAIT_PREEMPTED, st, delay);
        if (delay >= THRESHOLD_NS) {
            st->over_threshold += 1;
            emit_preemption(now, tid, delay, st);
        }
    } else {
        st->wakeup_delay_ns += delay;
        st->wakeups += 1;
        st->last_wakeup_ns = since;
        st->last_wakeup_delay_ns = delay;
        add_hist(WAIT_WOKEN, st, delay);
        if (delay >= THRESHOLD_NS) {
            st->wakeups_over_threshold += 1;
            emit_wakeup(now, tid, delay, st, cpu, prev, prev_tgid, prev_comm);
        }
    }
}

static __always_inline struct thread_stats *thread_entry(u32 tid, u32 tgid, const void *comm)
{
    struct thread_stats *st = threads.lookup(&tid);
    if (st) {
        if (st->tgid != tgid) { /* tid reused by another process: a new thread, from zero */
            flush_cpu_time(st, tid); /* the old thread's, as userspace last read them */
            flush_behind(st);
            __builtin_memset(st, 0, sizeof(*st));
            st->tgid = tgid;
            bpf_probe_read_kernel(&st->comm, sizeof(st->comm), comm);
        }
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

/* A context switch on this CPU: prev (current, of process tgid) leaves, next comes in.
 * involuntary: prev was still runnable. The comms are kernel addresses of 16-byte names. */
static __always_inline int on_switch(u32 prev, u32 tgid, u32 next, int involuntary,
                                     const void *prev_comm, const void *next_comm)
{
    u64 now = bpf_ktime_get_ns();
    u32 cpu = bpf_get_smp_processor_id();

    /* prev's slice ends now: its start gives prev's on-CPU time, and its owner is known. */
    u64 ran_since = 0;
    struct cpu_history *h = cpu_history.lookup(&cpu);
    if (h) {
        struct slice *cur = &h->s[h->head & HISTORY_MASK];
        if (cur->tid == prev) {
            ran_since = cur->since;
            cur->tgid = prev ? tgid : 0;
        }
    }

    struct thread_stats *nst = next ? threads.lookup(&next) : 0;
    if (prev != 0 && !(@@FILTER_TGID@@) && !(@@FILTER_CGROUP@@)) {
        struct thread_stats *st = thread_entry(prev, tgid, prev_comm);
        if (st) {
            st->switches += 1;
            if (ran_since && now > ran_since)
                account_cpu_time(st, prev, cpu, now - ran_since);
            /* Still runnable when switched out: it did not give up the CPU, it lost it. */
            if (involuntary) {
                st->involuntary += 1;
                bpf_probe_read_kernel(&st->comm, sizeof(st->comm), prev_comm);
                st->wait_since = now;
                st->wait_attributed_until = now;
                st->wait_kind = WAIT_PREEMPTED;
                st->wait_cpu = cpu;
                st->wait_other_tid = next;
                st->wait_other_tgid = nst ? nst->tgid : next;
                bpf_probe_read_kernel(&st->wait_other_comm, sizeof(st->wait_other_comm),
                                      next_comm);
            } else {
                st->wait_since = 0; /* a wake-up that came while it still ran started none */
#if USER_REGS
                /* A thread of a traced process goes to sleep: in which syscall (the trace-context
                 * probe tells a read that blocked from one that found its data waiting). */
                if (st->note_sleep)
                    st->sleep_nr = user_syscall(&st->sleep_fd);
#endif
            }
        }
    }

    if (nst)
        finish_wait(nst, next, now, cpu, h, prev, prev ? tgid : 0, prev_comm);

    /* next's slice starts now (after the walk above, which ends at prev's slice). */
    if (h) {
        u32 head = (h->head + 1) & HISTORY_MASK;
        h->head = head;
        h->s[head].since = now;
        h->s[head].tid = next;
        h->s[head].tgid = 0;
    }
    return 0;
}

/* A tracked thread became runnable: its wait starts, on target_cpu's queue. Kept to stores
 * into the thread's own entry: who woke it and who held the CPU are named (their tgid and comm
 * looked up) only when an over-threshold event is sent. A wake-up of a thread that is still
 * running (woken before it switched out) leaves a wait that its switch-out then clears. */
static __always_inline int start_wakeup_wait(u32 tid, u32 target_cpu)
{
    struct thread_stats *st = threads.lookup(&tid);
    if (!st)
        return 0; /* filtered out, or never seen (and not created while wasmtop ran) */
    if (st->wait_since && st->wait_kind == WAIT_PREEMPTED)
        return 0; /* already runnable, waiting since its preemption */
    u32 holder_tid = 0;
    if (target_cpu < MAX_CPUS) {
        struct cpu_history *h = cpu_history.lookup(&target_cpu);
        if (h)
            holder_tid = h->s[h->head & HISTORY_MASK].tid;
    }
    u64 id = bpf_get_current_pid_tgid();
    st->wait_since = bpf_ktime_get_ns();
    st->wait_attributed_until = st->wait_since;
    st->wait_kind = WAIT_WOKEN;
    st->wait_cpu = target_cpu;
    st->wait_other_tid = (u32)id;
    st->wait_other_tgid = id >> 32;
    st->wait_holder_tid = holder_tid;
    return 0;
}

int wasmtop_sched_switch(struct tracepoint__sched__sched_switch *args)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32; /* current is still prev here */
    return on_switch(args->prev_pid, tgid, args->next_pid,
                     (args->prev_state & PREV_STATE_MASK) == 0, args->prev_comm,
                     args->next_comm);
}

int wasmtop_sched_wakeup(struct tracepoint__sched__sched_wakeup *args)
{
    return start_wakeup_wait(args->pid, args->target_cpu);
}

int wasmtop_sched_wakeup_new(struct tracepoint__sched__sched_wakeup_new *args)
{
    return start_wakeup_wait(args->pid, args->target_cpu);
}

/* A new thread gets its entry now, so its first wait (after sched_wakeup_new) is measured. The
 * parent is current: a thread of its process, or a new process of its own. */
int wasmtop_task_newtask(struct tracepoint__task__task_newtask *args)
{
    u32 tid = args->pid;
    u32 tgid = (args->clone_flags & 0x00010000 /* CLONE_THREAD */)
                   ? (u32)(bpf_get_current_pid_tgid() >> 32)
                   : tid;
    if ((@@FILTER_TGID@@) || (@@FILTER_CGROUP@@))
        return 0;
    struct thread_stats *st = thread_entry(tid, tgid, args->comm);
    if (!st)
        return 0;
    st->note_sleep = 0; /* a reused tid starts unmarked */
    st->sleep_nr = 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 parent = (u32)id, leader = id >> 32;
    struct thread_stats *pst = threads.lookup(&parent);
    struct thread_stats *lst = pst && pst->note_sleep ? pst : threads.lookup(&leader);
    if (lst && lst->note_sleep) /* a new thread (or child) of a traced process */
        st->note_sleep = 1;
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

    /* Pulled from one run queue to another while waiting: what it waited on the old queue is
     * split among that CPU's tasks now (its run-queue lock is held), the rest on the new one. */
    u32 orig = args->orig_cpu;
    if (st->wait_since && st->wait_cpu == orig) {
        u64 now = bpf_ktime_get_ns();
        struct cpu_history *h = cpu_history.lookup(&orig);
        if (h && st->wait_attributed_until < now)
            attribute_wait(h, st, st->wait_attributed_until, now);
        st->wait_attributed_until = now;
        st->wait_cpu = args->dest_cpu;
    }
    return 0;
}
