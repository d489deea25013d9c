/* wasmtop lifecycle probe: process cold start (exec -> first listen, exec -> first accepted
 * connection) and the latency of WebAssembly runtimes' compile and instantiate calls.
 *
 * Tracepoints: sched_process_exec/exit and task_newtask, and for listen and accept (SOCK_STATE):
 *   1  sock:inet_sock_set_state (a TCP socket entering LISTEN, in the listening process's
 *      context) and sock:sk_data_ready on that listening socket (the kernel completed a
 *      connection and queued it for accept(); Linux 6.4+). Nothing on the syscall path.
 *   0  the sys_exit_listen / sys_exit_accept4 / sys_exit_accept syscall tracepoints, which put
 *      every task of the node on the slow syscall path.
 * Uprobes/uretprobes on a runtime's C API (attached by probes/lifecycle.py to the library a
 * workload maps): the entry records the time per (thread, call kind), the return aggregates
 * per (process, kind) in the kernel: count, sum, max and a log-linear histogram.
 *
 * Compiled in by probes/lifecycle.py: SOCK_STATE, MAX_PROCS, MAX_LISTENERS, MAX_CALLS,
 * RINGBUF_PAGES, CTR_*, EXIT_GROUP_DEAD (sched_process_exit has group_dead).
 */

/* A process exec'd while wasmtop runs: when, and whether it has listened / accepted yet.
 * Keyed by tgid, processes only (never a thread); a forked child inherits its parent's exec
 * time (a pre-forked worker's cold start counts from the exec of the program it runs). The
 * first listen and accept are taken by compare-and-swap from zero: one event each. */
struct proc_life {
    u64 exec_ns;
    u64 listen_ns;
    u64 accept_ns;
    u64 listening; /* its entries in `listeners` (socket capture) */
    u64 waits;     /* 1 while counted in `waiting`: listening and no connection yet (u64: the
                    * atomics here are 64-bit) */
    u64 prev_exec_ns; /* the program it ran before this one (exec in place): listeners that
                       * program opened and this one kept across the exec are its own */
};
BPF_HASH(procs, u32, struct proc_life, MAX_PROCS);

#if SOCK_STATE
/* Index 0: how many processes wait for their first connection (`waits` set). sk_data_ready
 * fires for every socket of the node that gets data, and nearly always no process waits: one
 * array load (inlined by the verifier) then answers instead of a hash lookup. A process stops
 * counting at its first connection, though its other listeners (an IPv6 twin, an admin port)
 * keep their entries until they close. Kept with atomics: `waits` is set and cleared by
 * compare-and-swap, and only the CPU that changed it adds or takes one. */
BPF_ARRAY(waiting, s64, 1);

static __always_inline void count_waiting(s64 n)
{
    u32 zero = 0;
    s64 *w = waiting.lookup(&zero);
    if (w)
        __sync_fetch_and_add(w, n);
}

/* The process (entry p) no longer waits: its first connection came, its last listener closed,
 * or it exited (an exec moves the flag to the new program's entry: exec_in_place). */
static __always_inline void stop_waiting(struct proc_life *p)
{
    if (p->waits && __sync_val_compare_and_swap(&p->waits, 1, 0) == 1)
        count_waiting(-1);
}

/* The process (entry p) waits for its first connection: it listens, and has had none. */
static __always_inline void start_waiting(struct proc_life *p)
{
    if (!p->waits && __sync_val_compare_and_swap(&p->waits, 0, 1) == 0)
        count_waiting(1);
}

/* A process execs another program (old: its entry, life: the new one, not yet stored). The
 * listeners it kept open across the exec (not close-on-exec) are the new program's: it waits
 * on them for its own first connection. The old entry's flag is taken by compare-and-swap, so
 * a connection taking a listener meanwhile on another CPU cannot count it out twice. */
static __always_inline void exec_in_place(struct proc_life *old, struct proc_life *life)
{
    life->prev_exec_ns = old->exec_ns;
    life->listening = old->listening;
    if (old->waits && __sync_val_compare_and_swap(&old->waits, 1, 0) == 1)
        life->waits = 1; /* its count in `waiting` moves to the new entry */
    if (life->listening && !life->waits) {
        life->waits = 1;
        count_waiting(1);
    }
}
#else
static __always_inline void count_waiting(s64 n) {}
static __always_inline void stop_waiting(struct proc_life *p) {}
static __always_inline void exec_in_place(struct proc_life *old, struct proc_life *life) {}
#endif

