/* The capture stage's per-packet work in C: record walk and decoding of the common shapes.
 *
 * capture.py is the authority. A Walker reads records from the chunk of the file that the
 * Python reader holds (``_ByteSource.buf``) and, for every frame it fully understands, does
 * what ``Capture.packets()`` would do: counts it, decodes it to its TCP segment, drops mirror
 * copies in the decoder's own duplicate tables, counts tunnels and skip reasons in the
 * decoder's own Counters, and yields the very same ``Packet``. Anything else -- a record
 * that does not fit in the chunk, a damaged record, a pcapng block other than a packet, a
 * frame that would log an anomaly, an encapsulation not handled here, a value that does not
 * fit 64 bits -- stops the iteration *before* the record is consumed or anything is counted:
 * Python then reads that one record itself (refill, damage, interfaces, anomalies) and
 * starts the walker again after it. So every frame is taken whole by one side, and every
 * rule this file does not implement stays in one place, capture.py.
 *
 * Hostile input is the normal case: every read is checked against the end of the record
 * (or of the IP datagram inside it) before it is made.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* capture.py's limits (a test checks they agree). */
#define MAX_TUNNEL_DEPTH 8
#define MAX_RECORD_LEN 262144
#define MAX_BLOCK_LEN (16 << 20)
#define BACKWARDS_NOTED_NS 1000000000LL

#define BLOCK_SHB 0x0A0D0D0AU
#define BLOCK_PB 2U
#define BLOCK_SPB 3U
#define BLOCK_EPB 6U

typedef unsigned char u8;
typedef __int128 i128;
typedef unsigned __int128 u128;

/* What a frame came to. */
enum { OUT_PACKET, OUT_SKIP, OUT_PYTHON };
/* Skip reasons counted here (capture.py's names are handed over at construction). */
enum { SKIP_NOT_IP, SKIP_ARP, SKIP_UDP, SKIP_ICMP, SKIP_OTHER_IP_PROTO, N_SKIPS };

#define ADDR_CACHE 256 /* direct-mapped: a capture has few addresses, and a shared bytes
                          object keeps its hash for the TCP stage's dict lookups */

