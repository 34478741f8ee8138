/*
 * _speedups: the two per-path encodings of a backup, in C, for their common case.
 *
 * A full backup encodes every path twice: a tar header into the archive and a JSON object
 * into the manifest (70k paths on the benchmark tree). In Python the headers alone held the
 * GIL for about a quarter of the packing thread's time, and the manifest's entries were most
 * of the work left after the last archive byte.
 *
 * Contract: each function returns exactly what its Python definition returns, or None where
 * the input is outside the common case; the caller then runs the Python definition, which
 * stays the one definition of each format. Tests compare the two over every case they build,
 * and tests/archive/test_native_properties.py over generated input (hypothesis); the
 * functions are also run under AddressSanitizer and UBSan (scripts/sanitize).
 *
 * - encode(...): tarformat.encode_header (tests/archive/test_tarformat.py). None for a name
 *   or link name over 100 bytes, a size, uid or gid too large for its octal field, a user or
 *   group name that is not short ASCII, device numbers out of range, or input encode_header
 *   refuses.
 * - decode(block): the fields TarReader reads from one header block, checksum verified
 *   (tests/archive/test_tarformat.py). None for anything but plain octal fields and a
 *   checksum in the form every POSIX writer uses, and for a checksum that does not match:
 *   the Python reader then parses the block and names what is wrong. Every error, the range
 *   checks of a member's numbers included, is the Python reader's, so both decoders fail
 *   alike on a hostile header (tests/archive/test_tar_fuzz.py fuzzes the two side by side).
 * - entry_json(record): pack.Record.to_json (tests/archive/test_pack.py). None for a number
 *   that does not fit 64 bits, a field of an unexpected type, or a type or sha256 string
 *   that JSON would escape (the Python definition escapes it).
 *
 * - tree_encode(state): the tree cache's uncompressed payload (inventory/tree_codec.py's
 *   Python encoder); None for a path with a NUL, an unusual type name or a number beyond
 *   int64. Its decoder is Python only: it reads what other hosts wrote.
 *
 * And one for restore: write_new(...) creates one small file with its content and metadata
 * in a single call outside the GIL. In Python each of its six system calls released and took
 * back the GIL, and with several restore threads those hand-offs (futex calls by the
 * million) cost more CPU than the files themselves. Same steps as extract.py's Python path
 * (tests/test_restore.py restores both ways). Given the process's umask it sets a mode the
 * umask leaves whole at creation (no fchmod), and the caller asks for no fchown where the new
 * file's owner is already the one wanted: open, write, futimens, close for the common file.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOCK 512
#define OCTAL_7 2097152LL            /* 8**7 */
#define OCTAL_11 8589934592LL        /* 8**11 */
#define NS 1000000000LL
#define PAX_DIR "./PaxHeaders/"
#define PAX_DIR_LEN 13

static void octal(char *field, int digits, unsigned long long v) {
    /* digits octal digits, zero-padded, then NUL: what b"%0Do\0" % v writes when v fits */
    field[digits] = '\0';
    for (int i = digits - 1; i >= 0; i--) {
        field[i] = (char)('0' + (v & 7));
        v >>= 3;
    }
}

/* One ustar block; name/linkname/uname/gname are copied (NUL-padded), prefix is empty. */
static void ustar(char *b, const char *name, size_t namelen, unsigned mode, unsigned long long uid,
                  unsigned long long gid, unsigned long long size, unsigned long long mtime,
                  char type, const char *link, size_t linklen, const char *uname, size_t unamelen,
                  const char *gname, size_t gnamelen, unsigned devmajor, unsigned devminor) {
    memset(b, 0, BLOCK);
    memcpy(b, name, namelen);
    octal(b + 100, 7, mode);
    octal(b + 108, 7, uid);
    octal(b + 116, 7, gid);
    octal(b + 124, 11, size);
    octal(b + 136, 11, mtime);
    memset(b + 148, ' ', 8);
    b[156] = type;
    memcpy(b + 157, link, linklen);
    memcpy(b + 257, "ustar\0" "00", 8);
    memcpy(b + 265, uname, unamelen);
    memcpy(b + 297, gname, gnamelen);
    octal(b + 329, 7, devmajor);
    octal(b + 337, 7, devminor);
    unsigned sum = 0;
    for (int i = 0; i < BLOCK; i++) sum += (unsigned char)b[i];
    char chk[8];
    octal(chk, 6, sum);
    chk[7] = ' ';
    memcpy(b + 148, chk, 8);
}