#define KIND_LISTEN 1
#define KIND_ACCEPT 2

struct life_event {
    u64 exec_ns;
    u64 ts_ns;
    u32 tgid;
    u32 kind;
    char comm[16];
};
BPF_RINGBUF_OUTPUT(life_events, RINGBUF_PAGES);

#define CALL_COMPILE 1
#define CALL_INSTANTIATE 2
#define CALL_CALL 3 /* a call into the guest */

struct call_key {
    u32 tid;
    u32 kind;
};
/* A call of a kind in progress on a thread: when the outermost began, and how deep the calls
 * of that kind are nested (a Rust API function calling another that is probed too, such as
 * Module::new calling Module::from_binary, or a guest calling back into the host that calls
 * the guest again): only the outermost is timed and counted. */
struct call_start {
    u64 ns;
    u64 sp;    /* the outermost call's stack pointer at entry */
    u32 depth;
    u32 tgid;  /* the process whose thread made it */
};
BPF_HASH(calls_in_flight, struct call_key, struct call_start, MAX_CALLS);

struct wasm_key {
    u32 tgid;
    u32 kind;
};
struct wasm_stats {
    u64 count;
    u64 total_ns;
    u64 max_ns;
};
BPF_HASH(wasm_calls, struct wasm_key, struct wasm_stats, MAX_PROCS);

struct wasm_hist_key {
    u32 tgid;
    u16 kind;
    u16 bucket;
};
BPF_HASH(wasm_hist, struct wasm_hist_key, u64, MAX_PROCS * 8);

/* A thread that ends (or execs) inside a probed call leaves no entry behind. */
static __always_inline void forget_calls(u32 tid)
{
    struct call_key k = {.tid = tid, .kind = CALL_COMPILE};
    calls_in_flight.delete(&k);
    k.kind = CALL_INSTANTIATE;
    calls_in_flight.delete(&k);
    k.kind = CALL_CALL;
    calls_in_flight.delete(&k);
}

int wasmtop_process_exec(struct tracepoint__sched__sched_process_exec *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    forget_calls((u32)id);
    if ((u32)args->old_pid != tgid) /* exec'd by another thread, which took the tgid over */
        forget_calls(args->old_pid);
    struct proc_life life = {.exec_ns = bpf_ktime_get_ns()};
    struct proc_life *old = procs.lookup(&tgid);
    if (old)
        exec_in_place(old, &life);
    if (procs.update(&tgid, &life)) { /* a new program: its cold start begins now */
        count_event(CTR_MAP_FULL);
        if (life.waits)
            count_waiting(-1);
    }
    return 0;
}

/* A new process (not a thread: threads would fill the map and are never looked up) of a
 * process that has an entry; current is the parent. */
int wasmtop_task_newtask(struct tracepoint__task__task_newtask *args)
{
    if (args->clone_flags & 0x00010000 /* CLONE_THREAD */)
        return 0;
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    struct proc_life *p = procs.lookup(&parent);
    if (!p)
        return 0;
    u32 child = args->pid;
    struct proc_life life = {.exec_ns = p->exec_ns};
    if (procs.update(&child, &life))
        count_event(CTR_MAP_FULL);
    return 0;
}

/* A thread's calls in flight go with it; the process's entry when its last thread exits
 * (EXIT_GROUP_DEAD; before Linux 6.9, when its leader exits). Current is the exiting thread. */
int wasmtop_process_exit(struct tracepoint__sched__sched_process_exit *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    forget_calls((u32)id);
    if (!LAST_OF_GROUP(args, id))
        return 0;
    /* Before its files close (and its listeners with them): the entry is gone by then. */
    struct proc_life *p = procs.lookup(&tgid);
    if (p)
        stop_waiting(p);
    procs.delete(&tgid);
    return 0;
}

