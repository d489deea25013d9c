/* wasmtop trace-context probe: HTTP/1.x requests that traced processes answer. The read that
 * brings a request head is paired, in the kernel, with the write that starts the response on the
 * same connection; one event carries the request's first bytes and the thread's cumulative
 * preemption delay and migrations at both ends, so a request's kernel interference is the exact
 * difference: no sampling, no time windows.
 *
 * Two ways in, chosen at load (SOCK_IO):
 *   1  the socket tracepoints sock:sock_recv_length and sock:sock_send_length (Linux 6.3+). They
 *      fire inside a socket receive or send, after the data moved, in the caller's context; the
 *      syscall in progress and its arguments (fd, buffer) come from the thread's saved user
 *      registers (user_regs, shared.bpf.h). Nothing else on the node pays: a process that does
 *      not touch a socket never runs this code, and the syscall path stays the fast one.
 *   0  the syscall tracepoints of read/recvfrom/recvmsg (entry and exit) and
 *      write/sendto/sendmsg/writev (entry), where the kernel lacks those: attaching any syscall
 *      tracepoint puts every task of the node on the slow syscall path.
 * Either way, reads are captured once the data is there, writes from the buffer handed to the
 * kernel. User memory is read with bpf_probe_read_user, user structures (msghdr, iovec) by their
 * stable ABI layout, never kernel structures.
 *
 * Compiled in by probes/tracectx.py:
 *   cflags  SOCK_IO, USER_REGS, CAPTURE_BYTES, MAX_TRACED, MAX_PENDING, MAX_OPEN, CGROUP_LEVELS,
 *           RINGBUF_PAGES, CTR_*,
 *           EXIT_GROUP_DEAD (sched_process_exit has group_dead),
 *           THREADS_COMPLETE: 1 when the scheduler probe tracks every thread (no filter), so a
 *           thread without an entry has not been switched out since it started: zero so far
 *
 * struct thread_stats, struct trace_ctx and trace_ctx_of() (the pinned trace-context map,
 * through the slot userspace fills) come from shared.bpf.h.
 */

/* The scheduler probe's per-thread map, reached through slot 0 of threads_slot, which
 * userspace fills with that map (a map-in-map: two BCC modules share a map without a pin).
 * threads_layout only tells the kernel which maps the slot takes. Without the scheduler probe
 * the slot stays empty: no thread has figures. */
BPF_HASH(threads_layout, u32, struct thread_stats, 1);
BPF_ARRAY_OF_MAPS(threads_slot, "threads_layout", 1);

static __always_inline struct thread_stats *thread_stats_of(u32 tid)
{
    int zero = 0;
    void *map = threads_slot.lookup(&zero);
    return map ? bpf_map_lookup_elem(map, &tid) : NULL;
}

/* Who is traced, kept current by userspace: processes by tgid, and cgroup v2 subtrees by the id
 * of their top directory. control[0] holds the number of traced cgroups, control[1] the number
 * of traced processes (set after the map changed: zero only when it is empty), so a socket call
 * on a node where nothing is traced costs two array reads and no hash lookup. */
BPF_HASH(traced_tgids, u32, u8, MAX_TRACED);
BPF_HASH(traced_cgroups, u64, u8, MAX_TRACED);
BPF_ARRAY(control, u32, 2);

#define DIR_READ 1
#define DIR_WRITE 2

#define SYS_READ 1
#define SYS_RECVFROM 2
#define SYS_RECVMSG 3
#define SYS_WRITE 4
#define SYS_SENDTO 5
#define SYS_SENDMSG 6
#define SYS_WRITEV 7
#define SYS_READV 8

#define F_HAVE_STATS 1 /* the thread had an entry in the scheduler probe's map */
#define F_HAVE_CTX 2   /* the thread had an entry in the trace-context map */

#if !SOCK_IO
/* A read in flight: where its data will land, until the syscall returns. */
struct pending_read {
    u64 buf;
    u64 cap;   /* bytes the buffer holds (the first iovec for recvmsg) */
    u64 wakeups; /* the thread's completed wake-ups at entry: more at exit = the read blocked */
    s32 fd;
    u32 syscall;
};
BPF_HASH(pending_reads, u32, struct pending_read, MAX_PENDING);
#endif