static int valid_type(char t) { return t >= '0' && t <= '6'; }

static PyObject *encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "encode takes 12 positional arguments");
        return NULL;
    }
    /* name, type, size, mode, mtime_ns, uid, gid, uname, gname, linkname, devmajor, devminor */
    if (!PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]) ||
        !PyBytes_CheckExact(args[9]) || !PyUnicode_CheckExact(args[7]) ||
        !PyUnicode_CheckExact(args[8]))
        Py_RETURN_NONE;
    const char *name = PyBytes_AS_STRING(args[0]);
    Py_ssize_t namelen = PyBytes_GET_SIZE(args[0]);
    const char *link = PyBytes_AS_STRING(args[9]);
    Py_ssize_t linklen = PyBytes_GET_SIZE(args[9]);
    if (PyBytes_GET_SIZE(args[1]) != 1) Py_RETURN_NONE;
    char type = PyBytes_AS_STRING(args[1])[0];
    if (!valid_type(type)) Py_RETURN_NONE;

    long long vals[7]; /* size, mode, mtime_ns, uid, gid, devmajor, devminor */
    static const int idx[7] = {2, 3, 4, 5, 6, 10, 11};
    for (int i = 0; i < 7; i++) {
        if (!PyLong_Check(args[idx[i]])) Py_RETURN_NONE;
        int overflow = 0;
        vals[i] = PyLong_AsLongLongAndOverflow(args[idx[i]], &overflow);
        if (overflow) Py_RETURN_NONE;
        if (vals[i] == -1 && PyErr_Occurred()) return NULL;
    }
    long long size = vals[0], mode = vals[1], mtime_ns = vals[2], uid = vals[3], gid = vals[4];
    long long devmajor = vals[5], devminor = vals[6];
    if (size < 0 || size >= OCTAL_11 || uid < 0 || uid >= OCTAL_7 || gid < 0 || gid >= OCTAL_7 ||
        devmajor < 0 || devmajor >= OCTAL_7 || devminor < 0 || devminor >= OCTAL_7)
        Py_RETURN_NONE;

    if (!PyUnicode_IS_ASCII(args[7]) || !PyUnicode_IS_ASCII(args[8])) Py_RETURN_NONE;
    Py_ssize_t unamelen = PyUnicode_GET_LENGTH(args[7]), gnamelen = PyUnicode_GET_LENGTH(args[8]);
    if (unamelen >= 32 || gnamelen >= 32) Py_RETURN_NONE;
    const char *uname = (const char *)PyUnicode_DATA(args[7]);
    const char *gname = (const char *)PyUnicode_DATA(args[8]);

    if (namelen == 0 || name[0] == '/' || memchr(name, '\0', namelen) ||
        memchr(link, '\0', linklen))
        Py_RETURN_NONE;
    int add_slash = type == '5' && name[namelen - 1] != '/';
    Py_ssize_t fulllen = namelen + add_slash;
    if (fulllen > 100 || linklen > 100) Py_RETURN_NONE;
    char fullname[101];
    memcpy(fullname, name, namelen);
    if (add_slash) fullname[namelen] = '/';

    /* floor division, as Python's divmod */
    long long seconds = mtime_ns / NS, fraction = mtime_ns % NS;
    if (fraction < 0) {
        fraction += NS;
        seconds -= 1;
    }
    int pax = fraction != 0 || seconds < 0 || seconds >= OCTAL_11;
    long long stored_seconds = seconds < 0 ? 0 : seconds >= OCTAL_11 ? OCTAL_11 - 1 : seconds;

    char header[BLOCK];
    ustar(header, fullname, (size_t)fulllen, (unsigned)(mode & 07777), (unsigned long long)uid,
          (unsigned long long)gid, (unsigned long long)size, (unsigned long long)stored_seconds,
          type, link, (size_t)linklen, uname, (size_t)unamelen, gname, (size_t)gnamelen,
          (unsigned)devmajor, (unsigned)devminor);
    if (!pax) return PyBytes_FromStringAndSize(header, BLOCK);

    /* the mtime as a pax record: "<len> mtime=<value>\n", the length counting its own digits */
    char value[48];
    unsigned long long mag = mtime_ns < 0 ? (unsigned long long)(-(mtime_ns + 1)) + 1
                                          : (unsigned long long)mtime_ns;
    unsigned long long msec = mag / NS, mfrac = mag % NS;
    int vlen = snprintf(value, sizeof value, "%s%llu", mtime_ns < 0 ? "-" : "", msec);
    if (mfrac) {
        char frac[10];
        snprintf(frac, sizeof frac, "%09llu", mfrac);
        int flen = 9;
        while (frac[flen - 1] == '0') flen--;
        vlen += snprintf(value + vlen, sizeof value - (size_t)vlen, ".%.*s", flen, frac);
    }
    int n = 8 + vlen; /* " mtime=" + value + "\n" */
    char digits[24];
    int nd = snprintf(digits, sizeof digits, "%d", n);
    int length = n + nd;
    int ld = snprintf(digits, sizeof digits, "%d", length);
    if (ld != nd) length = n + ld;
    char record[96];
    int rlen = snprintf(record, sizeof record, "%d mtime=%s\n", length, value);

    /* the pax header's name: ./PaxHeaders/ + the member's base name, cut to fit 100 bytes */
    Py_ssize_t end = fulllen;
    while (end > 0 && fullname[end - 1] == '/') end--;
    Py_ssize_t start = end;
    while (start > 0 && fullname[start - 1] != '/') start--;
    Py_ssize_t baselen = end - start;
    if (baselen > 100 - PAX_DIR_LEN) baselen = 100 - PAX_DIR_LEN;
    char paxname[100];
    memcpy(paxname, PAX_DIR, PAX_DIR_LEN);
    memcpy(paxname + PAX_DIR_LEN, fullname + start, (size_t)baselen);

    Py_ssize_t total = BLOCK + ((rlen + BLOCK - 1) / BLOCK) * BLOCK + BLOCK;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) return NULL;
    char *o = PyBytes_AS_STRING(out);
    ustar(o, paxname, (size_t)(PAX_DIR_LEN + baselen), 0644, 0, 0, (unsigned long long)rlen,
          (unsigned long long)stored_seconds, 'x', "", 0, "", 0, "", 0, 0, 0);
    memset(o + BLOCK, 0, (size_t)(total - 2 * BLOCK));
    memcpy(o + BLOCK, record, (size_t)rlen);
    memcpy(o + total - BLOCK, header, BLOCK);
    return out;
}

