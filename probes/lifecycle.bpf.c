/* wasmtop lifecycle probe: process cold start (exec -> first listen, exec -> first accepted
 * connection) and the latency of WebAssembly runtimes' compile and instantiate calls.
 *
 * Tracepoints: sched_process_exec/fork/exit, sys_exit_listen, sys_exit_accept4/accept.
 * Uprobes/uretprobes on a runtime's C API (attached by probes/lifecycle.py to the library a
 * workload maps): the entry records the time per (thread, call kind), the return aggregates
 * per (process, kind) in the kernel: count, sum, max and a log-linear histogram.
 *
 * Compiled in by probes/lifecycle.py: MAX_PROCS, MAX_CALLS, RINGBUF_PAGES, CTR_*.
 */

/* A process exec'd while wasmtop runs: when, and whether it has listened / accepted yet.
 * Keyed by tgid; a forked child inherits its parent's exec time (a pre-forked worker's cold
 * start counts from the exec of the program it runs). */
struct proc_life {
    u64 exec_ns;
    u64 listen_ns;
    u64 accept_ns;
};
BPF_HASH(procs, u32, struct proc_life, MAX_PROCS);

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

struct call_key {
    u32 tid;
    u32 kind;
};
BPF_HASH(calls_in_flight, struct call_key, u64, MAX_CALLS);

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

int wasmtop_process_exec(struct tracepoint__sched__sched_process_exec *args)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct proc_life life = {.exec_ns = bpf_ktime_get_ns()};
    if (procs.update(&tgid, &life)) /* a new program: its cold start begins now */
        count_event(CTR_MAP_FULL);
    return 0;
}

int wasmtop_process_fork(struct tracepoint__sched__sched_process_fork *args)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    struct proc_life *p = procs.lookup(&parent);
    if (!p)
        return 0;
    /* Threads fork too; their entry (keyed by the new tid) is never looked up as a tgid and is
     * removed when the thread exits. */
    u32 child = args->child_pid;
    struct proc_life life = {.exec_ns = p->exec_ns};
    if (procs.update(&child, &life))
        count_event(CTR_MAP_FULL);
    return 0;
}

int wasmtop_process_exit(struct tracepoint__sched__sched_process_exit *args)
{
    u32 tid = args->pid;
    procs.delete(&tid);
    return 0;
}

static __always_inline void first(u32 kind)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    struct proc_life *p = procs.lookup(&tgid);
    if (!p)
        return; /* exec'd before wasmtop started: no cold start to measure */
    u64 now = bpf_ktime_get_ns();
    u64 *slot = kind == KIND_LISTEN ? &p->listen_ns : &p->accept_ns;
    if (*slot)
        return; /* only the first */
    *slot = now;
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
    bpf_get_current_comm(ev->comm, sizeof(ev->comm));
    life_events.ringbuf_submit(ev, 0);
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

static __always_inline int call_entry(u32 kind)
{
    struct call_key k = {.tid = (u32)bpf_get_current_pid_tgid(), .kind = kind};
    u64 now = bpf_ktime_get_ns();
    if (calls_in_flight.update(&k, &now))
        count_event(CTR_MAP_FULL);
    return 0;
}

static __always_inline int call_return(u32 kind)
{
    u64 id = bpf_get_current_pid_tgid();
    struct call_key k = {.tid = (u32)id, .kind = kind};
    u64 *start = calls_in_flight.lookup(&k);
    if (!start)
        return 0; /* entered before the probe attached */
    u64 now = bpf_ktime_get_ns();
    u64 ns = now > *start ? now - *start : 0;
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

int wasmtop_wasm_compile_entry(struct pt_regs *ctx) { return call_entry(CALL_COMPILE); }
int wasmtop_wasm_compile_return(struct pt_regs *ctx) { return call_return(CALL_COMPILE); }
int wasmtop_wasm_instantiate_entry(struct pt_regs *ctx) { return call_entry(CALL_INSTANTIATE); }
int wasmtop_wasm_instantiate_return(struct pt_regs *ctx) { return call_return(CALL_INSTANTIATE); }