/* A request read on a connection and its answer, in one record: the read fills the start's
 * fields, the response write on the same connection the end's, and the record goes to
 * userspace from where it lies, as far as its captured head goes. */
struct request_event {
    u64 start_ns;              /* end of the read that brought the request head */
    u64 end_ns;                /* the write that began the response: its start (syscall
                                * tracepoints) or its return (socket tracepoints) */
    u64 wake_ns;               /* the read blocked: the wake-up that ended it; else 0 */
    u64 queued_ns;             /* run-queue wait of the wake-up charged to this request */
    u64 wakeup_seq;            /* that wake-up's number in the reading thread; 0: none */
    u64 preempt_start_ns;      /* the thread's cumulative preemption delay at each end */
    u64 preempt_end_ns;
    u64 migrations_start;
    u64 migrations_end;
    u32 tgid;
    u32 tid;                   /* thread that read the request */
    u32 end_tid;               /* thread that wrote the response */
    s32 fd;
    u32 bytes;                 /* returned by the request read */
    u16 captured;              /* bytes of data[] holding the request's start */
    u16 status;                /* the response's status code; 0 when not three digits */
    u8 start_flags;
    u8 end_flags;              /* F_HAVE_STATS, F_HAVE_CTX (ctx ids below are from this end) */
    u8 read_syscall;
    u8 write_syscall;
    u32 _pad;
    u8 ctx_trace_id[16];
    u8 ctx_span_id[8];
    char data[CAPTURE_BYTES];  /* sent only up to `captured`: a record is as long as its head */
};
BPF_RINGBUF_OUTPUT(request_events, RINGBUF_PAGES);

/* Requests read and not yet answered, keyed by (tgid << 32 | fd): the kernel pairs each with
 * the response written on the same connection, so one event per request crosses to
 * userspace. A read builds its record in a per-CPU scratch slot (too big for the BPF stack);
 * the write completes it in the map, sends it from there and deletes it. */