/* ---- tar header decoding ----------------------------------------------------------------- */

/* digits then one NUL (what POSIX writers end numbers with): 0 and *out set, else -1 */
static int plain_octal(const unsigned char *f, int len, long long *out) {
    if (len < 2 || f[len - 1] != 0) return -1;
    long long v = 0;
    for (int i = 0; i < len - 1; i++) {
        if (f[i] < '0' || f[i] > '7') return -1;
        v = v * 8 + (f[i] - '0');
    }
    *out = v;
    return 0;
}

static Py_ssize_t cstrlen(const unsigned char *f, Py_ssize_t len) {
    const unsigned char *z = memchr(f, 0, (size_t)len);
    return z ? z - f : len;
}

static PyObject *decode(PyObject *self, PyObject *arg) {
    if (!PyBytes_CheckExact(arg) || PyBytes_GET_SIZE(arg) != BLOCK) Py_RETURN_NONE;
    const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(arg);
    /* checksum: "dddddd\0 " (six octal digits), the sum of the block with the field as spaces */
    if (b[154] != 0 || b[155] != ' ') Py_RETURN_NONE;
    long long recorded = 0;
    for (int i = 148; i < 154; i++) {
        if (b[i] < '0' || b[i] > '7') Py_RETURN_NONE;
        recorded = recorded * 8 + (b[i] - '0');
    }
    long long sum = 8 * ' ';
    for (int i = 0; i < BLOCK; i++)
        if (i < 148 || i >= 156) sum += b[i];
    if (sum != recorded) Py_RETURN_NONE;

    long long mode, uid, gid, size, mtime, devmajor = 0, devminor = 0;
    if (plain_octal(b + 100, 8, &mode) || plain_octal(b + 108, 8, &uid) ||
        plain_octal(b + 116, 8, &gid) || plain_octal(b + 124, 12, &size) ||
        plain_octal(b + 136, 12, &mtime))
        Py_RETURN_NONE;
    char type = (char)b[156];
    if ((type == '3' || type == '4') &&
        (plain_octal(b + 329, 8, &devmajor) || plain_octal(b + 337, 8, &devminor)))
        Py_RETURN_NONE;

    char name[256];
    Py_ssize_t namelen = cstrlen(b, 100), prefixlen = 0;
    if (memcmp(b + 257, "ustar\0" "00", 8) == 0) prefixlen = cstrlen(b + 345, 155);
    Py_ssize_t n = 0;
    if (prefixlen) {
        memcpy(name, b + 345, (size_t)prefixlen);
        name[prefixlen] = '/';
        n = prefixlen + 1;
    }
    memcpy(name + n, b, (size_t)namelen);
    n += namelen;
    PyObject *uname = PyUnicode_DecodeUTF8((const char *)b + 265, cstrlen(b + 265, 32),
                                           "surrogateescape");
    PyObject *gname = uname ? PyUnicode_DecodeUTF8((const char *)b + 297, cstrlen(b + 297, 32),
                                                   "surrogateescape")
                            : NULL;
    if (gname == NULL) {
        Py_XDECREF(uname);
        return NULL;
    }
    return Py_BuildValue("(y#y#y#LLLLLNNLL)", &type, (Py_ssize_t)1, name, n, b + 157,
                         cstrlen(b + 157, 100), mode & 07777, uid, gid, size, mtime, uname, gname,
                         devmajor, devminor);
}

