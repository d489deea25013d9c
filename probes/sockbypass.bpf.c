/* wasmtop socket-bypass probe: which local TCP connections could skip (observe) or do skip
 * (accelerate) the TCP/IP stack, and how many bytes and messages took which way.
 *
 * Programs (attached by probes/sockbypass.py):
 *   wasmtop_sockops   sockops on a cgroup v2 directory: connection records, RTT, close, and in
 *                     accelerate mode enrolment of eligible sockets in sock_hash
 *   wasmtop_sk_msg    sk_msg verdict on sock_hash (accelerate mode only): redirect each sendmsg
 *                     to the peer socket's ingress queue, or let it go the normal way, counted
 *   wasmtop_foreign_redirect  kprobe on tcp_bpf_sendmsg_redir (kernels with kprobes): other
 *                     agents' redirects, by sending process
 *
 * Bytes that went through the stack are the TCP stack's own counters (bytes_acked, as of the
 * last RTT or state callback, less the SYN and FIN), read per connection: nothing runs per
 * packet.
 *
 * Uses only the bpf_sock_ops / sk_msg_md contexts and helpers (no kernel struct
 * layouts: the headers BCC compiles against may be of another kernel version).
 *
 * Compiled in (cflags): MAX_CONNS, MAX_BYPASS, MAX_NETS, RINGBUF_PAGES, ACCELERATE (0/1),
 *   SOCKOPS_PID (0/1: sockops may call bpf_get_current_pid_tgid), FOREIGN_KPROBE (0/1: the
 *   kernel has kprobes; wasmtop_foreign_redirect reads a kprobe's pt_regs, the only use of
 *   a kernel register layout here), MAX_FOREIGN_PROCS, REASON_*, KIND_*, MODE_SELF_TEST, CTR_*.
 */
#include <uapi/linux/tcp.h>

/* One direction of a connection, seen from the socket that sends: addresses as IPv6 (IPv4 as
 * ::ffff:a.b.c.d, so a dual-stack server and an IPv4 client name the same pair), ports in host
 * order. `netns` is the network namespace cookie for loopback pairs (the same 127.0.0.1 pair can
 * exist in every namespace; peers on loopback always share one) and 0 otherwise. */
struct sock_key {
    u32 local_ip[4];
    u32 remote_ip[4];
    u32 local_port;
    u32 remote_port;
    u64 netns;
};

struct conn {
    struct sock_key key;
    u64 established_ns;
    u64 closed_ns;
    u32 pid;             /* owning process: the connecting or the sending one, 0 = unknown */
    u32 srtt_us;         /* smoothed RTT from the last RTT callback */
    u8 active;           /* 1 = this side connected, 0 = accepted */
    u8 eligible;         /* both ends local */
    u8 enrolled;         /* in sock_hash (accelerate mode) */
    u8 fallback_reason;  /* REASON_*: why this side's messages go the normal way */
    u8 fin_acked;        /* this side's FIN was acknowledged (bytes_acked counts it as 1) */
    u8 _pad[3];
    u64 tcp_bytes_acked;    /* the TCP stack's own counters, as of the last callback; */
                            /* bytes_acked counts the connecting side's SYN, and the FIN */
    u64 tcp_bytes_received;
    u64 msgs_redirected;
    u64 bytes_redirected;
    u64 msgs_passed;        /* went the normal way: this side fell back earlier */
    u64 bytes_passed;
    u64 msgs_failed;        /* a redirect was tried and was not possible (peer not enrolled) */
    u64 bytes_failed;
};
BPF_HASH(conns, u64, struct conn, MAX_CONNS);          /* socket cookie -> record */
BPF_HASH(conn_cookie, struct sock_key, u64, MAX_CONNS); /* for sk_msg, which has no cookie */
BPF_TABLE("lru_hash", u64, u32, connect_pid, MAX_CONNS); /* cookie -> pid at connect() */

struct net_key {
    u32 prefixlen;
    u32 ip[4];
};
BPF_LPM_TRIE(local_nets, struct net_key, u8, MAX_NETS);

BPF_SOCKHASH(sock_hash, struct sock_key, MAX_BYPASS);

#if FOREIGN_KPROBE
/* Other agents' redirects (a sockmap of theirs, e.g. a CNI's), counted on the kernel's redirect
 * path by the process that sent: every call of tcp_bpf_sendmsg_redir but those of ours, which
 * wasmtop_sk_msg marks in the sending thread just before. */