static inline uint16_t be16(const u8 *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const u8 *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint32_t le32(const u8 *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}
static inline uint16_t le16(const u8 *p) { return (uint16_t)(p[1] << 8 | p[0]); }

/* One pcapng interface as _Interface has it; usable=0 when its clock does not fit 64 bits. */
typedef struct {
    long linktype;
    uint32_t snaplen;
    uint64_t mul, div;
    int64_t offset_ns;
    int usable;
} Iface;

/* A record cut out of the chunk. */
typedef struct {
    int64_t ts;
    long linktype;
    Py_ssize_t start, end, next; /* frame span, and where the next record starts */
    int sets_spb_ts;             /* an EPB/PB: its time is what a later SPB gets */
} Record;

/* A frame decoded, before anything is committed. */
typedef struct {
    const u8 *src, *dst;
    int alen;
    const u8 *ip_key; /* IPv4 total length and id; IPv6 payload length */
    int ip_key_len;
    const u8 *tcp;
    Py_ssize_t payload, end;
    int64_t missing;
    int has_vni;
    uint32_t vni;
    int ntunnels;
    PyObject *labels[MAX_TUNNEL_DEPTH]; /* borrowed from the decoder's _vxlan_labels */
    int skip;
} Frame;

typedef struct {
    PyObject_HEAD
    /* what it works on, for the whole capture */
    PyTypeObject *packet_type;
    PyObject *decoder, *stats, *skipped, *tunnels, *vxlan_labels;
    PyObject *skip_names[N_SKIPS];
    Py_ssize_t max_keys;
    /* format */
    int pcapng, big;
    int64_t frac_ns;
    long pcap_linktype;
    Iface *ifaces;
    Py_ssize_t nifaces;
    /* one walk: the chunk, and state loaded from Python at start() */
    PyObject *buf;
    const u8 *p;
    Py_ssize_t len, pos;
    int halted;
    int64_t taken; /* frames taken in this walk: nothing to write back before the first */
    PyObject *recent, *older;
    int64_t window;
    i128 rotate_at;
    int64_t frames, decoded, duplicates, truncated;
    int have_last, first_dirty, counts_dirty;
    int64_t last_ts;
    PyObject *spb_ts_obj; /* the reader's _last_ts_ns */
    int spb_ok;
    int64_t spb_ts;
    PyObject *linktype_obj; /* the current link-type run: linktype and frames not yet counted */
    long linktype_seen;
    int64_t run;
    /* caches */
    int have_vni;
    uint32_t cached_vni;
    PyObject *cached_vni_obj, *cached_label;
    PyObject *addrs[ADDR_CACHE];
} Walker;

/* ---- small Python helpers -------------------------------------------------------------- */

static PyObject *s_frames, *s_decoded, *s_duplicates, *s_truncated, *s_first_ts_ns, *s_last_ts_ns,
    *s_recent, *s_older, *s_rotate_at, *s_window;

/* An int attribute as int64: 1 done, 0 absent/None/too big (*none says which), -1 error. */
static int get_i64(PyObject *obj, PyObject *name, int64_t *out, int *none)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    *none = v == Py_None;
    int overflow = 0;
    long long x = *none ? 0 : PyLong_AsLongLongAndOverflow(v, &overflow);
    Py_DECREF(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    *out = x;
    return !*none && !overflow;
}

static int set_i64(PyObject *obj, PyObject *name, int64_t value)
{
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    int r = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return r;
}

static PyObject *long_from_i128(i128 v)
{
    if (v >= INT64_MIN && v <= INT64_MAX)
        return PyLong_FromLongLong((long long)v);
    /* beyond 64 bits (rotation time near the end of int64): exact through Python ints */
    PyObject *hi = PyLong_FromLongLong((long long)(v >> 64));
    PyObject *lo = PyLong_FromUnsignedLongLong((unsigned long long)(uint64_t)v);
    PyObject *shift = PyLong_FromLong(64), *r = NULL;
    if (hi && lo && shift) {
        PyObject *h = PyNumber_Lshift(hi, shift);
        if (h) {
            r = PyNumber_Or(h, lo);
            Py_DECREF(h);
        }
    }
    Py_XDECREF(hi);
    Py_XDECREF(lo);
    Py_XDECREF(shift);
    return r;
}

/* counter[key] += 1 */
static int counter_add(PyObject *counter, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(counter, key);
    if (v == NULL && PyErr_Occurred())
        return -1;
    long long n = v == NULL ? 0 : PyLong_AsLongLong(v);
    if (n == -1 && PyErr_Occurred())
        return -1;
    PyObject *nv = PyLong_FromLongLong(n + 1);
    if (nv == NULL)
        return -1;
    int r = PyDict_SetItem(counter, key, nv);
    Py_DECREF(nv);
    return r;
}

/* Ports and windows: 16-bit ints, made once per process (a quarter of a packet's allocations). */
static PyObject *u16_cache[65536];

static PyObject *u16_long(uint16_t v)
{
    PyObject *o = u16_cache[v];
    if (o == NULL) {
        o = PyLong_FromLong(v);
        if (o == NULL)
            return NULL;
        u16_cache[v] = o; /* kept for the life of the process */
    }
    Py_INCREF(o);
    return o;
}

static PyObject *addr_bytes(Walker *w, const u8 *a, int alen)
{
    unsigned h = 0;
    for (int i = 0; i < alen; i++)
        h = h * 31 + a[i];
    h = (h ^ (h >> 8)) & (ADDR_CACHE - 1);
    PyObject *c = w->addrs[h];
    if (c != NULL && PyBytes_GET_SIZE(c) == alen && memcmp(PyBytes_AS_STRING(c), a, alen) == 0) {
        Py_INCREF(c);
        return c;
    }
    PyObject *b = PyBytes_FromStringAndSize((const char *)a, alen);
    if (b == NULL)
        return NULL;
    Py_INCREF(b);
    Py_XSETREF(w->addrs[h], b);
    return b;
}

/* ---- decoding: capture.py's _Decoder, for the shapes that need no anomaly ---------------- */

static int d_ethernet(Walker *w, const u8 *p, Py_ssize_t off, Py_ssize_t end, Frame *f);

static int skip(Frame *f, int reason)
{
    f->skip = reason;
    return OUT_SKIP;
}

/* _tcp: everything but the duplicate check, which needs the key (done by the caller). */
static int d_tcp(const u8 *p, Py_ssize_t off, Py_ssize_t end, int64_t wire, Frame *f)
{
    if (wire < 20 || end - off < 20)
        return OUT_PYTHON; /* truncated_header anomalies */
    Py_ssize_t header = (Py_ssize_t)(p[off + 12] >> 4) << 2;
    if (header < 20 || header > wire || end - off < header)
        return OUT_PYTHON; /* bad_TCP_header_len, truncated_header */
    f->tcp = p + off;
    f->payload = off + header;
    f->end = end;
    f->missing = wire - (end - off);
    return OUT_PACKET;
}

/* _vxlan, when the VNI is valid and its stats.tunnels label already exists. */
static int d_vxlan(Walker *w, const u8 *p, Py_ssize_t off, Py_ssize_t end, Frame *f)
{
    if (end - off < 8 || !(p[off] & 0x08))
        return OUT_PYTHON; /* truncated_header; no VNI ("vxlan" label) */
    uint32_t vni = be32(p + off + 4) >> 8;
    if (f->ntunnels + 1 > MAX_TUNNEL_DEPTH)
        return OUT_PYTHON; /* exceeded_tunnel_max_depth */
    PyObject *label;
    if (w->have_vni && w->cached_vni == vni) {
        label = w->cached_label;
    } else {
        PyObject *key = PyLong_FromUnsignedLong(vni);
        if (key == NULL)
            return -1;
        label = PyDict_GetItemWithError(w->vxlan_labels, key);
        if (label == NULL) {
            Py_DECREF(key);
            return PyErr_Occurred() ? -1 : OUT_PYTHON; /* first of this VNI: Python names it */
        }
        int known = PyDict_Contains(w->tunnels, label);
        if (known <= 0) {
            Py_DECREF(key);
            return known < 0 ? -1 : OUT_PYTHON;
        }
        Py_INCREF(label);
        Py_XSETREF(w->cached_label, label);
        Py_XSETREF(w->cached_vni_obj, key);
        w->cached_vni = vni;
        w->have_vni = 1;
    }
    f->labels[f->ntunnels++] = label;
    f->has_vni = 1;
    f->vni = vni;
    return d_ethernet(w, p, off + 8, end, f);
}

static int d_udp(Walker *w, const u8 *p, Py_ssize_t off, Py_ssize_t end, Frame *f)
{
    if (end - off < 8)
        return OUT_PYTHON; /* truncated_header */
    uint16_t dport = be16(p + off + 2), length = be16(p + off + 4);
    if (8 <= length && length < end - off)
        end = off + length;
    if (dport == 4789)
        return d_vxlan(w, p, off + 8, end, f);
    if (dport == 6081 || dport == 4754 || dport == 2152)
        return OUT_PYTHON; /* Geneve, GRE-in-UDP, GTP-U */
    return skip(f, SKIP_UDP);
}

/* _ip_payload (TCP is taken by the callers). */
static int d_ip_payload(Walker *w, unsigned proto, const u8 *p, Py_ssize_t off, Py_ssize_t end, Frame *f)
{
    switch (proto) {
    case 17:
        return d_udp(w, p, off, end, f);
    case 47: /* GRE */
    case 4:  /* IP-in-IP */
    case 41:
        return OUT_PYTHON;
    case 1:
    case 58:
        return skip(f, SKIP_ICMP);
    default:
        return skip(f, SKIP_OTHER_IP_PROTO);
    }
}

static int d_ipv4(Walker *w, const u8 *p, Py_ssize_t off, Py_ssize_t end, Frame *f)
{
    if (end - off < 20)
        return OUT_PYTHON; /* truncated_IP */
    unsigned vihl = p[off];
    Py_ssize_t header = 20;
    if (vihl != 0x45) {
        header = (Py_ssize_t)(vihl & 15) << 2;
        if (vihl >> 4 != 4 || header < 20 || end - off < header)
            return OUT_PYTHON; /* unknown_ip_version, IPv4_min_header_size, truncated_IP */
    }
    Py_ssize_t total = be16(p + off + 2);
    if (total < header)
        return OUT_PYTHON; /* invalid_IP_header_size, ip_hdr_len_zero */
    if (off + total < end)
        end = off + total; /* link padding stays out */
    if (be16(p + off + 6) & 0x3FFF)
        return OUT_PYTHON; /* a fragment: Python reassembles */
    f->src = p + off + 12;
    f->dst = p + off + 16;
    f->alen = 4;
    f->ip_key = p + off + 2;
    f->ip_key_len = 4;
    unsigned proto = p[off + 9];
    if (proto == 6)
        return d_tcp(p, off + header, end, total - header, f);
    return d_ip_payload(w, proto, p, off + header, end, f);
}

static int d_ipv6(Walker *w, const u8 *p, Py_ssize_t off, Py_ssize_t end, Frame *f)
{
    if (end - off < 40 || p[off] >> 4 != 6)
        return OUT_PYTHON; /* truncated_IP, unknown_ip_version */
    int64_t length = be16(p + off + 4);
    unsigned next_header = p[off + 6];
    f->src = p + off + 8;
    f->dst = p + off + 24;
    f->alen = 16;
    f->ip_key = p + off + 4;
    f->ip_key_len = 2;
    off += 40;
    if (!length) /* a jumbogram or offloaded segmentation: the capture is all we know */
        length = end - off;
    else if (off + length < end)
        end = off + length;
    switch (next_header) {
    case 0: case 43: case 44: case 51: case 60: /* extension headers: Python walks them */
        return OUT_PYTHON;
    case 6:
        return d_tcp(p, off, end, length, f);
    default:
        return d_ip_payload(w, next_header, p, off, end, f);
    }
}

/* _ethertype, without 802.3/SNAP, MPLS and bridged Ethernet (Python's). */
static int d_ethertype(Walker *w, unsigned ethertype, const u8 *p, Py_ssize_t off, Py_ssize_t end, Frame *f)
{
    while (ethertype == 0x8100 || ethertype == 0x88A8 || ethertype == 0x9100 || ethertype == 0x9200
           || ethertype == 0x9300) {
        if (end - off < 4)
            return OUT_PYTHON; /* truncated_VLAN_header */
        ethertype = be16(p + off + 2);
        off += 4;
    }
    switch (ethertype) {
    case 0x0800:
        return d_ipv4(w, p, off, end, f);
    case 0x86DD:
        return d_ipv6(w, p, off, end, f);
    case 0x0806:
    case 0x8035:
        return skip(f, SKIP_ARP);
    case 0x8847: case 0x8848: case 0x6558: case 0x8864: /* MPLS, bridged Ethernet, PPPoE session */
        return OUT_PYTHON;
    default:
        return ethertype < 0x0600 ? OUT_PYTHON : skip(f, SKIP_NOT_IP);
    }
}

static int d_ethernet(Walker *w, const u8 *p, Py_ssize_t off, Py_ssize_t end, Frame *f)
{
    if (end - off < 14)
        return OUT_PYTHON; /* truncated_ethernet_frame */
    unsigned ethertype = be16(p + off + 12);
    if (ethertype == 0x0800)
        return d_ipv4(w, p, off + 14, end, f);
    return d_ethertype(w, ethertype, p, off + 14, end, f);
}

static int d_raw(Walker *w, const u8 *p, Py_ssize_t off, Py_ssize_t end, Frame *f)
{
    if (end <= off)
        return OUT_PYTHON; /* truncated_IP */
    switch (p[off] >> 4) {
    case 4:
        return d_ipv4(w, p, off, end, f);
    case 6:
        return d_ipv6(w, p, off, end, f);
    default:
        return skip(f, SKIP_NOT_IP);
    }
}

static int d_link(Walker *w, long linktype, const u8 *p, Py_ssize_t off, Py_ssize_t end, Frame *f)
{
    switch (linktype) {
    case 1:
        return d_ethernet(w, p, off, end, f);
    case 12: case 14: case 101:
        return d_raw(w, p, off, end, f);
    case 228:
        return d_ipv4(w, p, off, end, f);
    case 229:
        return d_ipv6(w, p, off, end, f);
    case 113: /* Linux cooked */
        if (end - off < 16)
            return OUT_PYTHON;
        return d_ethertype(w, be16(p + off + 14), p, off + 16, end, f);
    case 276: /* Linux cooked v2 */
        if (end - off < 20)
            return OUT_PYTHON;
        return d_ethertype(w, be16(p + off), p, off + 20, end, f);
    case 0: case 108: { /* BSD loopback: the family in either byte order */
        if (end - off < 4)
            return OUT_PYTHON;
        uint32_t family = le32(p + off);
        if (family > 0xFFFF)
            family = be32(p + off);
        if (family == 2)
            return d_ipv4(w, p, off + 4, end, f);
        if (family == 10 || family == 24 || family == 28 || family == 30)
            return d_ipv6(w, p, off + 4, end, f);
        return skip(f, SKIP_NOT_IP);
    }
    default:
        return OUT_PYTHON; /* unsupported_link_type */
    }
}

/* ---- records ---------------------------------------------------------------------------- */

static inline uint32_t rd32(const Walker *w, const u8 *p) { return w->big ? be32(p) : le32(p); }
static inline uint16_t rd16(const Walker *w, const u8 *p) { return w->big ? be16(p) : le16(p); }

/* The pcap record at pos: 1 if whole in the chunk and sound, 0 for Python to read. */
static int pcap_record(const Walker *w, Record *r)
{
    const u8 *h = w->p + w->pos;
    if (w->len - w->pos < 16)
        return 0;
    uint32_t caplen = rd32(w, h + 8);
    if (caplen > MAX_RECORD_LEN || (Py_ssize_t)caplen > w->len - w->pos - 16)
        return 0;
    r->ts = (int64_t)rd32(w, h) * 1000000000 + (int64_t)rd32(w, h + 4) * w->frac_ns;
    r->linktype = w->pcap_linktype;
    r->start = w->pos + 16;
    r->end = r->next = r->start + caplen;
    r->sets_spb_ts = 0;
    return 1;
}

/* _Interface.ts_ns, if it lands within [0, INT64_MAX] (else Python notes or carries it). */
static int iface_ts(const Iface *i, uint32_t high, uint32_t low, int64_t *ts)
{
    if (!i->usable)
        return 0;
    i128 t = (i128)((((u128)high << 32 | low) * i->mul) / i->div) + i->offset_ns;
    if (t < 0 || t > INT64_MAX)
        return 0;
    *ts = (int64_t)t;
    return 1;
}

/* The pcapng packet block at pos, as _next_block/_packet_record read it; 0: Python's. */
static int pcapng_record(const Walker *w, Record *r)
{
    const u8 *b = w->p + w->pos;
    if (w->len - w->pos < 8)
        return 0;
    uint32_t type = rd32(w, b), length = rd32(w, b + 4);
    if (type == BLOCK_SHB || length < 12 || length > MAX_BLOCK_LEN || (Py_ssize_t)length > w->len - w->pos)
        return 0;
    if (rd32(w, b + length - 4) != length)
        return 0; /* corrupt: Python says so */
    Py_ssize_t body = w->pos + 8, size = length - 12;
    const u8 *q = w->p + body;
    uint32_t iface, high, low, caplen;
    if (type == BLOCK_EPB || type == BLOCK_PB) {
        if (size < 20)
            return 0;
        if (type == BLOCK_EPB) {
            iface = rd32(w, q);
            high = rd32(w, q + 4), low = rd32(w, q + 8), caplen = rd32(w, q + 12);
        } else {
            iface = rd16(w, q);
            high = rd32(w, q + 4), low = rd32(w, q + 8), caplen = rd32(w, q + 12);
        }
        if ((Py_ssize_t)caplen > size - 20 || iface >= (uint64_t)w->nifaces)
            return 0;
        if (!iface_ts(&w->ifaces[iface], high, low, &r->ts))
            return 0;
        r->linktype = w->ifaces[iface].linktype;
        r->start = body + 20;
        r->end = r->start + caplen;
        r->sets_spb_ts = 1;
    } else if (type == BLOCK_SPB) {
        if (size < 4 || w->nifaces == 0 || !w->spb_ok)
            return 0;
        const Iface *i = &w->ifaces[0];
        uint64_t wirelen = rd32(w, q), cap = wirelen;
        if ((uint64_t)(size - 4) < cap)
            cap = (uint64_t)(size - 4);
        if (i->snaplen && i->snaplen < cap)
            cap = i->snaplen;
        r->ts = w->spb_ts;
        r->linktype = i->linktype;
        r->start = body + 4;
        r->end = r->start + (Py_ssize_t)cap;
        r->sets_spb_ts = 0;
    } else {
        return 0; /* interfaces, statistics, anything else: Python's */
    }
    r->next = w->pos + length;
    return 1;
}

/* ---- the walk --------------------------------------------------------------------------- */

/* The mirror-copy key, as _tcp builds it. */
static PyObject *dedup_key(const Frame *f)
{
    Py_ssize_t n = f->ip_key_len + 2 * f->alen + 18;
    PyObject *key = PyBytes_FromStringAndSize(NULL, n);
    if (key == NULL)
        return NULL;
    char *k = PyBytes_AS_STRING(key);
    memcpy(k, f->ip_key, f->ip_key_len);
    k += f->ip_key_len;
    memcpy(k, f->src, f->alen);
    memcpy(k + f->alen, f->dst, f->alen);
    memcpy(k + 2 * f->alen, f->tcp, 18);
    return key;
}

/* _seen's lookup: 1 a copy within the window, 0 not, 2 Python's (a time beyond 64 bits), -1 error. */
static int seen_before(Walker *w, PyObject *key, int64_t ts)
{
    PyObject *first = PyDict_GetItemWithError(w->recent, key);
    if (first == NULL) {
        if (PyErr_Occurred())
            return -1;
        first = PyDict_GetItemWithError(w->older, key);
        if (first == NULL)
            return PyErr_Occurred() ? -1 : 0;
    }
    int overflow = 0;
    long long t = PyLong_AsLongLongAndOverflow(first, &overflow);
    if (t == -1 && PyErr_Occurred())
        return -1;
    if (overflow)
        return 2;
    i128 d = (i128)ts - t;
    return -(i128)w->window <= d && d <= w->window;
}

/* _seen's update and _rotate. */
static int remember(Walker *w, PyObject *key, PyObject *ts_obj, int64_t ts)
{
    if (PyDict_SetItem(w->recent, key, ts_obj) < 0)
        return -1;
    if (ts < w->rotate_at && PyDict_GET_SIZE(w->recent) <= w->max_keys)
        return 0;
    PyObject *fresh = PyDict_New();
    if (fresh == NULL)
        return -1;
    w->rotate_at = (i128)ts + w->window;
    PyObject *at = long_from_i128(w->rotate_at);
    int r = at == NULL ? -1 : 0;
    if (r == 0)
        r = PyObject_SetAttr(w->decoder, s_older, w->recent);
    if (r == 0)
        r = PyObject_SetAttr(w->decoder, s_recent, fresh);
    if (r == 0)
        r = PyObject_SetAttr(w->decoder, s_rotate_at, at);
    Py_XDECREF(at);
    Py_SETREF(w->older, w->recent);
    w->recent = fresh;
    return r;
}

/* The counts Capture.packets() keeps live in stats, as of the last frame taken. */
static int flush(Walker *w, PyObject *frame_obj, PyObject *ts_obj)
{
    if (w->taken == 0)
        return 0;
    if (frame_obj ? PyObject_SetAttr(w->stats, s_frames, frame_obj) : set_i64(w->stats, s_frames, w->frames))
        return -1;
    if (ts_obj ? PyObject_SetAttr(w->stats, s_last_ts_ns, ts_obj) : set_i64(w->stats, s_last_ts_ns, w->last_ts))
        return -1;
    if (w->first_dirty) {
        if (set_i64(w->stats, s_first_ts_ns, w->last_ts))
            return -1;
        w->first_dirty = 0;
    }
    if (set_i64(w->stats, s_decoded, w->decoded))
        return -1;
    if (w->counts_dirty) {
        if (set_i64(w->stats, s_duplicates, w->duplicates) || set_i64(w->stats, s_truncated, w->truncated))
            return -1;
        w->counts_dirty = 0;
    }
    return 0;
}

static PyObject *make_packet(Walker *w, const Frame *f, PyObject *frame_obj, PyObject *ts_obj)
{
    const u8 *t = f->tcp;
    PyObject *items[13];
    items[0] = frame_obj;
    Py_INCREF(frame_obj);
    items[1] = ts_obj;
    Py_INCREF(ts_obj);
    items[2] = addr_bytes(w, f->src, f->alen);
    items[3] = addr_bytes(w, f->dst, f->alen);
    items[4] = u16_long(be16(t));
    items[5] = u16_long(be16(t + 2));
    items[6] = PyLong_FromUnsignedLong(be32(t + 4));
    items[7] = PyLong_FromUnsignedLong(be32(t + 8));
    items[8] = PyLong_FromLong(t[13]);
    items[9] = u16_long(be16(t + 14));
    items[10] = PyBytes_FromStringAndSize((const char *)w->p + f->payload, f->end - f->payload);
    items[11] = PyLong_FromLongLong(f->missing);
    if (f->has_vni && w->have_vni && f->vni == w->cached_vni) { /* the innermost VXLAN's */
        items[12] = w->cached_vni_obj;
        Py_INCREF(items[12]);
    } else if (f->has_vni) {
        items[12] = PyLong_FromUnsignedLong(f->vni);
    } else {
        items[12] = Py_None;
        Py_INCREF(Py_None);
    }
    PyObject *packet = NULL;
    int ok = 1;
    for (int i = 0; i < 13; i++)
        ok &= items[i] != NULL;
    if (ok)
        packet = w->packet_type->tp_alloc(w->packet_type, 13); /* tuple.__new__(Packet, ...) */
    if (packet == NULL) {
        for (int i = 0; i < 13; i++)
            Py_XDECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < 13; i++)
        PyTuple_SET_ITEM(packet, i, items[i]);
    return packet;
}

/* Take the decoded frame: the counts Capture.packets() and the decoder keep. */
static int commit(Walker *w, const Record *r, const Frame *f)
{
    w->pos = r->next;
    w->taken++;
    w->frames++;
    if (!w->have_last) {
        w->have_last = 1;
        w->first_dirty = 1;
    }
    w->last_ts = r->ts;
    w->run++;
    if (r->sets_spb_ts) {
        w->spb_ts = r->ts;
        w->spb_ok = 1;
        Py_CLEAR(w->spb_ts_obj); /* made when the walk stops */
    }
    for (int i = 0; i < f->ntunnels; i++)
        if (counter_add(w->tunnels, f->labels[i]) < 0)
            return -1;
    return 0;
}

static PyObject *walker_next(Walker *w)
{
    while (!w->halted) {
        Record r;
        if (!(w->pcapng ? pcapng_record(w, &r) : pcap_record(w, &r)))
            break;
        if (w->have_last && r.ts < w->last_ts && w->last_ts - r.ts >= BACKWARDS_NOTED_NS)
            break; /* time_went_backwards */
        if (r.linktype != w->linktype_seen)
            break; /* Python counts the run that ends */
        Frame f;
        f.ntunnels = 0;
        f.has_vni = 0;
        int out = d_link(w, r.linktype, w->p, r.start, r.end, &f);
        if (out < 0)
            return NULL;
        if (out == OUT_PYTHON)
            break;
        if (out == OUT_SKIP) {
            if (commit(w, &r, &f) < 0 || counter_add(w->skipped, w->skip_names[f.skip]) < 0)
                return NULL;
            continue;
        }
        PyObject *key = dedup_key(&f);
        if (key == NULL)
            return NULL;
        int seen = seen_before(w, key, r.ts);
        if (seen < 0 || seen == 2) {
            Py_DECREF(key);
            if (seen < 0)
                return NULL;
            break;
        }
        if (commit(w, &r, &f) < 0) {
            Py_DECREF(key);
            return NULL;
        }
        if (seen) {
            Py_DECREF(key);
            w->duplicates++;
            w->counts_dirty = 1;
            continue;
        }
        PyObject *ts_obj = PyLong_FromLongLong(r.ts), *frame_obj = PyLong_FromLongLong(w->frames);
        PyObject *packet = NULL;
        if (ts_obj && frame_obj && remember(w, key, ts_obj, r.ts) == 0) {
            w->decoded++;
            if (f.missing) {
                w->truncated++;
                w->counts_dirty = 1;
            }
            packet = make_packet(w, &f, frame_obj, ts_obj);
            if (packet && flush(w, frame_obj, ts_obj) < 0)
                Py_CLEAR(packet);
        }
        Py_DECREF(key);
        Py_XDECREF(ts_obj);
        Py_XDECREF(frame_obj);
        return packet;
    }
    /* Python's turn: the counts as of the last frame taken */
    w->halted = 1;
    if (flush(w, NULL, NULL) < 0)
        return NULL;
    return NULL;
}

/* ---- Python interface ------------------------------------------------------------------- */

static void release_walk(Walker *w)
{
    Py_CLEAR(w->buf);
    Py_CLEAR(w->recent);
    Py_CLEAR(w->older);
    w->p = NULL;
    w->len = w->pos = 0;
}

static int walker_traverse(Walker *w, visitproc visit, void *arg)
{
    Py_VISIT(w->linktype_obj);
    Py_VISIT(w->spb_ts_obj);
    Py_VISIT(w->cached_vni_obj);
    Py_VISIT(w->cached_label);
    Py_VISIT(w->packet_type);
    Py_VISIT(w->decoder);
    Py_VISIT(w->stats);
    Py_VISIT(w->skipped);
    Py_VISIT(w->tunnels);
    Py_VISIT(w->vxlan_labels);
    Py_VISIT(w->recent);
    Py_VISIT(w->older);
    return 0;
}

static int walker_clear(Walker *w)
{
    release_walk(w);
    Py_CLEAR(w->packet_type);
    Py_CLEAR(w->decoder);
    Py_CLEAR(w->stats);
    Py_CLEAR(w->skipped);
    Py_CLEAR(w->tunnels);
    Py_CLEAR(w->vxlan_labels);
    for (int i = 0; i < N_SKIPS; i++)
        Py_CLEAR(w->skip_names[i]);
    Py_CLEAR(w->spb_ts_obj);
    Py_CLEAR(w->linktype_obj);
    Py_CLEAR(w->cached_vni_obj);
    Py_CLEAR(w->cached_label);
    for (int i = 0; i < ADDR_CACHE; i++)
        Py_CLEAR(w->addrs[i]);
    PyMem_Free(w->ifaces);
    w->ifaces = NULL;
    w->nifaces = 0;
    return 0;
}

static void walker_dealloc(Walker *w)
{
    PyObject_GC_UnTrack(w);
    walker_clear(w);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static int walker_init(Walker *w, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"packet_type", "decoder", "stats", "skipped", "tunnels", "vxlan_labels",
                         "skip_names", "max_keys", NULL};
    PyObject *packet_type, *decoder, *stats, *skipped, *tunnels, *labels, *names;
    Py_ssize_t max_keys;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOO!O!O!O!n", kw, &PyType_Type, &packet_type, &decoder,
                                     &stats, &PyDict_Type, &skipped, &PyDict_Type, &tunnels, &PyDict_Type,
                                     &labels, &PyTuple_Type, &names, &max_keys))
        return -1;
    if (!PyType_IsSubtype((PyTypeObject *)packet_type, &PyTuple_Type)
        || ((PyTypeObject *)packet_type)->tp_itemsize != PyTuple_Type.tp_itemsize
        || ((PyTypeObject *)packet_type)->tp_basicsize != PyTuple_Type.tp_basicsize) {
        PyErr_SetString(PyExc_TypeError, "packet_type must be a NamedTuple class");
        return -1;
    }
    if (PyTuple_GET_SIZE(names) != N_SKIPS) {
        PyErr_SetString(PyExc_ValueError, "skip_names: not_ip, arp, udp, icmp, other_ip_proto");
        return -1;
    }
    walker_clear(w);