/* ---- manifest entries ------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} buf;

static int put(buf *b, const char *s, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap * 2 > b->n + n ? b->cap * 2 : b->n + n;
        char *p = PyMem_Realloc(b->p, cap);
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

static int puts_(buf *b, const char *s) { return put(b, s, strlen(s)); }

/* results of the put_ functions below: the field was written (or skipped, being None) */
enum { PUT_OK = 0, PUT_ERROR = -1, PUT_DEFER = -2 /* not the common case: Python encodes */ };

/* "text" for a str of printable ASCII other than '"' and '\\' (the type and sha256 fields,
   as this code writes them): PUT_OK, or PUT_DEFER for anything else, which the Python
   definition escapes. The length is the str's own, never strlen: a NUL inside is a character
   to escape, not the end. */
static int put_text(buf *b, PyObject *text) {
    if (!PyUnicode_IS_ASCII(text)) return PUT_DEFER;
    const unsigned char *s = (const unsigned char *)PyUnicode_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] >= 0x7f || s[i] == '"' || s[i] == '\\') return PUT_DEFER;
    return put(b, "\"", 1) || put(b, (const char *)s, (size_t)n) || put(b, "\"", 1) ? PUT_ERROR
                                                                                   : PUT_OK;
}

/* the JSON string json.encoder.encode_basestring_ascii writes for os.fsdecode(raw) */
static int put_path(buf *b, PyObject *raw, PyObject *escape) {
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    int plain = 1;
    for (Py_ssize_t i = 0; i < n && plain; i++)
        plain = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\';
    if (plain) return put(b, "\"", 1) || put(b, (const char *)s, (size_t)n) || put(b, "\"", 1);
    PyObject *text = PyUnicode_DecodeFSDefaultAndSize((const char *)s, n);
    if (text == NULL) return -1;
    PyObject *quoted = PyObject_CallOneArg(escape, text);
    Py_DECREF(text);
    if (quoted == NULL) return -1;
    Py_ssize_t qn;
    const char *q = PyUnicode_AsUTF8AndSize(quoted, &qn);
    int rc = q == NULL ? -1 : put(b, q, (size_t)qn);
    Py_DECREF(quoted);
    return rc;
}