/* The first listen or accept of process tgid (whose entry is p): one event, then never again. */
static __always_inline void first_of(u32 tgid, struct proc_life *p, u32 kind, const char *comm)
{
    u64 now = bpf_ktime_get_ns();
    u64 *slot = kind == KIND_LISTEN ? &p->listen_ns : &p->accept_ns;
    if (*slot || __sync_val_compare_and_swap(slot, 0, now))
        return; /* only the first, on whichever CPU takes it */
    count_event(CTR_RB_ATTEMPTS);
    struct life_event *ev = life_events.ringbuf_reserve(sizeof(*ev));
    if (!ev) {
        count_event(CTR_RB_LOST);
        return;
    }
    ev->exec_ns = p->exec_ns;
    ev->ts_ns = now;
    ev->tgid = tgid;
    ev->kind = kind;
    if (comm)
        bpf_probe_read_kernel(ev->comm, sizeof(ev->comm), comm);
    else
        bpf_get_current_comm(ev->comm, sizeof(ev->comm));
    life_events.ringbuf_submit(ev, 0);
}

#if SOCK_STATE
#define TCP_LISTEN 10
#define PROTO_TCP 6

/* A listening socket of a process still waiting for its first connection: the process by its
 * tgid and exec time (the socket can outlive it, and its pid be reused). */
struct listener {
    u64 exec_ns;
    u32 tgid;
    char comm[16];
};
BPF_HASH(listeners, u64, struct listener, MAX_LISTENERS);

/* Take listening socket sk's entry (the CPU whose delete succeeds, of several that found it):
 * its process's entry, if that process still has the pid, else NULL (and nothing taken). The
 * process stops waiting when this was its last listener. */
static __always_inline struct proc_life *take_listener(u64 sk, struct listener *who)
{
    struct listener *l = listeners.lookup(&sk);
    if (!l)
        return 0;
    *who = *l;
    if (listeners.delete(&sk))
        return 0;
    struct proc_life *p = procs.lookup(&who->tgid);
    /* exited, or the pid is another program's now (an exec in place keeps it its own) */
    if (!p || (p->exec_ns != who->exec_ns && p->prev_exec_ns != who->exec_ns))
        return 0;
    if (__sync_fetch_and_add(&p->listening, -1) == 1) {
        stop_waiting(p);
        /* A listen() on another CPU may have found the flag still set just before this: it
         * waits again on that listener. */
        if (p->listening && !p->accept_ns)
            start_waiting(p);
    }
    return p;
}

int wasmtop_sock_state(struct tracepoint__sock__inet_sock_set_state *args)
{
    u64 sk = (u64)args->skaddr;
    if (args->newstate != TCP_LISTEN) {
        struct listener who;
        if (args->oldstate == TCP_LISTEN) /* a listener closed (or a child was cloned from one) */
            take_listener(sk, &who);
        return 0;
    }
    if (args->protocol != PROTO_TCP)
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_life *p = procs.lookup(&tgid);
    if (!p)
        return 0; /* exec'd before wasmtop started: no cold start to measure */
    first_of(tgid, p, KIND_LISTEN, 0);
    if (p->accept_ns)
        return 0;
    struct listener l = {.exec_ns = p->exec_ns, .tgid = tgid};
    bpf_get_current_comm(l.comm, sizeof(l.comm));
    long err = listeners.insert(&sk, &l); /* listen() again on a listener: already there */
    if (err) {
        if (err != -EEXIST)
            count_event(CTR_MAP_FULL);
        return 0;
    }
    __sync_fetch_and_add(&p->listening, 1);
    start_waiting(p);
    return 0;
}

/* Data ready on a listening socket: the kernel has a connection for accept(). In softirq
 * context: the process is the one that listened, not current. */
int wasmtop_sk_data_ready(struct tracepoint__sock__sk_data_ready *args)
{
    u32 zero = 0;
    s64 *w = waiting.lookup(&zero);
    if (!w || *w <= 0)
        return 0;
    struct listener who;
    struct proc_life *p = take_listener((u64)args->skaddr, &who);
    if (!p)
        return 0; /* not a waiting listener, or another CPU took it first */
    first_of(who.tgid, p, KIND_ACCEPT, who.comm);
    stop_waiting(p); /* its other listeners, if any, keep their entries until they close */
    return 0;
}
#else
static __always_inline void first(u32 kind)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_life *p = procs.lookup(&tgid);
    if (!p)
        return; /* exec'd before wasmtop started: no cold start to measure */
    first_of(tgid, p, kind, 0);
}