struct foreign_count {
    u64 msgs;
    u64 bytes;
};
BPF_TABLE("lru_hash", u32, struct foreign_count, foreign_redirects, MAX_FOREIGN_PROCS);
BPF_TABLE("lru_hash", u64, u8, our_redirect, 4096); /* thread -> 1: its redirect is ours */

/* int tcp_bpf_sendmsg_redir(struct sock *sk, bool ingress, struct sk_msg *msg, u32 bytes,
 * int flags) since Linux 6.2 and its stable backports (5.15.86, 6.1.x); before, without
 * ingress, bytes was the third. FOREIGN_BYTES_ARG says which, from the kernel's BTF: 4, 3, or
 * 0 when it cannot be told (bytes are then not counted). */
int wasmtop_foreign_redirect(struct pt_regs *ctx)
{
    u64 thread = bpf_get_current_pid_tgid();
    if (our_redirect.lookup(&thread)) {
        our_redirect.delete(&thread);
        return 0;
    }
    u32 tgid = thread >> 32;
    struct foreign_count zero = {};
    struct foreign_count *c = foreign_redirects.lookup_or_try_init(&tgid, &zero);
    if (c) {
        __sync_fetch_and_add(&c->msgs, 1);
#if FOREIGN_BYTES_ARG == 4
        __sync_fetch_and_add(&c->bytes, (u32)PT_REGS_PARM4(ctx));
#elif FOREIGN_BYTES_ARG == 3
        __sync_fetch_and_add(&c->bytes, (u32)PT_REGS_PARM3(ctx));
#endif
    }
    return 0;
}
#endif

/* Index 0: 0 = no enrolment, 1 = enrolment allowed, 2 = the start-up self-test's sockets only:
 * loopback connections to or from the port at index 1. Userspace allows all only once the
 * self-test has passed, and clears it at stop, so the kernel stops enrolling without a reload. */
BPF_ARRAY(mode, u32, 2);

struct bypass_event {
    u64 ts_ns;
    u64 cookie;
    u64 bytes;
    u32 pid;
    u16 local_port;
    u16 remote_port;
    u32 local_ip[4];
    u32 remote_ip[4];
    u8 kind;
    u8 reason;
    u8 _pad[6];
};
BPF_RINGBUF_OUTPUT(bypass_events, RINGBUF_PAGES);

static __always_inline void emit(u8 kind, u64 cookie, struct conn *c, u64 bytes)
{
    count_event(CTR_RB_ATTEMPTS);
    struct bypass_event *ev = bypass_events.ringbuf_reserve(sizeof(*ev));
    if (!ev) {
        count_event(CTR_RB_LOST);
        return;
    }
    ev->ts_ns = bpf_ktime_get_ns();
    ev->cookie = cookie;
    ev->bytes = bytes;
    ev->pid = c->pid;
    ev->local_port = c->key.local_port;
    ev->remote_port = c->key.remote_port;
    __builtin_memcpy(ev->local_ip, c->key.local_ip, sizeof(ev->local_ip));
    __builtin_memcpy(ev->remote_ip, c->key.remote_ip, sizeof(ev->remote_ip));
    ev->kind = kind;
    ev->reason = c->fallback_reason;
    __builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
    bypass_events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

static __always_inline void v4_mapped(u32 *ip, u32 v4)
{
    ip[0] = 0;
    ip[1] = 0;
    ip[2] = bpf_htonl(0xffff);
    ip[3] = v4;
}

static __always_inline int is_loopback(const u32 *ip)
{
    if (ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0xffff))
        return (bpf_ntohl(ip[3]) >> 24) == 127;
    return ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == bpf_htonl(1);
}

static __always_inline int is_local(const u32 *ip)
{
    struct net_key k = {.prefixlen = 128};
    __builtin_memcpy(k.ip, ip, sizeof(k.ip));
    return local_nets.lookup(&k) != 0;
}

/* Context fields are read unconditionally, one constant offset each: the verifier refuses a
 * context pointer the compiler has offset by a branch-dependent amount. The same text serves
 * bpf_sock_ops and sk_msg_md, whose address and port fields have the same names and encoding. */