enum {
    A_PATH, A_TYPE, A_SIZE, A_MODE, A_MTIME, A_CTIME, A_INO, A_UID, A_GID, A_OFFSET,
    A_DATA_OFFSET, A_SHA256, A_LINK, A_FILE_SIZE, A_DEVMAJOR, A_DEVMINOR, A_COUNT
};
static const char *const attr_names[A_COUNT] = {
    "path", "type", "size", "mode", "mtime_ns", "ctime_ns", "ino", "uid", "gid", "offset",
    "data_offset", "sha256", "link", "file_size", "devmajor", "devminor",
};
static PyObject *attrs[A_COUNT]; /* interned once: a lookup per field per path */

static int put_decimal(buf *b, long long x) {
    char tmp[24];
    char *e = tmp + sizeof tmp, *p = e;
    unsigned long long m = x < 0 ? (unsigned long long)(-(x + 1)) + 1 : (unsigned long long)x;
    do {
        *--p = (char)('0' + m % 10);
        m /= 10;
    } while (m);
    if (x < 0) *--p = '-';
    return put(b, p, (size_t)(e - p));
}

static PyObject *escape_fn; /* json.encoder.encode_basestring_ascii, set on first use */


/* ,"key":value for the int attributes first..last; None skipped where optional */
static int put_ints(buf *b, PyObject *rec, int first, int last, int optional) {
    for (int attr = first; attr <= last; attr++) {
        PyObject *v = PyObject_GetAttr(rec, attrs[attr]);
        if (v == NULL) return PUT_ERROR;
        if (v == Py_None && optional) {
            Py_DECREF(v);
            continue;
        }
        int exact = PyLong_CheckExact(v), overflow = 0;
        long long x = exact ? PyLong_AsLongLongAndOverflow(v, &overflow) : 0;
        Py_DECREF(v);
        if (!exact || overflow) return PUT_DEFER;
        if (x == -1 && PyErr_Occurred()) return PUT_ERROR;
        if (put(b, ",\"", 2) || puts_(b, attr_names[attr]) || put(b, "\":", 2) ||
            put_decimal(b, x))
            return PUT_ERROR;
    }
    return PUT_OK;
}

/* ,"key":<text> for a str attribute (sha256) or ,"key":<path> for a bytes one (link);
   None skipped */
static int put_optional_text(buf *b, PyObject *rec, int attr, int is_path) {
    PyObject *v = PyObject_GetAttr(rec, attrs[attr]);
    if (v == NULL) return PUT_ERROR;
    int rc = PUT_OK;
    if (v == Py_None) {
        /* skipped */
    } else if (is_path ? !PyBytes_CheckExact(v) : !PyUnicode_CheckExact(v)) {
        rc = PUT_DEFER;
    } else if (put(b, ",\"", 2) || puts_(b, attr_names[attr]) || put(b, "\":", 2)) {
        rc = PUT_ERROR;
    } else if (is_path) {
        rc = put_path(b, v, escape_fn) ? PUT_ERROR : PUT_OK;
    } else {
        rc = put_text(b, v);
    }
    Py_DECREF(v);
    return rc;
}