int wasmtop_listen(struct tracepoint__syscalls__sys_exit_listen *args)
{
    if (args->ret == 0)
        first(KIND_LISTEN);
    return 0;
}

int wasmtop_accept4(struct tracepoint__syscalls__sys_exit_accept4 *args)
{
    if (args->ret >= 0)
        first(KIND_ACCEPT);
    return 0;
}

int wasmtop_accept(struct tracepoint__syscalls__sys_exit_accept *args)
{
    if (args->ret >= 0)
        first(KIND_ACCEPT);
    return 0;
}
#endif /* SOCK_STATE */

static __always_inline int call_entry(struct pt_regs *ctx, u32 kind)
{
    u64 id = bpf_get_current_pid_tgid();
    struct call_key k = {.tid = (u32)id, .kind = kind};
    u64 sp = PT_REGS_SP(ctx);
    struct call_start *in = calls_in_flight.lookup(&k);
    if (in) {
        if (sp < in->sp && in->tgid == id >> 32) { /* deeper: nested, the outer one is timed */
            in->depth++;
            return 0;
        }
        /* At or above the outer call's frame: that call left without its return probe
         * firing (unwound, or its thread switched stacks): counted, and timed afresh. */
        count_event(CTR_CALL_UNFINISHED);
    }
    struct call_start s = {.ns = bpf_ktime_get_ns(), .sp = sp, .depth = 1, .tgid = id >> 32};
    if (calls_in_flight.update(&k, &s))
        count_event(CTR_MAP_FULL);
    return 0;
}

static __always_inline int call_return(u32 kind)
{
    u64 id = bpf_get_current_pid_tgid();
    struct call_key k = {.tid = (u32)id, .kind = kind};
    struct call_start *in = calls_in_flight.lookup(&k);
    if (!in)
        return 0; /* entered before the probe attached */
    if (in->depth > 1) {
        in->depth--;
        return 0;
    }
    u64 now = bpf_ktime_get_ns();
    u64 ns = now > in->ns ? now - in->ns : 0;
    calls_in_flight.delete(&k);
    struct wasm_key wk = {.tgid = id >> 32, .kind = kind};
    struct wasm_stats zero = {};
    struct wasm_stats *st = wasm_calls.lookup_or_try_init(&wk, &zero);
    if (!st) {
        count_event(CTR_MAP_FULL);
        return 0;
    }
    __sync_fetch_and_add(&st->count, 1);
    __sync_fetch_and_add(&st->total_ns, ns);
    /* Two threads of a process may return at once: compare-and-swap, so no larger value is
     * overwritten by a smaller one. */
#pragma unroll
    for (int i = 0; i < 8; i++) {
        u64 old = st->max_ns;
        if (old >= ns || __sync_val_compare_and_swap(&st->max_ns, old, ns) == old)
            break;
    }
    struct wasm_hist_key hk = {.tgid = id >> 32, .kind = kind, .bucket = loglinear_bucket(ns)};
    u64 one = 0;
    add_or_count_full(wasm_hist.lookup_or_try_init(&hk, &one), 1);
    return 0;
}

int wasmtop_wasm_compile_entry(struct pt_regs *ctx) { return call_entry(ctx, CALL_COMPILE); }
int wasmtop_wasm_compile_return(struct pt_regs *ctx) { return call_return(CALL_COMPILE); }
int wasmtop_wasm_instantiate_entry(struct pt_regs *ctx) { return call_entry(ctx, CALL_INSTANTIATE); }
int wasmtop_wasm_instantiate_return(struct pt_regs *ctx) { return call_return(CALL_INSTANTIATE); }
int wasmtop_wasm_call_entry(struct pt_regs *ctx) { return call_entry(ctx, CALL_CALL); }
int wasmtop_wasm_call_return(struct pt_regs *ctx) { return call_return(CALL_CALL); }