#define KEEP(field, value) (Py_INCREF(value), w->field = (value))
    KEEP(packet_type, (PyTypeObject *)packet_type);
    KEEP(decoder, decoder);
    KEEP(stats, stats);
    KEEP(skipped, skipped);
    KEEP(tunnels, tunnels);
    KEEP(vxlan_labels, labels);
    for (int i = 0; i < N_SKIPS; i++)
        KEEP(skip_names[i], PyTuple_GET_ITEM(names, i));
#undef KEEP
    w->max_keys = max_keys;
    w->halted = 1;
    return 0;
}

static PyObject *walker_set_pcap(Walker *w, PyObject *args)
{
    int big;
    long long frac_ns;
    long linktype;
    if (!PyArg_ParseTuple(args, "pLl", &big, &frac_ns, &linktype))
        return NULL;
    w->pcapng = 0;
    w->big = big;
    w->frac_ns = frac_ns;
    w->pcap_linktype = linktype;
    Py_RETURN_NONE;
}

/* One interface tuple (linktype, snaplen, mul, div, offset_ns), as _Interface holds it. */
static int load_iface(PyObject *t, Iface *i)
{
    PyObject *linktype, *snaplen, *mul, *div, *offset;
    if (!PyArg_ParseTuple(t, "OOOOO", &linktype, &snaplen, &mul, &div, &offset))
        return -1;
    i->linktype = PyLong_AsLong(linktype);
    if (i->linktype == -1 && PyErr_Occurred())
        return -1;
    unsigned long long s = PyLong_AsUnsignedLongLong(snaplen);
    if (s == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    i->snaplen = (uint32_t)s;
    i->usable = 0;
    /* A clock beyond 64 bits (if_tsresol 10^-127, an extreme if_tsoffset) is Python's. */
    unsigned long long m = PyLong_AsUnsignedLongLong(mul);
    if (m == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    unsigned long long d = PyLong_AsUnsignedLongLong(div);
    if (d == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    int overflow = 0;
    long long o = PyLong_AsLongLongAndOverflow(offset, &overflow);
    if (o == -1 && PyErr_Occurred())
        return -1;
    /* (2^64 - 1) * mul must fit 128 bits: mul <= 10^9 always (capture.py's _Interface) */
    i->usable = !overflow && d != 0 && m <= 1000000000ULL && s <= UINT32_MAX;
    i->mul = m;
    i->div = d;
    i->offset_ns = o;
    return 0;
}

static PyObject *walker_set_pcapng(Walker *w, PyObject *args)
{
    int big;
    PyObject *list;
    if (!PyArg_ParseTuple(args, "pO!", &big, &PyList_Type, &list))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(list);
    Iface *ifaces = PyMem_Calloc(n ? n : 1, sizeof(Iface));
    if (ifaces == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t k = 0; k < n; k++) {
        if (load_iface(PyList_GET_ITEM(list, k), &ifaces[k]) < 0) {
            PyMem_Free(ifaces);
            return NULL;
        }
    }
    PyMem_Free(w->ifaces);
    w->ifaces = ifaces;
    w->nifaces = n;
    w->pcapng = 1;
    w->big = big;
    Py_RETURN_NONE;
}

/* start(buf, pos, linktype_seen, run, spb_ts): walk buf from pos, with the decoder's and
 * stats' state as Python left it. */
static PyObject *walker_start(Walker *w, PyObject *args)
{
    PyObject *buf, *linktype, *spb_ts;
    Py_ssize_t pos;
    long long run;
    if (!PyArg_ParseTuple(args, "O!nOLO", &PyBytes_Type, &buf, &pos, &linktype, &run, &spb_ts))
        return NULL;
    release_walk(w);
    w->halted = 1;
    if (w->decoder == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Walker.__init__ was not called");
        return NULL;
    }
    if (pos < 0 || pos > PyBytes_GET_SIZE(buf)) {
        PyErr_SetString(PyExc_ValueError, "position outside the buffer");
        return NULL;
    }
    Py_INCREF(buf);
    w->buf = buf;
    w->p = (const u8 *)PyBytes_AS_STRING(buf);
    w->len = PyBytes_GET_SIZE(buf);
    w->pos = pos;
    Py_INCREF(linktype);
    Py_XSETREF(w->linktype_obj, linktype);
    w->linktype_seen = PyLong_AsLong(linktype);
    w->run = run;
    Py_INCREF(spb_ts);
    Py_XSETREF(w->spb_ts_obj, spb_ts);
    int overflow = 0;
    w->spb_ts = PyLong_AsLongLongAndOverflow(spb_ts, &overflow);
    w->spb_ok = !overflow;
    if (PyErr_Occurred())
        return NULL;

    w->recent = PyObject_GetAttr(w->decoder, s_recent);
    w->older = w->recent ? PyObject_GetAttr(w->decoder, s_older) : NULL;
    if (w->older == NULL)
        return NULL;
    if (!PyDict_CheckExact(w->recent) || !PyDict_CheckExact(w->older)) {
        PyErr_SetString(PyExc_TypeError, "the decoder's duplicate tables must be dicts");
        return NULL;
    }
    /* Anything beyond 64 bits (a damaged pcapng clock, a huge window) is left to Python:
     * the walk then stops at once. */
    int64_t rotate_at;
    int none, r;
    int ok = 1;
    if ((r = get_i64(w->decoder, s_window, &w->window, &none)) < 0)
        return NULL;
    ok &= r;
    if ((r = get_i64(w->decoder, s_rotate_at, &rotate_at, &none)) < 0)
        return NULL;
    ok &= r;
    w->rotate_at = rotate_at;
    if ((r = get_i64(w->stats, s_frames, &w->frames, &none)) < 0)
        return NULL;
    ok &= r;
    if ((r = get_i64(w->stats, s_decoded, &w->decoded, &none)) < 0)
        return NULL;
    ok &= r;
    if ((r = get_i64(w->stats, s_duplicates, &w->duplicates, &none)) < 0)
        return NULL;
    ok &= r;
    if ((r = get_i64(w->stats, s_truncated, &w->truncated, &none)) < 0)
        return NULL;
    ok &= r;
    if ((r = get_i64(w->stats, s_last_ts_ns, &w->last_ts, &none)) < 0)
        return NULL;
    ok &= r || none;
    w->have_last = !none;
    w->taken = 0;
    w->first_dirty = w->counts_dirty = 0;
    w->halted = !ok || PyErr_Occurred();
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *walker_iter(PyObject *self)
{
    Py_INCREF(self);
    return self;
}

static PyObject *get_pos(Walker *w, void *Py_UNUSED(c)) { return PyLong_FromSsize_t(w->pos); }

static PyObject *get_taken(Walker *w, void *Py_UNUSED(c)) { return PyLong_FromLongLong(w->taken); }

/* (linktype, frames of it not yet in stats.link_types) */
static PyObject *get_link_run(Walker *w, void *Py_UNUSED(c))
{
    return Py_BuildValue("(OL)", w->linktype_obj ? w->linktype_obj : Py_None, (long long)w->run);
}

/* The pcapng reader's _last_ts_ns after the walk. */
static PyObject *get_spb_ts(Walker *w, void *Py_UNUSED(c))
{
    if (w->spb_ts_obj == NULL) {
        w->spb_ts_obj = PyLong_FromLongLong(w->spb_ts);
        if (w->spb_ts_obj == NULL)
            return NULL;
    }
    Py_INCREF(w->spb_ts_obj);
    return w->spb_ts_obj;
}

static PyMethodDef walker_methods[] = {
    {"set_pcap", (PyCFunction)walker_set_pcap, METH_VARARGS,
     "set_pcap(big_endian, frac_ns, linktype): classic pcap records"},
    {"set_pcapng", (PyCFunction)walker_set_pcapng, METH_VARARGS,
     "set_pcapng(big_endian, [(linktype, snaplen, mul, div, offset_ns), ...]): the section's interfaces"},
    {"start", (PyCFunction)walker_start, METH_VARARGS,
     "start(buf, pos, linktype_seen, run, spb_ts): iterate from buf[pos:] until Python's turn"},
    {NULL},
};

static PyGetSetDef walker_getset[] = {
    {"pos", (getter)get_pos, NULL, "where the walk stopped: the record Python reads next", NULL},
    {"taken", (getter)get_taken, NULL, "frames taken by the last walk", NULL},
    {"link_run", (getter)get_link_run, NULL, "(linktype, frames not yet counted in stats.link_types)", NULL},
    {"spb_ts", (getter)get_spb_ts, NULL, "the time a pcapng Simple Packet Block would get", NULL},
    {NULL},
};

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "alb_pcap.wire._fastwire.Walker",
    .tp_basicsize = sizeof(Walker),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Walks records of one capture and decodes the frames it knows (see capture.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)walker_init,
    .tp_dealloc = (destructor)walker_dealloc,
    .tp_traverse = (traverseproc)walker_traverse,
    .tp_clear = (inquiry)walker_clear,
    .tp_iter = walker_iter,
    .tp_iternext = (iternextfunc)walker_next,
    .tp_methods = walker_methods,
    .tp_getset = walker_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastwire", "The capture stage's per-packet loop in C (see capture.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastwire(void)
{
#define INTERN(var, text) if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL
    INTERN(s_frames, "frames");
    INTERN(s_decoded, "decoded");
    INTERN(s_duplicates, "duplicates");
    INTERN(s_truncated, "truncated");
    INTERN(s_first_ts_ns, "first_ts_ns");
    INTERN(s_last_ts_ns, "last_ts_ns");
    INTERN(s_recent, "_recent");
    INTERN(s_older, "_older");
    INTERN(s_rotate_at, "_rotate_at");
    INTERN(s_window, "_window");
#undef INTERN
    if (PyType_Ready(&WalkerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WalkerType);
    if (PyModule_AddObject(m, "Walker", (PyObject *)&WalkerType) < 0
        || PyModule_AddIntConstant(m, "MAX_TUNNEL_DEPTH", MAX_TUNNEL_DEPTH) < 0
        || PyModule_AddIntConstant(m, "MAX_RECORD_LEN", MAX_RECORD_LEN) < 0
        || PyModule_AddIntConstant(m, "MAX_BLOCK_LEN", MAX_BLOCK_LEN) < 0
        || PyModule_AddIntConstant(m, "BACKWARDS_NOTED_NS", BACKWARDS_NOTED_NS) < 0) {
        Py_DECREF(&WalkerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