static PyObject *entry_json(PyObject *self, PyObject *rec) {
    if (escape_fn == NULL) {
        /* escape_fn is set last: it marks the names as interned, so a failure part way
           leaves everything to be done again on the next call, never a NULL name used */
        for (int i = 0; i < A_COUNT; i++) {
            if (attrs[i] == NULL && (attrs[i] = PyUnicode_InternFromString(attr_names[i])) == NULL)
                return NULL;
        }
        PyObject *mod = PyImport_ImportModule("json.encoder");
        if (mod == NULL) return NULL;
        escape_fn = PyObject_GetAttrString(mod, "encode_basestring_ascii");
        Py_DECREF(mod);
        if (escape_fn == NULL) return NULL;
    }
    PyObject *result = NULL, *path = NULL, *type = NULL;
    int rc = PUT_DEFER;
    buf b = {PyMem_Malloc(1024), 0, 1024};
    if (b.p == NULL) return PyErr_NoMemory();

    path = PyObject_GetAttr(rec, attrs[A_PATH]);
    type = path ? PyObject_GetAttr(rec, attrs[A_TYPE]) : NULL;
    if (type == NULL) {
        rc = PUT_ERROR;
    } else if (PyBytes_CheckExact(path) && PyUnicode_CheckExact(type)) {
        rc = puts_(&b, "{\"path\":") || put_path(&b, path, escape_fn) ||
                     puts_(&b, ",\"type\":")
                 ? PUT_ERROR
                 : put_text(&b, type);
        /* then the record's fields in its slot order: required ints, optional ones */
        if (rc == PUT_OK) rc = put_ints(&b, rec, A_SIZE, A_OFFSET, 0);
        if (rc == PUT_OK) rc = put_ints(&b, rec, A_DATA_OFFSET, A_DATA_OFFSET, 1);
        if (rc == PUT_OK) rc = put_optional_text(&b, rec, A_SHA256, 0);
        if (rc == PUT_OK) rc = put_optional_text(&b, rec, A_LINK, 1);
        if (rc == PUT_OK) rc = put_ints(&b, rec, A_FILE_SIZE, A_DEVMINOR, 1);
        if (rc == PUT_OK && puts_(&b, "}")) rc = PUT_ERROR;
    }
    if (rc == PUT_OK)
        result = PyUnicode_DecodeASCII(b.p, (Py_ssize_t)b.n, "strict");
    else if (rc == PUT_DEFER)
        result = Py_NewRef(Py_None);
    else if (!PyErr_Occurred())
        PyErr_NoMemory();
    PyMem_Free(b.p);
    Py_XDECREF(path);
    Py_XDECREF(type);
    return result;
}

/* ---- restore: one small file ------------------------------------------------------------ */

