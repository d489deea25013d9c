/*
 * wasmtop.probes._tracefast: the per-request work of the trace-context path, compiled.
 *
 *   take_requests(ring, page, mask, cons, prod, record_type, capture_bytes, read_mask,
 *                 write_mask) -> (cons, records, malformed)
 *       The submitted records of a BPF ring buffer between the consumer and producer
 *       positions (probes/ringbuf.py says how the ring is laid out), each decoded as
 *       probes/decoders.py request_event decodes it: a RequestRecord (``record_type``, built
 *       positionally) or, when request_event would raise DecodeError, one more ``malformed``.
 *       ``cons`` is where the consumer position goes next (past BUSY records it stops).
 *
 *   fast_head(head_type, data) -> Head | None
 *       collector/httpmsg.py _fast_head on the bytes: the Head of a common request head, or None
 *       when the general parser must decide. Every branch mirrors a line of _fast_head; a
 *       property test holds the two (and parse_head_general) to the same answer.
 *
 *   feed_known(records, i, head_type, workloads, named, windows, done, conn, cap) -> int
 *       collector/correlate.py RequestTracker.feed for records[i:], as long as each is the
 *       common case (its docstring there says which); returns the index of the first record
 *       it did not take, which Python then feeds.
 *
 * They read only inside the buffers they are given: every index is checked against a length.
 * The pure-Python code they replace stays, and is used when this module is not built
 * (WASMTOP_PURE_PYTHON=1 forces it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *Py_NewRef(PyObject *o) {
    Py_INCREF(o);
    return o;
}
#endif

/* struct request_event in tracectx.bpf.c (little-endian x86-64; checked against the Python
 * decoder by tests/unit/test_tracefast.py) */
#define OFF_START 0
#define OFF_END 8
#define OFF_WAKE 16
#define OFF_QUEUED 24
#define OFF_SEQ 32
#define OFF_P_START 40
#define OFF_P_END 48
#define OFF_M_START 56
#define OFF_M_END 64
#define OFF_TGID 72
#define OFF_TID 76
#define OFF_END_TID 80
#define OFF_FD 84
#define OFF_CAPTURED 92
#define OFF_STATUS 94
#define OFF_START_FLAGS 96
#define OFF_END_FLAGS 97
#define OFF_READ_SYS 98
#define OFF_WRITE_SYS 99
#define OFF_CTX_TRACE 104
#define OFF_CTX_SPAN 120
#define OFF_DATA 128
#define HAVE_STATS 1
#define HAVE_CTX 2
#define RECORD_FIELDS 17

#define BUSY_BIT (1u << 31)
#define DISCARD_BIT (1u << 30)
#define HEADER_BYTES 8

#define PATH_MAX_CHARS 64 /* collector/httpmsg.py PATH_MAX_CHARS */

static PyObject *s_request, *s_traceparent, *t_truncated, *t_empty;