BPF_F_TABLE("hash", u64, struct request_event, open_requests, MAX_OPEN, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(scratch, struct request_event, 1);

/* User ABI layouts (struct user_msghdr, struct iovec on 64-bit). */
struct umsghdr {
    u64 name;
    u32 namelen;
    u32 _pad;
    u64 iov;
    u64 iovlen;
};
struct uiovec {
    u64 base;
    u64 len;
};

/* *id: bpf_get_current_pid_tgid() when it was read to decide, else left as it is (0), so that a
 * program reads it once (current_id) and a node with nothing traced never does. */
static __always_inline int traced_as(u64 *id)
{
    u32 zero = 0, one = 1;
    u32 *nproc = control.lookup(&one);
    if (nproc && *nproc) {
        *id = bpf_get_current_pid_tgid();
        u32 tgid = *id >> 32;
        if (traced_tgids.lookup(&tgid))
            return 1;
    }
    u32 *ncg = control.lookup(&zero);
    if (!ncg || !*ncg)
        return 0;
#pragma unroll
    for (int level = 1; level <= CGROUP_LEVELS; level++) {
        u64 id = bpf_get_current_ancestor_cgroup_id(level);
        if (!id)
            break; /* deeper than the task's own cgroup */
        if (traced_cgroups.lookup(&id))
            return 1;
    }
    return 0;
}

static __always_inline int traced(void)
{
    u64 id = 0;
    return traced_as(&id);
}

static __always_inline u64 current_id(u64 id)
{
    return id ? id : bpf_get_current_pid_tgid();
}

#define WORD(a, b, c, d) ((u32)(a) | (u32)(b) << 8 | (u32)(c) << 16 | (u32)(d) << 24)

#define KIND_REQUEST 1
#define KIND_RESPONSE 2

/* The start of an HTTP/1.x request line (a method) or status line; userspace parses the rest. */
static __always_inline int http_kind(u64 head)
{
    u32 w = (u32)head;
    if (w == WORD('H', 'T', 'T', 'P'))
        return ((head >> 32) & 0xffffff) == WORD('/', '1', '.', 0) ? KIND_RESPONSE : 0;
    return (w == WORD('G', 'E', 'T', ' ') || w == WORD('P', 'O', 'S', 'T') ||
           w == WORD('P', 'U', 'T', ' ') || w == WORD('H', 'E', 'A', 'D') ||
           w == WORD('D', 'E', 'L', 'E') || w == WORD('P', 'A', 'T', 'C') ||
           w == WORD('O', 'P', 'T', 'I') || w == WORD('C', 'O', 'N', 'N') ||
           w == WORD('T', 'R', 'A', 'C')) ? KIND_REQUEST : 0;
}

/* st: the thread's entry in the scheduler probe's map (NULL: none). Each socket call looks it up
 * once (thread_stats_of: an array-of-maps lookup, then the inner map's through the generic
 * helper) and hands it down. */
static __always_inline void thread_figures(struct thread_stats *st, u64 *preempt,
                                           u64 *migrations, u8 *flags)
{
    if (st) {
        *flags |= F_HAVE_STATS;
        *preempt = st->preempt_delay_ns;
        *migrations = st->migrations;
        return;
    }
    if (THREADS_COMPLETE) /* not switched out since the scheduler probe started: zero so far */
        *flags |= F_HAVE_STATS;
    *preempt = 0;
    *migrations = 0;
}

/* The latest wake-up of the thread, if no request was charged with it yet: the wait it had on
 * the run queue before it could read this request. Charged once (the thread's own syscalls are
 * the only writers of wakeup_charged). ``entry_wakeups``: its count when the read began. */
static __always_inline void charge_wakeup(struct thread_stats *st, u64 entry_wakeups,
                                          struct request_event *r)
{
    r->wake_ns = 0;
    r->queued_ns = 0;
    r->wakeup_seq = 0;
    if (!st || !st->wakeups || st->wakeups <= st->wakeup_charged)
        return;
    r->wakeup_seq = st->wakeups;
    r->queued_ns = st->last_wakeup_delay_ns;
    /* It came while this read was blocked; unless a later wake-up came while the thread still
     * ran (it never waited: its wait is still open), e.g. woken by an ACK, back on the CPU and
     * about to sleep again when the data came. The data came with that later one, so the
     * completed one is older than the request: the read's own end is the start then. */
    int woken_running = st->wait_since && st->wait_kind == WAIT_WOKEN &&
                        st->wait_since > st->last_wakeup_ns;
    if (st->wakeups > entry_wakeups && !woken_running)
        r->wake_ns = st->last_wakeup_ns;
    st->wakeup_charged = st->wakeups;
}

/* A request head read (server side), its first len bytes already in the scratch slot r:
 * remember it until its response is written. id: bpf_get_current_pid_tgid(). */
static __always_inline void open_request(struct request_event *r, u64 key, u32 len, u64 total,
                                         u8 sys, u64 entry_wakeups, struct thread_stats *st,
                                         u64 id)
{
    u32 tid = (u32)id;
    r->start_ns = bpf_ktime_get_ns();
    r->tid = tid;
    r->bytes = total > 0xffffffff ? 0xffffffff : (u32)total;
    r->read_syscall = sys;
    r->start_flags = 0;
    r->_pad = 0;
    r->end_ns = 0; /* not closed: the write that closes it sets it first */
    if (!st) /* not looked up by the caller (syscall capture), or no entry */
        st = thread_stats_of(tid);
    thread_figures(st, &r->preempt_start_ns, &r->migrations_start, &r->start_flags);
    charge_wakeup(st, entry_wakeups, r);
    struct trace_ctx *ctx = trace_ctx_of(tid);
    if (ctx) {
        r->start_flags |= F_HAVE_CTX;
        __builtin_memcpy(r->ctx_trace_id, ctx->trace_id, sizeof(r->ctx_trace_id));
        __builtin_memcpy(r->ctx_span_id, ctx->span_id, sizeof(r->ctx_span_id));
    } else {
        __builtin_memset(r->ctx_trace_id, 0, sizeof(r->ctx_trace_id));
        __builtin_memset(r->ctx_span_id, 0, sizeof(r->ctx_span_id));
    }
    r->captured = len;
    long err = open_requests.insert(&key, r);
    if (err == -EEXIST) {
        count_event(CTR_UNANSWERED); /* its response never came (or the fd was reused) */
        err = open_requests.update(&key, r);
    }
    if (err)
        count_event(CTR_MAP_FULL);
}

/* The status code of a status line's first 16 bytes ("HTTP/1.1 200 OK"; zeros past the end of
 * a shorter message); 0 when not three digits. */
static __always_inline u16 status_code(const u8 *head)
{
    u8 a = head[9], b = head[10], c = head[11];
    if (a < '1' || a > '9' || b < '0' || b > '9' || c < '0' || c > '9')
        return 0;
    return (a - '0') * 100 + (b - '0') * 10 + (c - '0');
}

/* A response started (server side), status its status code: its request's record completed
 * where it lies, sent, and forgotten. id: bpf_get_current_pid_tgid(). */
static __always_inline void close_request(u64 key, u16 status, u8 sys, s32 fd,
                                          struct thread_stats *st, u64 id)
{
    struct request_event *ev = open_requests.lookup(&key);
    /* Taken by one write only, the one that sets its end: two at once on one connection would
     * each fill the end's fields of the same entry. The other is a response without its
     * request, as one with no entry is. */
    if (!ev || __sync_val_compare_and_swap(&ev->end_ns, 0, bpf_ktime_get_ns())) {
        count_event(CTR_UNMATCHED);
        return;
    }
    count_event(CTR_RB_ATTEMPTS);
    u32 tid = (u32)id;
    ev->tgid = id >> 32;
    ev->end_tid = tid;
    ev->fd = fd;
    ev->status = status;
    ev->end_flags = 0;
    ev->write_syscall = sys;
    if (!st)
        st = thread_stats_of(tid);
    thread_figures(st, &ev->preempt_end_ns, &ev->migrations_end, &ev->end_flags);
    /* The runtime sets the context after it parsed the request: the response end knows it.
     * Else the read's ids (zeros when it had none) are in place. */
    struct trace_ctx *ctx = trace_ctx_of(tid);
    if (ctx) {
        __builtin_memcpy(ev->ctx_trace_id, ctx->trace_id, sizeof(ev->ctx_trace_id));
        __builtin_memcpy(ev->ctx_span_id, ctx->span_id, sizeof(ev->ctx_span_id));
    }
    if (ctx || (ev->start_flags & F_HAVE_CTX))
        ev->end_flags |= F_HAVE_CTX;
    u64 size = offsetof(struct request_event, data) + ev->captured;
    asm volatile("" : "+r"(size)); /* keep the bound check next to the use */
    if (size > sizeof(*ev))
        size = sizeof(*ev);
    /* No wakeup: userspace drains on a timer. */
    if (request_events.ringbuf_output(ev, size, BPF_RB_NO_WAKEUP))
        count_event(CTR_RB_LOST);
    open_requests.delete(&key);
}

/* The first bytes of a user buffer of n bytes, at most cap (a constant), into dst: how many, or
 * -1 (counted) when the memory cannot be read. */
static __always_inline int read_start(void *dst, u32 cap, u64 n, u64 buf)
{
    u32 len = n < cap ? n : cap;
    asm volatile("" : "+r"(len)); /* keep the bound check next to the use */
    if (len > cap)
        len = cap;
    if (bpf_probe_read_user(dst, len, (void *)buf)) {
        count_event(CTR_READ_FAILED);
        return -1;
    }
    return len;
}

/* The start of a read or written buffer (its n bytes): a request read opens, a response
 * written closes; the client side of an exchange (request written, response read) is only
 * counted. One read of user memory each: a read's start goes straight into the scratch slot a
 * request is built in (it is one, most times), a write's first 16 bytes hold the status code.
 * id: bpf_get_current_pid_tgid(). */
static __always_inline void capture(u64 buf, u64 n, u64 total, s32 fd, u8 dir, u8 sys,
                                    u64 entry_wakeups, struct thread_stats *st, u64 id)
{
    if (n < 8 || !buf)
        return;
    u64 key = (id & 0xffffffff00000000ULL) | (u32)fd;
    if (dir == DIR_READ) {
        u32 zero = 0;
        struct request_event *r = scratch.lookup(&zero);
        if (!r)
            return;
        int len = read_start(r->data, CAPTURE_BYTES, n, buf);
        if (len < 0)
            return;
        int kind = http_kind(*(u64 *)r->data);
        if (kind == KIND_REQUEST)
            open_request(r, key, len, total, sys, entry_wakeups, st, id);
        else
            count_event(kind ? CTR_CLIENT : CTR_NOT_HTTP);
        return;
    }
    u64 head[2] = {};
    if (read_start(head, sizeof(head), n, buf) < 0)
        return;
    int kind = http_kind(head[0]);
    if (kind == KIND_RESPONSE)
        close_request(key, status_code((const u8 *)head), sys, fd, st, id);
    else
        count_event(kind ? CTR_CLIENT : CTR_NOT_HTTP);
}

/* The first iovec of a user msghdr or iovec array: where the message starts. */
static __always_inline int first_iovec(u64 iov_ptr, struct uiovec *out)
{
    if (!iov_ptr || bpf_probe_read_user(out, sizeof(*out), (void *)iov_ptr)) {
        count_event(CTR_READ_FAILED);
        return -1;
    }
    return 0;
}

static __always_inline int msghdr_iovec(u64 msg_ptr, struct uiovec *out)
{
    struct umsghdr m = {};
    if (!msg_ptr || bpf_probe_read_user(&m, sizeof(m), (void *)msg_ptr)) {
        count_event(CTR_READ_FAILED);
        return -1;
    }
    if (!m.iovlen)
        return -1;
    return first_iovec(m.iov, out);
}

#if SOCK_IO
/* x86-64 syscall numbers (the only layout user_regs knows) */
#define NR_READ 0
#define NR_WRITE 1
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47

#define MSG_PEEK 2

/* Where the syscall in progress put (or took) its bytes: the buffer, how much it holds, the fd
 * and which call it is. Other ways into a socket (sendfile, splice, recvmmsg, io_uring, the
 * kernel's own sockets) are counted and left alone. */
static __always_inline int user_buffer(struct user_regs *r, int dir, u64 *buf, u64 *cap, u8 *sys)
{
    struct uiovec iov = {};
    u64 nr = r->orig_ax;
    if (dir == DIR_READ && (nr == NR_READ || nr == NR_RECVFROM)) {
        *buf = r->si;
        *cap = r->dx;
        *sys = nr == NR_READ ? SYS_READ : SYS_RECVFROM;
    } else if (dir == DIR_WRITE && (nr == NR_WRITE || nr == NR_SENDTO)) {
        *buf = r->si;
        *cap = r->dx;
        *sys = nr == NR_WRITE ? SYS_WRITE : SYS_SENDTO;
    } else if ((dir == DIR_READ && nr == NR_RECVMSG) || (dir == DIR_WRITE && nr == NR_SENDMSG)) {
        if (msghdr_iovec(r->si, &iov))
            return -1;
        *buf = iov.base;
        *cap = iov.len;
        *sys = dir == DIR_READ ? SYS_RECVMSG : SYS_SENDMSG;
    } else if ((dir == DIR_READ && nr == NR_READV) || (dir == DIR_WRITE && nr == NR_WRITEV)) {
        if (!r->dx || first_iovec(r->si, &iov))
            return -1;
        *buf = iov.base;
        *cap = iov.len;
        *sys = dir == DIR_READ ? SYS_READV : SYS_WRITEV;
    } else {
        count_event(CTR_OTHER_CALL);
        return -1;
    }
    return 0;
}

/* A socket call of a traced thread (its entry st, NULL: none): the syscall it last slept in
 * (1 + its number, 0: none since the last call) and that syscall's fd, which the scheduler probe
 * noted; forgotten now. The thread and its process's leader are marked, so that the scheduler
 * probe notes the sleeps of the thread and of every thread either creates from now on (a
 * thread-per-connection server's acceptor never reads: its new threads are marked through the
 * leader). The leader is looked up until it is found marked once (MARKED_WITH_LEADER). */
#define MARKED_WITH_LEADER 2
static __always_inline u32 take_sleep(struct thread_stats *st, u64 *fd, u64 id)
{
    if (!st)
        return 0;
    u32 nr = st->sleep_nr;
    *fd = st->sleep_fd;
    st->sleep_nr = 0;
    if (st->note_sleep != MARKED_WITH_LEADER) {
        u32 mark = MARKED_WITH_LEADER;
        if ((u32)id != id >> 32) {
            struct thread_stats *leader = thread_stats_of(id >> 32);
            if (!leader)
                mark = 1; /* no entry yet: looked for again at the next call */
            else if (!leader->note_sleep)
                leader->note_sleep = 1;
        }
        st->note_sleep = mark;
    }
    return nr;
}

/* A socket call of a traced thread in direction dir (DIR_READ or DIR_WRITE): its registers,
 * the user buffer it moved (and how much that holds), and the sleep the scheduler probe noted.
 * Non-zero when there is nothing to capture (not traced, or another way in). */
struct socket_call {
    struct user_regs regs;
    u64 buf;
    u64 cap;
    u64 slept_fd;
    struct thread_stats *st;
    u64 id;                    /* bpf_get_current_pid_tgid() */
    u32 slept;
    u8 sys;
};

static __always_inline int socket_call(int dir, struct socket_call *c)
{
    u64 id = 0;
    if (!traced_as(&id))
        return -1;
    c->id = current_id(id);
    user_regs(&c->regs);
    if (user_buffer(&c->regs, dir, &c->buf, &c->cap, &c->sys))
        return -1;
    c->st = thread_stats_of((u32)c->id);
    c->slept = take_sleep(c->st, &c->slept_fd, c->id);
    return 0;
}

/* Data received by a traced thread: a request head opens. It blocked if the thread's last
 * sleep was in this very call (same syscall, same fd, noted at switch-out). */
int wasmtop_sock_recv(struct tracepoint__sock__sock_recv_length *args)
{
    struct socket_call c = {};
    if (args->flags & MSG_PEEK)
        return 0; /* the read that follows takes the sleep (the data's arrival ended it) */
    if (args->ret <= 0) {
        /* Interrupted, or nothing to read: the sleep it noted ended here, and must not be
         * taken for the wait of a later read on the same fd that did not sleep. */
        u64 fd, id = 0;
        if (traced_as(&id)) {
            id = current_id(id);
            take_sleep(thread_stats_of((u32)id), &fd, id);
        }
        return 0;
    }
    if (socket_call(DIR_READ, &c))
        return 0;
    /* it slept in this read: its latest wake-up ended it; else no wake-up came during it */
    u64 entry_wakeups = c.slept == (u32)c.regs.orig_ax + 1 && c.slept_fd == c.regs.di ? 0 : ~0ULL;
    u64 ret = (u64)args->ret;
    capture(c.buf, ret < c.cap ? ret : c.cap, ret, (s32)c.regs.di, DIR_READ, c.sys, entry_wakeups,
            c.st, c.id);
    return 0;
}

/* Data sent by a traced thread: a response head closes its request. The send has returned
 * here: a response's end is when its first send returned (a blocking send's wait included). */
int wasmtop_sock_send(struct tracepoint__sock__sock_send_length *args)
{
    struct socket_call c = {};
    if (args->ret <= 0 || socket_call(DIR_WRITE, &c))
        return 0;
    capture(c.buf, c.cap, c.cap, (s32)c.regs.di, DIR_WRITE, c.sys, 0, c.st, c.id);
    return 0;
}
#else
static __always_inline int remember_read(s32 fd, u64 buf, u64 cap, u32 sys)
{
    if (!traced())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct pending_read r = {.buf = buf, .cap = cap, .fd = fd, .syscall = sys};
    struct thread_stats *st = thread_stats_of(tid);
    r.wakeups = st ? st->wakeups : 0;
    if (pending_reads.update(&tid, &r))
        count_event(CTR_MAP_FULL);
    return 0;
}

static __always_inline int finish_read(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct pending_read *p = pending_reads.lookup(&tid);
    if (!p)
        return 0;
    struct pending_read r = *p;
    pending_reads.delete(&tid);
    if (ret <= 0)
        return 0;
    u64 n = (u64)ret < r.cap ? (u64)ret : r.cap;
    capture(r.buf, n, ret, r.fd, DIR_READ, r.syscall, r.wakeups, NULL, id);
    return 0;
}

int wasmtop_enter_read(struct tracepoint__syscalls__sys_enter_read *args)
{
    return remember_read(args->fd, (u64)args->buf, args->count, SYS_READ);
}

int wasmtop_enter_recvfrom(struct tracepoint__syscalls__sys_enter_recvfrom *args)
{
    return remember_read(args->fd, (u64)args->ubuf, args->size, SYS_RECVFROM);
}

int wasmtop_enter_recvmsg(struct tracepoint__syscalls__sys_enter_recvmsg *args)
{
    if (!traced())
        return 0;
    struct uiovec iov;
    if (msghdr_iovec((u64)args->msg, &iov))
        return 0;
    return remember_read(args->fd, iov.base, iov.len, SYS_RECVMSG);
}

int wasmtop_exit_read(struct tracepoint__syscalls__sys_exit_read *args)
{
    return finish_read(args->ret);
}

int wasmtop_exit_recvfrom(struct tracepoint__syscalls__sys_exit_recvfrom *args)
{
    return finish_read(args->ret);
}

int wasmtop_exit_recvmsg(struct tracepoint__syscalls__sys_exit_recvmsg *args)
{
    return finish_read(args->ret);
}

int wasmtop_enter_write(struct tracepoint__syscalls__sys_enter_write *args)
{
    if (traced())
        capture((u64)args->buf, args->count, args->count, args->fd, DIR_WRITE, SYS_WRITE, 0, NULL,
                bpf_get_current_pid_tgid());
    return 0;
}

int wasmtop_enter_sendto(struct tracepoint__syscalls__sys_enter_sendto *args)
{
    if (traced())
        capture((u64)args->buff, args->len, args->len, args->fd, DIR_WRITE, SYS_SENDTO, 0, NULL,
                bpf_get_current_pid_tgid());
    return 0;
}

int wasmtop_enter_sendmsg(struct tracepoint__syscalls__sys_enter_sendmsg *args)
{
    if (!traced())
        return 0;
    struct uiovec iov;
    if (!msghdr_iovec((u64)args->msg, &iov))
        capture(iov.base, iov.len, iov.len, args->fd, DIR_WRITE, SYS_SENDMSG, 0, NULL,
                bpf_get_current_pid_tgid());
    return 0;
}

int wasmtop_enter_writev(struct tracepoint__syscalls__sys_enter_writev *args)
{
    if (!traced() || !args->vlen)
        return 0;
    struct uiovec iov;
    if (!first_iovec((u64)args->vec, &iov))
        capture(iov.base, iov.len, iov.len, args->fd, DIR_WRITE, SYS_WRITEV, 0, NULL,
                bpf_get_current_pid_tgid());
    return 0;
}

#endif /* SOCK_IO */

/* A traced process that exits stops being traced at once: a new process that gets its pid is
 * judged afresh by userspace, never traced by inheritance. EXIT_GROUP_DEAD: the tracepoint says
 * when the last thread of the group exits (Linux 6.9+); before that, the leader's exit ends it. */
int wasmtop_process_exit(struct tracepoint__sched__sched_process_exit *args)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
    if (!LAST_OF_GROUP(args, id))
        return 0;
    if (traced_tgids.delete(&tgid) == 0)
        count_event(CTR_EXITED);
    return 0;
}