static PyObject *write_new(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* path, data, mode, uid, gid, mtime_ns, chown[, umask] */
    if (nargs < 7 || nargs > 8 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "write_new(path: bytes, data, mode, uid, gid, mtime_ns, chown, umask=-1)");
        return NULL;
    }
    long long mode = PyLong_AsLongLong(args[2]);
    long long umask_ = nargs == 8 ? PyLong_AsLongLong(args[7]) : -1;
    long long uid = PyLong_AsLongLong(args[3]);
    long long gid = PyLong_AsLongLong(args[4]);
    int overflow = 0;
    long long mtime_ns = PyLong_AsLongLongAndOverflow(args[5], &overflow);
    int chown_it = PyObject_IsTrue(args[6]);
    if (PyErr_Occurred() || chown_it < 0) return NULL;
    /* an mtime a tar header holds but 64-bit nanoseconds do not (before 1677, after 2262):
       nothing created, and the caller's Python path sets it (os.utime takes any time_t) */
    if (overflow) return PyLong_FromLong(EOVERFLOW);
    const char *path = PyBytes_AS_STRING(args[0]);
    if (memchr(path, 0, (size_t)PyBytes_GET_SIZE(args[0]))) {
        /* as os.open: a NUL would cut the path short, to another file than the one named */
        PyErr_SetString(PyExc_ValueError, "embedded null byte");
        return NULL;
    }
    /* With the process's umask known, a mode it leaves whole (no set-id or sticky bit, no
       bit the umask clears) is given at creation, sparing an fchmod: the file is new (O_EXCL),
       so the open still returns a writable descriptor whatever the mode says. Otherwise it
       is created private and fchmod sets the mode after the fchown, as before. */
    mode_t perm = (mode_t)(mode & 07777);
    int mode_at_open = umask_ >= 0 && (perm & ~0777) == 0 && (perm & (mode_t)umask_) == 0;
    Py_buffer data;
    if (PyObject_GetBuffer(args[1], &data, PyBUF_SIMPLE) < 0) return NULL;
    int err = 0, created = 0;
    Py_BEGIN_ALLOW_THREADS
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  mode_at_open ? perm : 0600);
    if (fd < 0) {
        err = errno;
    } else {
        created = 1;
        const char *p = data.buf;
        Py_ssize_t left = data.len;
        while (left > 0 && !err) {
            ssize_t n = write(fd, p, (size_t)left);
            if (n < 0) {
                if (errno != EINTR) err = errno;
            } else {
                p += n;
                left -= n;
            }
        }
        /* as tar does: ownership is best effort; chown first, as it clears set-id bits */
        if (!err && chown_it) (void)(fchown(fd, (uid_t)uid, (gid_t)gid) == 0);
        if (!err && !mode_at_open && fchmod(fd, perm) < 0) err = errno;
        if (!err) {
            long long sec = mtime_ns / 1000000000LL, nsec = mtime_ns % 1000000000LL;
            if (nsec < 0) {
                nsec += 1000000000LL;
                sec -= 1;
            }
            struct timespec ts[2] = {{(time_t)sec, (long)nsec}, {(time_t)sec, (long)nsec}};
            if (futimens(fd, ts) < 0) err = errno;
        }
        if (close(fd) < 0 && !err) err = errno;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    if (!created && (err == EEXIST || err == ENOENT || err == ENOTDIR))
        return PyLong_FromLong(err); /* nothing created: the caller clears the way */
    if (err) {
        errno = err;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[0]);
    }
    return PyLong_FromLong(0);
}

/* ---- the tree cache's encoding ---------------------------------------------------------- */

/* tree_encode(state): the uncompressed payload of backup/inventory/tree_codec.py's format for
   its common case, byte for byte what the Python encoder writes (tests compare the two), or
   None: a path holding a NUL, a type name that is not ASCII of 1 to 255 characters, more
   than 255 of them, a value that is not a 6-tuple of (str, int x 5), or a number beyond
   int64 (the Python encoder writes those columns another way). Only encoding is here: the
   decoder reads bytes other hosts wrote, and stays in Python, bounds-checked. */

static void le64(char *p, unsigned long long v) {
    for (int i = 0; i < 8; i++) p[i] = (char)((v >> (8 * i)) & 0xff);
}