static inline uint64_t u64_at(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static inline uint32_t u32_at(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline uint16_t u16_at(const unsigned char *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* -- strings seen again and again: methods and paths, by their bytes ------------------------ */

#define CACHE_SLOTS 256 /* direct-mapped: a colliding string replaces the slot's (bounded) */
struct cached_str {
    Py_ssize_t len;
    char bytes[PATH_MAX_CHARS];
    PyObject *str; /* owned; NULL: empty slot */
};
static struct cached_str str_cache[CACHE_SLOTS];

/* The str of ASCII bytes (at most PATH_MAX_CHARS), from the cache when it holds them. A new
 * reference, or NULL with an exception set. */
static PyObject *ascii_str(const unsigned char *p, Py_ssize_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    struct cached_str *slot = &str_cache[(h ^ (h >> 16)) % CACHE_SLOTS];
    if (slot->str != NULL && slot->len == n && memcmp(slot->bytes, p, (size_t)n) == 0) {
        Py_INCREF(slot->str);
        return slot->str;
    }
    PyObject *s = PyUnicode_DecodeASCII((const char *)p, n, "strict");
    if (s == NULL)
        return NULL;
    if (n <= PATH_MAX_CHARS) {
        Py_XSETREF(slot->str, Py_NewRef(s));
        slot->len = n;
        memcpy(slot->bytes, p, (size_t)n);
    }
    return s;
}

/* -- the head fast path ------------------------------------------------------------------ */

static inline int is_upper(unsigned char c) { return c >= 'A' && c <= 'Z'; }
static inline int is_visible(unsigned char c) { return c >= '!' && c <= '~'; }
static inline int is_path_char(unsigned char c) { return is_visible(c) && c != '#' && c != '?'; }
static inline int lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }
static inline int hex_value(unsigned char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* uppercase too: W3C asks for lowercase */
}

/* data[at:] starts with the ASCII word (lowercase) case-insensitively */
static int starts_ci(const unsigned char *d, Py_ssize_t n, Py_ssize_t at, const char *word) {
    Py_ssize_t k = (Py_ssize_t)strlen(word);
    if (at < 0 || at + k > n)
        return 0;
    for (Py_ssize_t i = 0; i < k; i++)
        if (lower(d[at + i]) != (unsigned char)word[i])
            return 0;
    return 1;
}

/* The first "\n" followed by ``word`` (case-insensitive) at or after ``from``, or -1. */
static Py_ssize_t find_line_ci(const unsigned char *d, Py_ssize_t n, Py_ssize_t from,
                               const char *word) {
    if (from < 0)
        from = 0;
    for (Py_ssize_t i = from; i < n; i++) {
        const unsigned char *nl = memchr(d + i, '\n', (size_t)(n - i));
        if (nl == NULL)
            return -1;
        i = nl - d;
        if (starts_ci(d, n, i + 1, word))
            return i;
    }
    return -1;
}

/* re.compile(rb"\n\r?\n").search(data, from): its start, or -1 */
static Py_ssize_t find_blank(const unsigned char *d, Py_ssize_t n, Py_ssize_t from) {
    for (Py_ssize_t i = from; i < n; i++) {
        const unsigned char *nl = memchr(d + i, '\n', (size_t)(n - i));
        if (nl == NULL)
            return -1;
        i = nl - d;
        if (i + 1 < n && d[i + 1] == '\n')
            return i;
        if (i + 2 < n && d[i + 1] == '\r' && d[i + 2] == '\n')
            return i;
    }
    return -1;
}

/* hex digits d[0:2n] into out[0:n]; 0 unless all are lowercase hex */
static int unhex(const unsigned char *d, Py_ssize_t n, unsigned char *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        int hi = hex_value(d[2 * i]), lo = hex_value(d[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return 0;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 1;
}

static int all_zero(const unsigned char *p, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* _fast_head: a new reference to a Head, Py_None (new reference) when the general parser must
 * decide, or NULL with an exception set (memory). */
static PyObject *fast_head_of(const unsigned char *d, Py_ssize_t n, PyTypeObject *head_type) {
    /* _FAST_START.match: ([A-Z]{3,16}) (/[path chars]*)(?:[?#][!-~]*)? HTTP/1\.[01]\r?\n */
    Py_ssize_t i = 0;
    while (i < n && i < 17 && is_upper(d[i]))
        i++;
    Py_ssize_t method_len = i;
    if (method_len < 3 || method_len > 16 || i >= n || d[i] != ' ')
        Py_RETURN_NONE;
    i++;
    Py_ssize_t path_start = i;
    if (i >= n || d[i] != '/')
        Py_RETURN_NONE;
    i++;
    while (i < n && is_path_char(d[i]))
        i++;
    Py_ssize_t path_len = i - path_start;
    if (i < n && (d[i] == '?' || d[i] == '#')) {
        i++;
        while (i < n && is_visible(d[i]))
            i++;
    }
    if (i + 9 > n || memcmp(d + i, " HTTP/1.", 8) != 0 || (d[i + 8] != '0' && d[i + 8] != '1'))
        Py_RETURN_NONE;
    i += 9;
    if (i < n && d[i] == '\r')
        i++;
    if (i >= n || d[i] != '\n')
        Py_RETURN_NONE;
    Py_ssize_t first_end = i; /* the start line's "\n" */
    /* _FAST_OTHER_TRACE_LINE.search(data): anywhere in the data */
    if (find_line_ci(d, n, 0, "tracestate:") >= 0 || find_line_ci(d, n, 0, "x-traceid-bytes:") >= 0)
        Py_RETURN_NONE;
    Py_ssize_t blank = find_blank(d, n, first_end);
    Py_ssize_t headers_end;
    if (blank >= 0) {
        headers_end = blank + 1;
    } else {
        const unsigned char *last = NULL;
        for (Py_ssize_t k = n - 1; k >= 0; k--)
            if (d[k] == '\n') {
                last = d + k;
                break;
            }
        headers_end = last ? (last - d) + 1 : 0;
    }
    unsigned char trace_id[16], parent_id[8];
    int have_trace = 0, flags = 0;
    Py_ssize_t at = find_line_ci(d, n, first_end, "traceparent:");
    if (at >= 0) {
        const unsigned char *nl = memchr(d + at + 1, '\n', (size_t)(n - at - 1));
        Py_ssize_t eol = nl ? nl - d : -1;
        if (eol < 0 || eol >= headers_end || find_line_ci(d, n, eol, "traceparent:") >= 0)
            Py_RETURN_NONE;
        /* _FAST_TRACEPARENT.match(data, at + 13, eol):
         * [ \t]*00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})[ \t]*\r?\Z */
        Py_ssize_t v = at + 13, end = eol;
        while (v < end && (d[v] == ' ' || d[v] == '\t'))
            v++;
        if (end - v < 55 || d[v] != '0' || d[v + 1] != '0' || d[v + 2] != '-' || d[v + 35] != '-' ||
            d[v + 52] != '-')
            Py_RETURN_NONE;
        unsigned char fl;
        if (!unhex(d + v + 3, 16, trace_id) || !unhex(d + v + 36, 8, parent_id) ||
            !unhex(d + v + 53, 1, &fl))
            Py_RETURN_NONE;
        Py_ssize_t t = v + 55;
        while (t < end && (d[t] == ' ' || d[t] == '\t'))
            t++;
        if (t < end && d[t] == '\r')
            t++;
        if (t != end)
            Py_RETURN_NONE;
        if (all_zero(trace_id, 16) || all_zero(parent_id, 8))
            Py_RETURN_NONE;
        have_trace = 1;
        flags = fl;
    }
    int complete = blank >= 0;
    PyObject *head = head_type->tp_alloc(head_type, 11);
    if (head == NULL)
        return NULL;
    PyObject *method = ascii_str(d, method_len);
    PyObject *path = method ? ascii_str(d + path_start, path_len < PATH_MAX_CHARS ? path_len
                                                                                  : PATH_MAX_CHARS)
                            : NULL;
    if (path == NULL) {
        Py_XDECREF(method);
        Py_DECREF(head);
        return NULL;
    }
    PyObject *tid = Py_None, *pid = Py_None, *fl = Py_None, *src = Py_None;
    if (have_trace) {
        tid = PyBytes_FromStringAndSize((const char *)trace_id, 16);
        pid = tid ? PyBytes_FromStringAndSize((const char *)parent_id, 8) : NULL;
        fl = pid ? PyLong_FromLong(flags) : NULL;
        if (fl == NULL) {
            Py_XDECREF(tid);
            Py_XDECREF(pid);
            Py_DECREF(method);
            Py_DECREF(path);
            Py_DECREF(head);
            return NULL;
        }
        src = Py_NewRef(s_traceparent);
    } else {
        Py_INCREF(Py_None);
        Py_INCREF(Py_None);
        Py_INCREF(Py_None);
        Py_INCREF(Py_None);
    }
    PyObject *problems = (complete || have_trace) ? t_empty : t_truncated;
    PyTuple_SET_ITEM(head, 0, Py_NewRef(s_request));
    PyTuple_SET_ITEM(head, 1, method);
    PyTuple_SET_ITEM(head, 2, path);
    PyTuple_SET_ITEM(head, 3, Py_NewRef(Py_None));
    PyTuple_SET_ITEM(head, 4, PyBool_FromLong(complete));
    PyTuple_SET_ITEM(head, 5, tid);
    PyTuple_SET_ITEM(head, 6, pid);
    PyTuple_SET_ITEM(head, 7, fl);
    PyTuple_SET_ITEM(head, 8, src);
    PyTuple_SET_ITEM(head, 9, Py_NewRef(Py_None));
    PyTuple_SET_ITEM(head, 10, Py_NewRef(problems));
    return head;
}

static int check_tuple_type(PyObject *t, Py_ssize_t fields, const char *what) {
    if (!PyType_Check(t) || !PyType_IsSubtype((PyTypeObject *)t, &PyTuple_Type)) {
        PyErr_Format(PyExc_TypeError, "%s: a tuple subclass expected", what);
        return 0;
    }
    PyObject *names = PyObject_GetAttrString(t, "_fields");
    if (names == NULL) {
        PyErr_Format(PyExc_TypeError, "%s: a NamedTuple class expected", what);
        return 0;
    }
    Py_ssize_t k = PyObject_Length(names);
    Py_DECREF(names);
    if (k != fields) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "%s: %zd fields, expected %zd", what, k, fields);
        return 0;
    }
    return 1;
}

static PyObject *py_fast_head(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *head_type;
    if (!PyArg_ParseTuple(args, "Oy*", &head_type, &buf))
        return NULL;
    PyObject *out = NULL;
    if (check_tuple_type(head_type, 11, "head_type"))
        out = fast_head_of(buf.buf, buf.len, (PyTypeObject *)head_type);
    PyBuffer_Release(&buf);
    return out;
}

/* -- ring buffer -> RequestRecords ----------------------------------------------------------- */

static inline PyObject *u64_or_none(uint64_t v, int have) {
    return have ? PyLong_FromUnsignedLongLong(v) : Py_NewRef(Py_None);
}

/* request_event's RequestRecord of one record, Py_None (new reference) when it would raise
 * DecodeError, NULL with an exception set (memory). */
static PyObject *request_record(const unsigned char *r, Py_ssize_t n, PyTypeObject *type,
                                Py_ssize_t capture, unsigned long read_mask,
                                unsigned long write_mask) {
    /* the fixed part, then exactly `captured` bytes of data (at most capture_bytes) */
    if (n < OFF_DATA || n > OFF_DATA + capture)
        Py_RETURN_NONE;
    unsigned read_sys = r[OFF_READ_SYS], write_sys = r[OFF_WRITE_SYS];
    Py_ssize_t captured = u16_at(r + OFF_CAPTURED);
    if (read_sys >= 64 || !(read_mask >> read_sys & 1) || write_sys >= 64 ||
        !(write_mask >> write_sys & 1) || captured != n - OFF_DATA)
        Py_RETURN_NONE;
    int s0 = r[OFF_START_FLAGS] & HAVE_STATS, s1 = r[OFF_END_FLAGS] & HAVE_STATS;
    int ctx = r[OFF_END_FLAGS] & HAVE_CTX;
    uint64_t wake = u64_at(r + OFF_WAKE), seq = u64_at(r + OFF_SEQ);
    uint16_t status = u16_at(r + OFF_STATUS);
    PyObject *rec = type->tp_alloc(type, RECORD_FIELDS);
    if (rec == NULL)
        return NULL;
    PyObject *f[RECORD_FIELDS];
    f[0] = PyLong_FromUnsignedLong(u32_at(r + OFF_TGID));
    f[1] = PyLong_FromLong((int32_t)u32_at(r + OFF_FD));
    f[2] = PyLong_FromUnsignedLongLong(u64_at(r + OFF_START));
    f[3] = PyLong_FromUnsignedLongLong(u64_at(r + OFF_END));
    f[4] = PyLong_FromUnsignedLong(u32_at(r + OFF_TID));
    f[5] = PyLong_FromUnsignedLong(u32_at(r + OFF_END_TID));
    f[6] = u64_or_none(u64_at(r + OFF_P_START), s0);
    f[7] = u64_or_none(u64_at(r + OFF_P_END), s1);
    f[8] = u64_or_none(u64_at(r + OFF_M_START), s0);
    f[9] = u64_or_none(u64_at(r + OFF_M_END), s1);
    f[10] = status ? PyLong_FromLong(status) : Py_NewRef(Py_None);
    f[11] = PyBytes_FromStringAndSize((const char *)r + OFF_DATA, captured);
    f[12] = ctx ? PyBytes_FromStringAndSize((const char *)r + OFF_CTX_TRACE, 16) : Py_NewRef(Py_None);
    f[13] = ctx ? PyBytes_FromStringAndSize((const char *)r + OFF_CTX_SPAN, 8) : Py_NewRef(Py_None);
    f[14] = u64_or_none(wake, wake != 0);
    f[15] = seq ? PyLong_FromUnsignedLongLong(u64_at(r + OFF_QUEUED))
                : (s0 ? PyLong_FromLong(0) : Py_NewRef(Py_None));
    f[16] = u64_or_none(seq, seq != 0);
    int failed = 0;
    for (int k = 0; k < RECORD_FIELDS; k++) {
        if (f[k] == NULL) {
            failed = 1;
            f[k] = Py_NewRef(Py_None);
        }
        PyTuple_SET_ITEM(rec, k, f[k]);
    }
    if (failed) {
        Py_DECREF(rec);
        return NULL;
    }
    return rec;
}

static PyObject *py_take_requests(PyObject *self, PyObject *args) {
    Py_buffer ring;
    Py_ssize_t page, capture;
    unsigned long long mask, cons, prod;
    unsigned long read_mask, write_mask;
    PyObject *type;
    if (!PyArg_ParseTuple(args, "y*nKKKOnkk", &ring, &page, &mask, &cons, &prod, &type, &capture,
                          &read_mask, &write_mask))
        return NULL;
    PyObject *records = NULL;
    long long malformed = 0;
    if (!check_tuple_type(type, RECORD_FIELDS, "record_type"))
        goto done;
    /* the data pages follow one page (the producer's) and are mapped twice in a row */
    if (page < 8 || mask < 7 || (mask & (mask + 1)) != 0 ||
        (unsigned long long)ring.len < (unsigned long long)page + 2 * (mask + 1) || capture < 0) {
        PyErr_SetString(PyExc_ValueError, "take_requests: not a ring buffer's mapping");
        goto done;
    }
    records = PyList_New(0);
    if (records == NULL)
        goto done;
    const unsigned char *base = ring.buf;
    while (cons < prod) {
        unsigned long long off = (unsigned long long)page + (cons & mask);
        if (off + HEADER_BYTES > (unsigned long long)ring.len)
            break; /* cannot happen with a ring's mapping (checked above); never read past it */
        uint32_t length = __atomic_load_n((const uint32_t *)(base + off), __ATOMIC_ACQUIRE);
        if (length & BUSY_BIT)
            break;
        uint32_t n = length & ~(BUSY_BIT | DISCARD_BIT);
        if (!(length & DISCARD_BIT)) {
            /* a length past the mapping (the kernel writes none) is cut at its end, as the
             * Python reader's slice is: a wrong length, so a malformed record */
            unsigned long long avail = (unsigned long long)ring.len - off - HEADER_BYTES;
            Py_ssize_t have = (Py_ssize_t)(n < avail ? n : avail);
            PyObject *rec = request_record(base + off + HEADER_BYTES, have, (PyTypeObject *)type,
                                           capture, read_mask, write_mask);
            if (rec == NULL) {
                Py_CLEAR(records);
                goto done;
            }
            if (rec == Py_None) {
                malformed++;
                Py_DECREF(rec);
            } else {
                int err = PyList_Append(records, rec);
                Py_DECREF(rec);
                if (err) {
                    Py_CLEAR(records);
                    goto done;
                }
            }
        }
        cons += (n + HEADER_BYTES + 7) & ~7ull;
    }
done:
    PyBuffer_Release(&ring);
    if (records == NULL)
        return NULL;
    return Py_BuildValue("KNL", cons, records, malformed);
}

/* One record as bytes, as take_requests would decode it (the tests' way in). */
static PyObject *py_request_record(PyObject *self, PyObject *args) {
    Py_buffer buf;
    PyObject *type;
    Py_ssize_t capture;
    unsigned long read_mask, write_mask;
    if (!PyArg_ParseTuple(args, "y*Onkk", &buf, &type, &capture, &read_mask, &write_mask))
        return NULL;
    PyObject *out = NULL;
    if (check_tuple_type(type, RECORD_FIELDS, "record_type"))
        out = request_record(buf.buf, buf.len, (PyTypeObject *)type, capture, read_mask,
                             write_mask);
    PyBuffer_Release(&buf);
    return out;
}

/* request_meta(data) -> (version | None, host | None): for a traced request, the HTTP version
 * its start line names ("1.1": the first CRLF within 300 bytes ends a line "... HTTP/D.D") and
 * the value of its first Host header line within the head (bytes, blanks trimmed; a line cut
 * by the capture is not said). collector/correlate.py request_meta_py gives the same answers. */
static PyObject *py_request_meta(PyObject *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *d = b.buf;
    Py_ssize_t n = b.len, i, end = -1, limit = n;
    PyObject *version = NULL, *host = NULL;
    Py_ssize_t lim = n < 300 ? n : 300;
    for (i = 0; i + 1 < lim; i++)
        if (d[i] == '\r' && d[i + 1] == '\n') {
            end = i;
            break;
        }
    if (end >= 9 && memcmp(d + end - 9, " HTTP/", 6) == 0 && d[end - 2] == '.' &&
        d[end - 3] >= '0' && d[end - 3] <= '9' && d[end - 1] >= '0' && d[end - 1] <= '9')
        version = PyUnicode_FromStringAndSize((const char *)d + end - 3, 3);
    for (i = 0; i + 3 < n; i++)
        if (d[i] == '\r' && d[i + 1] == '\n' && d[i + 2] == '\r' && d[i + 3] == '\n') {
            limit = i + 2;
            break;
        }
    for (i = 0; i + 7 <= limit; i++) {
        if (d[i] != '\r' || d[i + 1] != '\n' || !starts_ci(d, limit, i + 2, "host:"))
            continue;
        Py_ssize_t v = i + 7, e = -1, k;
        for (k = v; k + 1 < limit; k++)
            if (d[k] == '\r' && d[k + 1] == '\n') {
                e = k;
                break;
            }
        if (e >= 0) {
            while (v < e && (d[v] == ' ' || d[v] == '\t'))
                v++;
            while (e > v && (d[e - 1] == ' ' || d[e - 1] == '\t'))
                e--;
            host = PyBytes_FromStringAndSize((const char *)d + v, e - v);
            if (host == NULL) {
                Py_XDECREF(version);
                PyBuffer_Release(&b);
                return NULL;
            }
        }
        break;
    }
    PyBuffer_Release(&b);
    if (version == NULL && PyErr_Occurred()) {
        Py_XDECREF(host);
        return NULL;
    }
    PyObject *out = PyTuple_Pack(2, version ? version : Py_None, host ? host : Py_None);
    Py_XDECREF(version);
    Py_XDECREF(host);
    return out;
}

/* -- RequestTracker.feed's common case ------------------------------------------------------- */

static PyObject *s_append, *s_evict, *s_entries, *s_ended, *s_routes, *s_statuses, *s_pids,
    *s_named, *s_empty, *one;

/* counter[key] += 1 on a dict (a Counter: its __missing__ is not needed, a missing key is 0).
 * 0, or -1 with an exception set. */
static int count_one(PyObject *counter, PyObject *key) {
    PyObject *old = PyDict_GetItemWithError(counter, key); /* borrowed */
    if (!old && PyErr_Occurred())
        return -1;
    Py_XINCREF(old); /* the addition may run Python code */
    PyObject *new = old ? PyNumber_Add(old, one) : Py_NewRef(one);
    Py_XDECREF(old);
    if (!new)
        return -1;
    int err = PyDict_SetItem(counter, key, new);
    Py_DECREF(new);
    return err;
}

static PyObject *counter_type; /* collections.Counter */

static int is_counter(PyObject *o) {
    return PyDict_CheckExact(o) || Py_IS_TYPE(o, (PyTypeObject *)counter_type);
}

/* One workload's window, its parts held while its requests come one after the other. */
struct window {
    PyObject *workload; /* whose parts these are (NULL: none yet) */
    PyObject *win, *entries, *append, *ended, *routes, *statuses, *pids, *named;
};

static void window_clear(struct window *w) {
    Py_CLEAR(w->workload);
    Py_CLEAR(w->win);
    Py_CLEAR(w->entries);
    Py_CLEAR(w->append);
    Py_CLEAR(w->ended);
    Py_CLEAR(w->routes);
    Py_CLEAR(w->statuses);
    Py_CLEAR(w->pids);
    Py_CLEAR(w->named);
}

/* The parts of the window of `workload` (None: ""): 1, 0 when `windows` has none, -1 with an
 * exception set. */
static int window_of(struct window *w, PyObject *windows, PyObject *workload) {
    window_clear(w);
    PyObject *win = PyDict_GetItemWithError(windows, workload == Py_None ? s_empty : workload);
    if (!win)
        return PyErr_Occurred() ? -1 : 0;
    w->win = Py_NewRef(win);
    if (!(w->entries = PyObject_GetAttr(win, s_entries)) ||
        !(w->append = PyObject_GetAttr(w->entries, s_append)) ||
        !(w->ended = PyObject_GetAttr(win, s_ended)) ||
        !(w->routes = PyObject_GetAttr(win, s_routes)) ||
        !(w->statuses = PyObject_GetAttr(win, s_statuses)) ||
        !(w->pids = PyObject_GetAttr(win, s_pids)) || !(w->named = PyObject_GetAttr(win, s_named)))
        return -1;
    /* A Counter overrides neither __getitem__ nor __setitem__: the dict's own are its. */
    if (!PyList_Check(w->ended) || !is_counter(w->routes) || !is_counter(w->statuses) ||
        !is_counter(w->pids) || !PySet_Check(w->named)) {
        PyErr_SetString(PyExc_TypeError, "a window's parts are not a list, Counters and a set");
        return -1;
    }
    w->workload = Py_NewRef(workload);
    return 1;
}

/* Record i's Head when it is the common case (a request head the fast path reads, with no
 * problem): a new reference; Py_None (new) when it is not; NULL with an exception set. */
static PyObject *plain_head(PyObject *rec, PyTypeObject *head_type) {
    PyObject *data = PyTuple_GET_ITEM(rec, 11);
    if (!PyBytes_CheckExact(data))
        Py_RETURN_NONE;
    PyObject *head = fast_head_of((const unsigned char *)PyBytes_AS_STRING(data),
                                  PyBytes_GET_SIZE(data), head_type);
    if (!head || head == Py_None)
        return head;
    if (PyTuple_GET_ITEM(head, 0) != s_request || PyTuple_GET_SIZE(PyTuple_GET_ITEM(head, 10))) {
        Py_DECREF(head);
        Py_RETURN_NONE;
    }
    return head;
}

/* One record through RequestTracker.feed and _enter: 1 when taken, 0 when Python must feed
 * it, -1 with an exception set. */
static int feed_one(PyObject *rec, PyTypeObject *head_type, PyObject *workloads,
                    PyObject *named, PyObject *windows, PyObject *done, PyObject *conn,
                    Py_ssize_t cap, struct window *w) {
    if (!PyTuple_Check(rec) || PyTuple_GET_SIZE(rec) != RECORD_FIELDS)
        return 0;
    PyObject *tgid = PyTuple_GET_ITEM(rec, 0), *start = PyTuple_GET_ITEM(rec, 2),
             *end = PyTuple_GET_ITEM(rec, 3), *status = PyTuple_GET_ITEM(rec, 10),
             *wake = PyTuple_GET_ITEM(rec, 14);
    int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(rec, 4), PyTuple_GET_ITEM(rec, 5), Py_EQ);
    if (same <= 0)
        return same; /* a request answered by another thread is counted by Python */
    PyObject *known = PyDict_GetItemWithError(workloads, tgid); /* borrowed */
    if (!known)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(known) || PyTuple_GET_SIZE(known) != 2)
        return 0;
    Py_INCREF(known); /* held: what follows allocates, and may run Python code */
    PyObject *workload = PyTuple_GET_ITEM(known, 0);
    int taken = -1;
    PyObject *head = NULL, *route = NULL, *dur = NULL, *entry = NULL, *got = NULL, *key = NULL;
    head = plain_head(rec, head_type);
    if (!head || head == Py_None) {
        taken = head ? 0 : -1;
        goto out;
    }
    if (w->workload != workload) {
        int found = window_of(w, windows, workload);
        if (found <= 0) {
            taken = found;
            goto out;
        }
    }
    key = PyTuple_Pack(4, workload, PyTuple_GET_ITEM(known, 1), PyTuple_GET_ITEM(head, 1),
                       PyTuple_GET_ITEM(head, 2));
    if (!key)
        goto out;
    route = PyDict_GetItemWithError(named, key); /* borrowed */
    if (!route) {
        taken = PyErr_Occurred() ? -1 : 0;
        goto out;
    }
    Py_INCREF(route);
    /* Named in this batch, and still holding its place under the cap: an eviction may have
     * given the name back since (then _route decides again, in Python). */
    int holds = PySet_Contains(w->named, route);
    if (holds <= 0) {
        taken = holds;
        goto out;
    }
    PyObject *from = start; /* borrowed */
    if (wake != Py_None) {
        int truthy = PyObject_IsTrue(wake);
        int earlier = truthy > 0 ? PyObject_RichCompareBool(wake, start, Py_LE) : truthy;
        if (earlier < 0)
            goto out;
        if (earlier)
            from = wake;
    }
    dur = PyNumber_Subtract(end, from);
    if (!dur)
        goto out;
    /* Nothing that can fail half-way below leaves the record half-entered but the allocations:
     * the window's parts are then as Python would leave them on MemoryError. */
    got = PyTuple_Pack(5, rec, head, workload, route, conn);
    if (!got || PyList_Append(done, got) < 0)
        goto out;
    entry = PyTuple_Pack(5, end, dur, route, status, tgid);
    if (!entry)
        goto out;
    PyObject *r = PyObject_CallOneArg(w->append, entry);
    if (!r)
        goto out;
    Py_DECREF(r);
    if (PyList_Append(w->ended, dur) < 0 || count_one(w->routes, route) < 0 ||
        count_one(w->statuses, status) < 0 || count_one(w->pids, tgid) < 0)
        goto out;
    Py_ssize_t len = PyObject_Length(w->entries);
    if (len < 0)
        goto out;
    if (len > cap) {
        PyObject *n = PyLong_FromSsize_t(cap);
        r = n ? PyObject_CallMethodOneArg(w->win, s_evict, n) : NULL;
        Py_XDECREF(n);
        if (!r)
            goto out;
        Py_DECREF(r);
    }
    taken = 1;
out:
    Py_XDECREF(key);
    Py_XDECREF(route);
    Py_XDECREF(dur);
    Py_XDECREF(got);
    Py_XDECREF(entry);
    Py_XDECREF(head);
    Py_DECREF(known);
    return taken;
}

static PyObject *py_feed_known(PyObject *self, PyObject *args) {
    PyObject *records, *head_type, *workloads, *named, *windows, *done, *conn;
    Py_ssize_t i, cap;
    if (!PyArg_ParseTuple(args, "O!nOO!O!O!O!On", &PyList_Type, &records, &i, &head_type,
                          &PyDict_Type, &workloads, &PyDict_Type, &named, &PyDict_Type,
                          &windows, &PyList_Type, &done, &conn, &cap))
        return NULL;
    if (!check_tuple_type(head_type, 11, "head_type"))
        return NULL;
    if (i < 0) {
        PyErr_SetString(PyExc_ValueError, "feed_known: a negative index");
        return NULL;
    }
    struct window w = {0};
    for (; i < PyList_GET_SIZE(records); i++) {
        PyObject *rec = PyList_GET_ITEM(records, i);
        Py_INCREF(rec); /* a window's evict() could, in principle, drop the list's last ref */
        int taken = feed_one(rec, (PyTypeObject *)head_type, workloads, named, windows, done,
                             conn, cap, &w);
        Py_DECREF(rec);
        if (taken < 0) {
            window_clear(&w);
            return NULL;
        }
        if (!taken)
            break;
    }
    window_clear(&w);
    return PyLong_FromSsize_t(i);
}

static PyMethodDef methods[] = {
    {"take_requests", py_take_requests, METH_VARARGS,
     "take_requests(ring, page, mask, cons, prod, record_type, capture_bytes, read_mask, "
     "write_mask) -> (cons, records, malformed)"},
    {"request_record", py_request_record, METH_VARARGS,
     "request_record(data, record_type, capture_bytes, read_mask, write_mask) -> record | None"},
    {"fast_head", py_fast_head, METH_VARARGS, "fast_head(head_type, data) -> Head | None"},
    {"feed_known", py_feed_known, METH_VARARGS,
     "feed_known(records, i, head_type, workloads, named, windows, done, conn, cap) -> int"},
    {"request_meta", py_request_meta, METH_O,
     "request_meta(data) -> (HTTP version | None, Host header value | None)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_tracefast", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__tracefast(void) {
    s_request = PyUnicode_InternFromString("request");
    s_traceparent = PyUnicode_InternFromString("traceparent");
    t_empty = PyTuple_New(0);
    t_truncated = Py_BuildValue("(s)", "head_truncated");
    s_append = PyUnicode_InternFromString("append");
    s_evict = PyUnicode_InternFromString("evict");
    s_entries = PyUnicode_InternFromString("entries");
    s_ended = PyUnicode_InternFromString("ended");
    s_routes = PyUnicode_InternFromString("routes");
    s_statuses = PyUnicode_InternFromString("statuses");
    s_pids = PyUnicode_InternFromString("pids");
    s_named = PyUnicode_InternFromString("named");
    s_empty = PyUnicode_InternFromString("");
    PyObject *collections = PyImport_ImportModule("collections");
    counter_type = collections ? PyObject_GetAttrString(collections, "Counter") : NULL;
    Py_XDECREF(collections);
    one = PyLong_FromLong(1);
    if (!s_request || !s_traceparent || !t_empty || !t_truncated || !s_append || !s_evict ||
        !s_entries || !s_ended || !s_routes || !s_statuses || !s_pids || !s_named || !s_empty || !one ||
        !counter_type)
        return NULL;
    return PyModule_Create(&module);
}