#define CTX_READ(field) (*(volatile u32 *)&(field))
#define KEY_OF_CTX(ctx, k, netns_cookie)                                                      \
    do {                                                                                      \
        u32 fam = CTX_READ(ctx->family);                                                      \
        u32 l4 = CTX_READ(ctx->local_ip4), r4 = CTX_READ(ctx->remote_ip4);                    \
        u32 l6[4] = {CTX_READ(ctx->local_ip6[0]), CTX_READ(ctx->local_ip6[1]),                \
                     CTX_READ(ctx->local_ip6[2]), CTX_READ(ctx->local_ip6[3])};               \
        u32 r6[4] = {CTX_READ(ctx->remote_ip6[0]), CTX_READ(ctx->remote_ip6[1]),              \
                     CTX_READ(ctx->remote_ip6[2]), CTX_READ(ctx->remote_ip6[3])};             \
        if (fam == AF_INET) {                                                                 \
            v4_mapped((k)->local_ip, l4);                                                     \
            v4_mapped((k)->remote_ip, r4);                                                    \
        } else {                                                                              \
            __builtin_memcpy((k)->local_ip, l6, sizeof(l6));                                  \
            __builtin_memcpy((k)->remote_ip, r6, sizeof(r6));                                 \
        }                                                                                     \
        (k)->local_port = CTX_READ(ctx->local_port);              /* host order */           \
        (k)->remote_port = bpf_ntohl(CTX_READ(ctx->remote_port)); /* network order, upper */ \
        (k)->netns = is_loopback((k)->remote_ip) ? (netns_cookie) : 0;                        \
    } while (0)

static __always_inline void key_of_sock_ops(struct bpf_sock_ops *skops, struct sock_key *k)
{
    KEY_OF_CTX(skops, k, bpf_get_netns_cookie(skops));
}

static __always_inline void key_of_msg(struct sk_msg_md *msg, struct sock_key *k)
{
    KEY_OF_CTX(msg, k, bpf_get_netns_cookie(msg));
}

static __always_inline void peer_of(const struct sock_key *k, struct sock_key *p)
{
    __builtin_memcpy(p->local_ip, k->remote_ip, sizeof(p->local_ip));
    __builtin_memcpy(p->remote_ip, k->local_ip, sizeof(p->remote_ip));
    p->local_port = k->remote_port;
    p->remote_port = k->local_port;
    p->netns = k->netns;
}

static __always_inline void enrol(struct bpf_sock_ops *skops, u64 cookie, struct conn *c)
{
    u32 zero = 0, one = 1;
    u32 *on = mode.lookup(&zero);
    if (!on || !*on)
        return;
    if (*on == MODE_SELF_TEST) {
        u32 *port = mode.lookup(&one);
        if (!port || !is_loopback(c->key.remote_ip) ||
            (c->key.local_port != *port && c->key.remote_port != *port))
            return; /* a user's socket, while the self-test runs: left alone */
    }
    /* bytes_acked counts the SYN as one byte on the connecting side. */
    if (skops->bytes_received || skops->bytes_acked > 1) {
        /* Data already went through the stack (TCP Fast Open): redirecting the rest could
         * overtake it in the peer's queue. */
        c->fallback_reason = REASON_DATA_BEFORE_ENROL;
        count_event(CTR_FALLBACK_DATA_BEFORE_ENROL);
    } else {
        long err = sock_hash.sock_hash_update(skops, &c->key, BPF_NOEXIST);
        if (err == 0) {
            c->enrolled = 1;
            if (conn_cookie.update(&c->key, &cookie))
                count_event(CTR_MAP_FULL);
            emit(KIND_ENROL, cookie, c, 0);
            return;
        }
        if (err == -E2BIG || err == -ENOMEM) {
            c->fallback_reason = REASON_MAP_FULL;
            count_event(CTR_FALLBACK_MAP_FULL);
        } else {
            c->fallback_reason = REASON_ENROL_FAILED;
            count_event(CTR_FALLBACK_ENROL_FAILED);
        }
    }
    emit(KIND_FALLBACK, cookie, c, 0);
}

static __always_inline void established(struct bpf_sock_ops *skops, u8 active)
{
    u64 cookie = bpf_get_socket_cookie(skops);
    struct conn c = {.active = active, .established_ns = bpf_ktime_get_ns()};
    key_of_sock_ops(skops, &c.key);
    if (active) {
        u32 *pid = connect_pid.lookup(&cookie);
        if (pid) {
            c.pid = *pid;
            connect_pid.delete(&cookie);
        }
    }
    c.eligible = is_local(c.key.local_ip) && is_local(c.key.remote_ip);
    /* Recorded before it is enrolled: a socket with no record gets no state callbacks, so an
     * enrolled one would keep its conn_cookie entry for good, and its redirects would be
     * counted nowhere. Without a record it is neither enrolled nor redirected. */
    if (conns.update(&cookie, &c)) {
        count_event(CTR_MAP_FULL);
        return;
    }
    if (ACCELERATE && c.eligible) {
        struct conn *rec = conns.lookup(&cookie);
        if (rec)
            enrol(skops, cookie, rec);
    }
    bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG);
}