static PyObject *tree_encode(PyObject *self, PyObject *state) {
    if (!PyDict_CheckExact(state)) Py_RETURN_NONE;
    Py_ssize_t n = PyDict_GET_SIZE(state);
    PyObject *table[255];
    int ntypes = 0;
    Py_ssize_t tablelen = 0, keyslen = 0;
    unsigned char *codes = PyMem_Malloc(n ? (size_t)n : 1);
    long long *ints = PyMem_Malloc(n ? (size_t)n * 5 * sizeof *ints : 1);
    PyObject *out = NULL;
    if (codes == NULL || ints == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *value;
    while (PyDict_Next(state, &pos, &key, &value)) {
        if (!PyBytes_CheckExact(key) || !PyTuple_CheckExact(value) || PyTuple_GET_SIZE(value) != 6)
            goto defer;
        Py_ssize_t kl = PyBytes_GET_SIZE(key);
        if (memchr(PyBytes_AS_STRING(key), 0, (size_t)kl)) goto defer;
        keyslen += kl;
        PyObject *type = PyTuple_GET_ITEM(value, 0);
        if (!PyUnicode_CheckExact(type)) goto defer;
        int code = 0;
        while (code < ntypes && table[code] != type && PyUnicode_Compare(table[code], type) != 0)
            code++;
        if (code == ntypes) {
            Py_ssize_t tl = PyUnicode_GET_LENGTH(type);
            if (ntypes == 255 || !PyUnicode_IS_ASCII(type) || tl < 1 || tl > 255) goto defer;
            table[ntypes++] = type;
            tablelen += 1 + tl;
        }
        codes[i] = (unsigned char)code;
        for (int c = 0; c < 5; c++) {
            PyObject *v = PyTuple_GET_ITEM(value, c + 1);
            int overflow = 0;
            if (!PyLong_CheckExact(v)) goto defer;
            long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
            if (overflow) goto defer;
            if (x == -1 && PyErr_Occurred()) goto done;
            ints[(size_t)c * (size_t)n + (size_t)i] = x;
        }
        i++;
    }
    Py_ssize_t joined = keyslen + (n ? n - 1 : 0);
    Py_ssize_t total = 8 + 8 + 1 + tablelen + 1 + 8 + joined + n + 5 * (1 + 8 + 8 * n);
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL) goto done;
    char *o = PyBytes_AS_STRING(out);
    memcpy(o, "BKTREE1\0", 8);
    le64(o + 8, (unsigned long long)n);
    o += 16;
    *o++ = (char)ntypes;
    for (int t = 0; t < ntypes; t++) {
        Py_ssize_t tl = PyUnicode_GET_LENGTH(table[t]);
        *o++ = (char)tl;
        memcpy(o, PyUnicode_DATA(table[t]), (size_t)tl);
        o += tl;
    }
    *o++ = 0; /* paths joined by NUL */
    le64(o, (unsigned long long)joined);
    o += 8;
    pos = 0;
    i = 0;
    while (PyDict_Next(state, &pos, &key, &value)) {
        if (i++) *o++ = '\0';
        memcpy(o, PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key));
        o += PyBytes_GET_SIZE(key);
    }
    memcpy(o, codes, (size_t)n);
    o += n;
    for (int c = 0; c < 5; c++) {
        *o++ = 0; /* int64 column */
        le64(o, 8 * (unsigned long long)n);
        o += 8;
        const long long *col = ints + (size_t)c * (size_t)n;
        for (Py_ssize_t r = 0; r < n; r++, o += 8) le64(o, (unsigned long long)col[r]);
    }
    goto done;
defer:
    out = Py_NewRef(Py_None);
done:
    PyMem_Free(codes);
    PyMem_Free(ints);
    return out;
}

static PyMethodDef methods[] = {
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(name, type, size, mode, mtime_ns, uid, gid, uname, gname, linkname, devmajor, "
     "devminor) -> bytes | None: tarformat.encode_header's common case"},
    {"write_new", (PyCFunction)(void (*)(void))write_new, METH_FASTCALL,
     "write_new(path, data, mode, uid, gid, mtime_ns, chown, umask=-1) -> int: create a small "
     "file with its content and metadata outside the GIL (umask: the process's, when known, "
     "spares an fchmod where it leaves the mode whole); 0, or the errno of an open that "
     "created nothing (EEXIST, ENOENT, ENOTDIR), or EOVERFLOW for an mtime_ns beyond 64 bits"},
    {"decode", decode, METH_O,
     "decode(block) -> (type, name, linkname, mode, uid, gid, size, mtime, uname, gname, "
     "devmajor, devminor) | None: one header block's fields, checksum verified, for the "
     "common case"},
    {"entry_json", entry_json, METH_O,
     "entry_json(record) -> str | None: pack.Record.to_json's common case"},
    {"tree_encode", tree_encode, METH_O,
     "tree_encode(state) -> bytes | None: the tree cache's payload (inventory/tree_codec.py) "
     "for its common case"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_speedups",
    "Per-path encodings in C: tar headers and manifest entries (see the source).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