int wasmtop_sockops(struct bpf_sock_ops *skops)
{
    if (skops->family != AF_INET && skops->family != AF_INET6)
        return 1;
    u32 op = skops->op;
#if SOCKOPS_PID
    if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
        /* connect() runs in the connecting process: the one moment its pid is certain. */
        u64 cookie = bpf_get_socket_cookie(skops);
        u32 pid = bpf_get_current_pid_tgid() >> 32;
        connect_pid.update(&cookie, &pid);
        return 1;
    }
#endif /* else (a kernel that refuses the helper here): the owner is found from /proc */
    if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
        established(skops, 1);
        return 1;
    }
    if (op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB) {
        established(skops, 0);
        return 1;
    }
    if (op != BPF_SOCK_OPS_RTT_CB && op != BPF_SOCK_OPS_STATE_CB)
        return 1;

    u64 cookie = bpf_get_socket_cookie(skops);
    struct conn *c = conns.lookup(&cookie);
    if (!c)
        return 1;
    c->tcp_bytes_acked = skops->bytes_acked;
    c->tcp_bytes_received = skops->bytes_received;
    if (op == BPF_SOCK_OPS_RTT_CB) {
        c->srtt_us = skops->srtt_us >> 3; /* the kernel keeps srtt scaled by 8 */
        return 1;
    }
    /* This side's FIN is acknowledged when it reaches FIN_WAIT2, or leaves CLOSING or LAST_ACK
     * for CLOSE after the ACK that bytes_acked already counted; a reset or a timeout takes the
     * same way to CLOSE with the FIN unacknowledged: then snd_una is still short of snd_nxt. */
    u32 old = skops->args[0], now = skops->args[1];
    if ((now == BPF_TCP_FIN_WAIT2 ||
         (now == BPF_TCP_CLOSE && (old == BPF_TCP_CLOSING || old == BPF_TCP_LAST_ACK))) &&
        skops->snd_una == skops->snd_nxt)
        c->fin_acked = 1;
    if (now == BPF_TCP_CLOSE && !c->closed_ns) {
        c->closed_ns = bpf_ktime_get_ns();
        if (c->enrolled)
            conn_cookie.delete(&c->key); /* the kernel drops the socket from sock_hash itself */
        emit(KIND_CLOSE, cookie, c, c->bytes_redirected);
    }
    return 1;
}

int wasmtop_sk_msg(struct sk_msg_md *msg)
{
    struct sock_key key = {};
    key_of_msg(msg, &key);
    u32 size = msg->size;
    u64 *cookie = conn_cookie.lookup(&key);
    struct conn *c = cookie ? conns.lookup(cookie) : 0;
    if (!c) {
        count_event(CTR_MSG_UNTRACKED);
        return SK_PASS;
    }
    u64 ck = *cookie;
    if (!c->pid)
        c->pid = bpf_get_current_pid_tgid() >> 32; /* sendmsg runs in the sender */
    u32 zero = 0;
    u32 *on = mode.lookup(&zero);
    if (c->fallback_reason || !on || !*on) {
        /* Fell back earlier, or wasmtop is stopping (the peer reads what was redirected
         * before what the stack brings, so passing now reorders nothing). */
        /* Once a message of this socket went the normal way, all later ones do too: a redirect
         * would overtake bytes still in the stack. */
        c->msgs_passed += 1;
        c->bytes_passed += size;
        return SK_PASS;
    }
    struct sock_key peer = {};
    peer_of(&key, &peer);
    if (sock_hash.msg_redirect_hash(msg, &peer, BPF_F_INGRESS) == SK_PASS) {
#if FOREIGN_KPROBE
        /* The kernel's redirect path (tcp_bpf_sendmsg_redir) runs next in this thread: ours. */
        u64 thread = bpf_get_current_pid_tgid();
        u8 one = 1;
        our_redirect.update(&thread, &one);
#endif
        if (c->msgs_redirected == 0)
            emit(KIND_FIRST_REDIRECT, ck, c, size);
        c->msgs_redirected += 1;
        c->bytes_redirected += size;
        return SK_PASS;
    }
    /* Peer not enrolled (not local, its enrolment failed, or closed): the helper set no
     * redirect, so SK_PASS sends this message through the stack. */
    c->fallback_reason = REASON_PEER_MISSING;
    c->msgs_failed += 1;
    c->bytes_failed += size;
    count_event(CTR_FALLBACK_PEER_MISSING);
    emit(KIND_FALLBACK, ck, c, size);
    return SK_PASS;
}
