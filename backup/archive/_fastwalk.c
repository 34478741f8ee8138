/*
 * _fastwalk: the scan's directory walk, outside the GIL and on several threads.
 *
 * Same result as backup/archive/scan.py's Python walk (which stays as the fallback and is
 * tested against this): entries depth-first, each directory's subtree right after it,
 * children sorted by their name's bytes; excluded names are not listed or descended into;
 * a path that vanished between listing and lstat is left out; sockets are left out; what
 * cannot be read is reported, in walk order, never dropped.
 *
 * Why C: a no-change incremental is this walk plus a comparison. In Python the walk's
 * per-path work holds the GIL, so listing and lstat-ing 70k paths took 0.8 s on one core;
 * here the system calls of several directories overlap on every core, and Python objects are
 * built only once at the end, in walk order.
 *
 * Exclude patterns reach this module only when they use `*`, `?` and literal bytes (the
 * Python side falls back for `[...]` classes), so matching is exactly fnmatch's: `*` matches
 * any bytes, '/' included, and the whole string must match.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { K_FILE, K_DIR, K_SYMLINK, K_FIFO, K_CHR, K_BLK, K_COUNT };

typedef struct node node;

typedef struct {
    char *name;
    size_t namelen;
    int err; /* 0, or the errno of a failed lstat/readlink: reported as unreadable */
    int kind;
    mode_t mode;
    off_t size;
    long long mtime_s, mtime_ns, ctime_s, ctime_ns;
    unsigned long long ino, dev, nlink;
    unsigned long uid, gid;
    char *link;
    size_t linklen;
    node *dir; /* the subtree to descend into, for a directory */
} child;

struct node {
    char *abspath; /* what to open; children's absolute paths are abspath/name */
    size_t abslen;
    char *rel;     /* relative path inside the archive, "" for the top */
    size_t rellen;
    int err;       /* errno when the directory could not be listed */
    int deferred;  /* not listed yet: the listing's budget was spent (see run_listing) */
    child *children;
    size_t n;
    node *next;    /* work stack link */
};

typedef struct {
    const char **pats;
    size_t *lens;
    size_t n;
} patset;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    node *stack;
    size_t pending; /* directories pushed and not yet listed */
    size_t listed;  /* entries listed so far by this run */
    size_t budget;  /* once `listed` reaches it, directories are deferred, not listed; 0: none */
    int oom;
    const patset *names, *paths;
} walk_state;

/* fnmatch with `*` and `?` only, over bytes; the whole string must match */
static int glob_match(const char *p, size_t pl, const char *s, size_t sl)
{
    size_t pi = 0, si = 0, star = (size_t)-1, mark = 0;
    while (si < sl) {
        if (pi < pl && (p[pi] == '?' || (p[pi] != '*' && p[pi] == s[si]))) {
            pi++;
            si++;
        } else if (pi < pl && p[pi] == '*') {
            star = pi++;
            mark = si;
        } else if (star != (size_t)-1) {
            pi = star + 1;
            si = ++mark;
        } else {
            return 0;
        }
    }
    while (pi < pl && p[pi] == '*')
        pi++;
    return pi == pl;
}

static int any_match(const patset *ps, const char *s, size_t sl)
{
    for (size_t i = 0; i < ps->n; i++)
        if (glob_match(ps->pats[i], ps->lens[i], s, sl))
            return 1;
    return 0;
}

static int kind_of(mode_t m)
{
    if (S_ISREG(m)) return K_FILE;
    if (S_ISDIR(m)) return K_DIR;
    if (S_ISLNK(m)) return K_SYMLINK;
    if (S_ISFIFO(m)) return K_FIFO;
    if (S_ISCHR(m)) return K_CHR;
    if (S_ISBLK(m)) return K_BLK;
    return -1; /* sockets cannot be archived meaningfully */
}

static int cmp_child(const void *a, const void *b)
{
    const child *x = a, *y = b;
    size_t n = x->namelen < y->namelen ? x->namelen : y->namelen;
    int c = memcmp(x->name, y->name, n);
    if (c) return c;
    return (x->namelen > y->namelen) - (x->namelen < y->namelen);
}

static char *join(const char *a, size_t al, const char *b, size_t bl, size_t *outlen)
{
    /* a "/" b, without doubling a trailing slash; "" + b is b */
    int sep = al > 0 && a[al - 1] != '/';
    size_t n = al + (size_t)sep + bl;
    char *r = malloc(n + 1);
    if (!r) return NULL;
    memcpy(r, a, al);
    if (sep) r[al] = '/';
    memcpy(r + al + sep, b, bl);
    r[n] = 0;
    *outlen = n;
    return r;
}

/* List one directory: fills nd->children (sorted) and returns the subdirectories to walk. */
static node *list_dir(walk_state *ws, node *nd)
{
    int fd = open(nd->abspath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        nd->err = errno;
        return NULL;
    }
    DIR *d = fdopendir(fd);
    if (!d) {
        nd->err = errno;
        close(fd);
        return NULL;
    }
    size_t cap = 8, n = 0;
    child *cs = malloc(cap * sizeof *cs);
    char *relbuf = NULL;
    size_t relcap = 0;
    if (!cs) goto oom;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno) {
                /* a directory that fails part way is unreadable as a whole, as in Python */
                nd->err = errno;
                goto fail;
            }
            break;
        }
        const char *nm = de->d_name;
        if (nm[0] == '.' && (nm[1] == 0 || (nm[1] == '.' && nm[2] == 0)))
            continue;
        size_t nl = strlen(nm);
        if (ws->names->n && any_match(ws->names, nm, nl))
            continue;
        if (ws->paths->n) {
            size_t need = nd->rellen + 1 + nl;
            if (need > relcap) {
                char *nb = realloc(relbuf, need);
                if (!nb) goto oom;
                relbuf = nb;
                relcap = need;
            }
            size_t rl = 0;
            if (nd->rellen) {
                memcpy(relbuf, nd->rel, nd->rellen);
                relbuf[nd->rellen] = '/';
                rl = nd->rellen + 1;
            }
            memcpy(relbuf + rl, nm, nl);
            if (any_match(ws->paths, relbuf, rl + nl))
                continue;
        }
        struct stat st;
        int serr = 0;
        if (fstatat(fd, nm, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT)
                continue; /* vanished between listing and stat: not there to back up */
            serr = errno;
        }
        int k = serr ? 0 : kind_of(st.st_mode);
        if (k < 0)
            continue;
        if (n == cap) {
            child *nc = realloc(cs, 2 * cap * sizeof *cs);
            if (!nc) goto oom;
            cs = nc;
            cap *= 2;
        }
        child *c = &cs[n];
        memset(c, 0, sizeof *c);
        c->name = malloc(nl + 1);
        if (!c->name) goto oom;
        memcpy(c->name, nm, nl + 1);
        c->namelen = nl;
        n++;
        c->err = serr;
        if (serr)
            continue;
        c->kind = k;
        c->mode = st.st_mode;
        c->size = k == K_FILE ? st.st_size : 0;
        c->mtime_s = st.st_mtim.tv_sec;
        c->mtime_ns = st.st_mtim.tv_nsec;
        c->ctime_s = st.st_ctim.tv_sec;
        c->ctime_ns = st.st_ctim.tv_nsec;
        c->ino = st.st_ino;
        c->dev = st.st_dev;
        c->nlink = st.st_nlink;
        c->uid = st.st_uid;
        c->gid = st.st_gid;
        if (k == K_SYMLINK) {
            size_t lcap = st.st_size > 0 ? (size_t)st.st_size + 1 : 256;
            for (;;) {
                char *lb = malloc(lcap);
                if (!lb) goto oom;
                ssize_t r = readlinkat(fd, nm, lb, lcap);
                if (r < 0) {
                    free(lb);
                    if (errno == ENOENT) {
                        /* replaced between lstat and readlink: left out, as in Python */
                        free(c->name);
                        n--;
                    } else {
                        c->err = errno;
                    }
                    break;
                }
                if ((size_t)r < lcap) {
                    c->link = lb;
                    c->linklen = (size_t)r;
                    break;
                }
                free(lb);
                lcap *= 2;
            }
        }
    }
    closedir(d);
    free(relbuf);
    qsort(cs, n, sizeof *cs, cmp_child);
    if (n < cap) {
        /* most directories hold a few entries: without this, the spare capacity of 44k
         * directories' arrays cost 100 MB of RSS on the benchmark's tree */
        if (n == 0) {
            free(cs);
            cs = NULL;
        } else {
            child *shrunk = realloc(cs, n * sizeof *cs);
            if (shrunk) cs = shrunk;
        }
    }
    nd->children = cs;
    nd->n = n;
    node *subdirs = NULL;
    /* pushed in reverse, so the stack hands out the first child first (locality) */
    for (size_t i = n; i-- > 0;) {
        child *c = &cs[i];
        if (c->err || c->kind != K_DIR)
            continue;
        node *sd = calloc(1, sizeof *sd);
        if (!sd) {
            ws->oom = 1;
            break;
        }
        sd->abspath = join(nd->abspath, nd->abslen, c->name, c->namelen, &sd->abslen);
        sd->rel = join(nd->rel, nd->rellen, c->name, c->namelen, &sd->rellen);
        if (!sd->abspath || !sd->rel) {
            free(sd->abspath);
            free(sd->rel);
            free(sd);
            ws->oom = 1;
            break;
        }
        c->dir = sd;
        sd->next = subdirs;
        subdirs = sd;
    }
    return subdirs;

oom:
    ws->oom = 1;
fail:
    closedir(d);
    free(relbuf);
    if (cs) {
        for (size_t i = 0; i < n; i++) {
            free(cs[i].name);
            free(cs[i].link);
        }
        free(cs);
    }
    return NULL;
}

static void *worker(void *arg)
{
    walk_state *ws = arg;
    pthread_mutex_lock(&ws->mu);
    for (;;) {
        while (!ws->stack && ws->pending > 0)
            pthread_cond_wait(&ws->cv, &ws->mu);
        if (ws->pending == 0)
            break;
        node *nd = ws->stack;
        ws->stack = nd->next;
        if (ws->budget && ws->listed >= ws->budget) {
            /* listed ahead enough: this directory is listed when the walk reaches it */
            nd->deferred = 1;
            ws->pending--;
            if (ws->pending == 0)
                pthread_cond_broadcast(&ws->cv);
            continue;
        }
        pthread_mutex_unlock(&ws->mu);
        node *subdirs = ws->oom ? NULL : list_dir(ws, nd);
        pthread_mutex_lock(&ws->mu);
        ws->listed += nd->n;
        size_t pushed = 0;
        /* keep subdirs' order: the first child ends on top of the stack */
        node *rev = NULL;
        while (subdirs) {
            node *nx = subdirs->next;
            subdirs->next = rev;
            rev = subdirs;
            subdirs = nx;
        }
        while (rev) {
            node *nx = rev->next;
            rev->next = ws->stack;
            ws->stack = rev;
            rev = nx;
            pushed++;
        }
        ws->pending += pushed;
        ws->pending--;
        if (ws->pending == 0 || pushed > 1)
            pthread_cond_broadcast(&ws->cv);
        else if (pushed == 1)
            pthread_cond_signal(&ws->cv);
    }
    pthread_mutex_unlock(&ws->mu);
    return NULL;
}

static void free_tree(node *nd)
{
    if (!nd) return;
    for (size_t i = 0; i < nd->n; i++) {
        free(nd->children[i].name);
        free(nd->children[i].link);
        free_tree(nd->children[i].dir);
    }
    free(nd->children);
    free(nd->abspath);
    free(nd->rel);
    free(nd);
}

/* Free a directory's listing once its subtree is emitted; its subdirectories' listings
 * were released before it (depth first), so only their node structs are left. */
static void release_children(node *nd)
{
    for (size_t i = 0; i < nd->n; i++) {
        child *c = &nd->children[i];
        free(c->name);
        free(c->link);
        if (c->dir) {
            free_tree(c->dir);
            c->dir = NULL;
        }
    }
    free(nd->children);
    nd->children = NULL;
    nd->n = 0;
}

static PyObject *ns_time(long long s, long long ns)
{
    /* seconds * 10**9 + ns, exactly, also outside the 64-bit range of nanoseconds */
    if (s > -9000000000LL && s < 9000000000LL)
        return PyLong_FromLongLong(s * 1000000000LL + ns);
    PyObject *a = PyLong_FromLongLong(s), *b = PyLong_FromLongLong(1000000000LL);
    PyObject *c = PyLong_FromLongLong(ns), *r = NULL;
    if (a && b && c) {
        PyObject *m = PyNumber_Multiply(a, b);
        if (m) {
            r = PyNumber_Add(m, c);
            Py_DECREF(m);
        }
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(c);
    return r;
}

static int run_listing(node *start, const patset *names, const patset *paths, int threads,
                       size_t budget);

typedef struct {
    PyObject *factory; /* Entry */
    PyObject *kinds[K_COUNT];
    PyObject *entries; /* list */
    PyObject *errors;  /* list of (rel, errno, is_dir) */
    const patset *names, *paths; /* for deferred directories, listed as they are reached */
    int threads;
    size_t budget;
} emit_ctx;

/* Where an emit stopped: an explicit stack of (node, next child index), since trees can be
 * deeper than the C stack likes, kept between calls so the entries can be built a batch at
 * a time (a backup holds a batch of Python objects, not one per path of the tree). */
typedef struct {
    node **nodes;
    size_t *idx;
    size_t cap, depth;
    int started;
} emit_pos;

static int emit_error(emit_ctx *ec, const char *rel, size_t rellen, int err, int is_dir)
{
    PyObject *t = Py_BuildValue("(y#iO)", rel, (Py_ssize_t)rellen, err, is_dir ? Py_True : Py_False);
    if (!t) return -1;
    int r = PyList_Append(ec->errors, t);
    Py_DECREF(t);
    return r;
}

static void free_pos(emit_pos *ps)
{
    free(ps->nodes);
    free(ps->idx);
    ps->nodes = NULL;
    ps->idx = NULL;
    ps->depth = 0;
}

/* Depth first over the listed tree, building Python objects in walk order, until `limit`
 * entries are built (0: no limit) or the tree is done (then ps->depth is 0). */
static int emit(emit_ctx *ec, node *top, emit_pos *ps, size_t limit)
{
    size_t built = 0;
    if (!ps->started) {
        ps->started = 1;
        ps->cap = 64;
        ps->nodes = malloc(ps->cap * sizeof *ps->nodes);
        ps->idx = malloc(ps->cap * sizeof *ps->idx);
        if (!ps->nodes || !ps->idx) {
            free_pos(ps);
            PyErr_NoMemory();
            return -1;
        }
        if (top->err)
            return emit_error(ec, top->rel, top->rellen, top->err, 1);
        ps->nodes[0] = top;
        ps->idx[0] = 0;
        ps->depth = 1;
    }
    while (ps->depth && (!limit || built < limit)) {
        node *nd = ps->nodes[ps->depth - 1];
        size_t i = ps->idx[ps->depth - 1]++;
        if (i >= nd->n) {
            /* done with this directory: its listing goes now, not at the end (memory) */
            release_children(nd);
            ps->depth--;
            continue;
        }
        child *c = &nd->children[i];
        size_t rl, al;
        char *rel = join(nd->rel, nd->rellen, c->name, c->namelen, &rl);
        if (!rel) {
            PyErr_NoMemory();
            return -1;
        }
        if (c->err) {
            int e = emit_error(ec, rel, rl, c->err, 0);
            free(rel);
            if (e) return -1;
            continue;
        }
        char *abs = join(nd->abspath, nd->abslen, c->name, c->namelen, &al);
        if (!abs) {
            free(rel);
            PyErr_NoMemory();
            return -1;
        }
        PyObject *args[13] = {0};
        args[0] = PyBytes_FromStringAndSize(rel, (Py_ssize_t)rl);
        args[1] = PyBytes_FromStringAndSize(abs, (Py_ssize_t)al);
        free(rel);
        free(abs);
        args[2] = ec->kinds[c->kind];
        Py_INCREF(args[2]);
        args[3] = PyLong_FromLongLong((long long)c->size);
        args[4] = PyLong_FromUnsignedLong((unsigned long)c->mode);
        args[5] = ns_time(c->mtime_s, c->mtime_ns);
        args[6] = ns_time(c->ctime_s, c->ctime_ns);
        args[7] = PyLong_FromUnsignedLongLong(c->ino);
        args[8] = PyLong_FromUnsignedLongLong(c->dev);
        args[9] = PyLong_FromUnsignedLongLong(c->nlink);
        args[10] = PyLong_FromUnsignedLong(c->uid);
        args[11] = PyLong_FromUnsignedLong(c->gid);
        args[12] = PyBytes_FromStringAndSize(c->link ? c->link : "", (Py_ssize_t)c->linklen);
        PyObject *e = NULL;
        int ok = 1;
        for (int j = 0; j < 13; j++)
            if (!args[j]) ok = 0;
        if (ok)
            e = PyObject_Vectorcall(ec->factory, args, 13, NULL);
        for (int j = 0; j < 13; j++)
            Py_XDECREF(args[j]);
        if (!e) return -1;
        int ar = PyList_Append(ec->entries, e);
        Py_DECREF(e);
        if (ar) return -1;
        built++;
        if (c->dir) {
            node *sd = c->dir;
            if (sd->deferred && run_listing(sd, ec->names, ec->paths, ec->threads, ec->budget) < 0)
                return -1;
            if (sd->err) {
                if (emit_error(ec, sd->rel, sd->rellen, sd->err, 1)) return -1;
                continue;
            }
            if (ps->depth == ps->cap) {
                size_t cap = ps->cap * 2;
                node **nn = realloc(ps->nodes, cap * sizeof *nn);
                if (nn) ps->nodes = nn;
                size_t *ni = realloc(ps->idx, cap * sizeof *ni);
                if (ni) ps->idx = ni;
                if (!nn || !ni) {
                    PyErr_NoMemory();
                    return -1;
                }
                ps->cap = cap;
            }
            ps->nodes[ps->depth] = sd;
            ps->idx[ps->depth] = 0;
            ps->depth++;
        }
    }
    return 0;
}

static int load_patterns(PyObject *seq, patset *ps)
{
    PyObject *fast = PySequence_Fast(seq, "patterns must be a sequence of bytes");
    if (!fast) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    ps->n = 0;
    ps->pats = calloc((size_t)n + 1, sizeof *ps->pats);
    ps->lens = calloc((size_t)n + 1, sizeof *ps->lens);
    if (!ps->pats || !ps->lens) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(fast, i);
        char *buf;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(o, &buf, &len) < 0) {
            Py_DECREF(fast);
            return -1;
        }
        char *copy = malloc((size_t)len + 1);
        if (!copy) {
            Py_DECREF(fast);
            PyErr_NoMemory();
            return -1;
        }
        memcpy(copy, buf, (size_t)len);
        ps->pats[ps->n] = copy;
        ps->lens[ps->n] = (size_t)len;
        ps->n++;
    }
    Py_DECREF(fast);
    return 0;
}

static void free_patterns(patset *ps)
{
    if (ps->pats)
        for (size_t i = 0; i < ps->n; i++)
            free((void *)ps->pats[i]);
    free(ps->pats);
    free(ps->lens);
}

PyDoc_STRVAR(walk_doc,
"walk(top, top_rel, name_patterns, path_patterns, factory, kinds, threads)\n"
"--\n\n"
"Walk the directory `top` (bytes) whose path inside the archive is `top_rel`.\n\n"
"Returns (entries, errors): entries built as factory(path, abspath, kind, size, mode,\n"
"mtime_ns, ctime_ns, ino, dev, nlink, uid, gid, link) in walk order, and errors as\n"
"(path, errno, is_directory) for what could not be read. `kinds` names the six kinds\n"
"(file, dir, symlink, fifo, chr, blk). The GIL is released while walking.");

/* List `start` and what is under it on `threads` threads, the GIL released, until about
 * `budget` entries are listed (0: all); the directories left are marked deferred, and listed
 * by a later call when the walk reaches them. Called with the GIL held; returns 0, or -1
 * with an exception set. */
static int run_listing(node *start, const patset *names, const patset *paths, int threads,
                       size_t budget)
{
    walk_state ws;
    memset(&ws, 0, sizeof ws);
    ws.names = names;
    ws.paths = paths;
    ws.budget = budget;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    pthread_mutex_init(&ws.mu, NULL);
    pthread_cond_init(&ws.cv, NULL);
    start->deferred = 0;
    start->next = NULL; /* a deferred node's link still names the stack it was popped from */
    ws.stack = start;
    ws.pending = 1;
    Py_BEGIN_ALLOW_THREADS
    pthread_t tids[64];
    int started = 0;
    /* the helpers inherit a mask blocking SIGINT and SIGTERM, so the kernel hands those to
     * the calling thread, where Python's handler is (backup/threads.py says why) */
    sigset_t quiet, was;
    sigemptyset(&quiet);
    sigaddset(&quiet, SIGINT);
    sigaddset(&quiet, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &quiet, &was);
    for (int i = 1; i < threads; i++) {
        if (pthread_create(&tids[started], NULL, worker, &ws) == 0)
            started++;
    }
    pthread_sigmask(SIG_SETMASK, &was, NULL);
    worker(&ws); /* this thread walks too */
    for (int i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    Py_END_ALLOW_THREADS
    pthread_mutex_destroy(&ws.mu);
    pthread_cond_destroy(&ws.cv);
    if (ws.oom) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* The root of the tree under `top`, listed by run_listing, or NULL with an exception set. */
static node *list_tree(Py_buffer *top, Py_buffer *top_rel, const patset *names,
                       const patset *paths, int threads, size_t budget)
{
    node *root = calloc(1, sizeof *root);
    if (!root) {
        PyErr_NoMemory();
        return NULL;
    }
    root->abspath = malloc((size_t)top->len + 1);
    root->rel = malloc((size_t)top_rel->len + 1);
    if (!root->abspath || !root->rel) {
        PyErr_NoMemory();
        goto fail;
    }
    memcpy(root->abspath, top->buf, (size_t)top->len);
    root->abspath[top->len] = 0;
    root->abslen = (size_t)top->len;
    memcpy(root->rel, top_rel->buf, (size_t)top_rel->len);
    root->rel[top_rel->len] = 0;
    root->rellen = (size_t)top_rel->len;
    if (run_listing(root, names, paths, threads, budget) == 0)
        return root;
fail:
    free_tree(root);
    return NULL;
}

/* A listed tree whose entries are built on demand, a batch at a time (Walker.take). */
typedef struct {
    PyObject_HEAD
    node *root; /* NULL once every entry was taken */
    emit_pos pos;
    PyObject *factory;
    PyObject *kinds[K_COUNT];
    patset names, paths; /* the excludes, kept for the directories listed later */
    int threads;
    size_t budget;
} Walker;

static void walker_release(Walker *w)
{
    free_tree(w->root);
    w->root = NULL;
    free_pos(&w->pos);
    free_patterns(&w->names);
    free_patterns(&w->paths);
    memset(&w->names, 0, sizeof w->names);
    memset(&w->paths, 0, sizeof w->paths);
}

static void walker_dealloc(Walker *w)
{
    walker_release(w);
    Py_XDECREF(w->factory);
    for (int i = 0; i < K_COUNT; i++)
        Py_XDECREF(w->kinds[i]);
    Py_TYPE(w)->tp_free((PyObject *)w);
}

static PyObject *walker_take(Walker *w, PyObject *arg)
{
    Py_ssize_t limit = PyLong_AsSsize_t(arg);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    if (limit < 0) {
        PyErr_SetString(PyExc_ValueError, "take(n): n must be 0 (all) or more");
        return NULL;
    }
    emit_ctx ec;
    memset(&ec, 0, sizeof ec);
    ec.factory = w->factory;
    ec.names = &w->names;
    ec.paths = &w->paths;
    ec.threads = w->threads;
    ec.budget = w->budget;
    for (int i = 0; i < K_COUNT; i++)
        ec.kinds[i] = w->kinds[i];
    ec.entries = PyList_New(0);
    ec.errors = PyList_New(0);
    PyObject *result = NULL;
    if (!ec.entries || !ec.errors)
        goto done;
    if (w->root) {
        /* new objects that hold no cycles: collections triggered by them would be waste */
        int gc_was = PyGC_Disable();
        int er = emit(&ec, w->root, &w->pos, (size_t)limit);
        if (gc_was)
            PyGC_Enable();
        if (er < 0) {
            walker_release(w); /* a walk that failed is over */
            goto done;
        }
        if (w->pos.depth == 0)
            walker_release(w);
    }
    result = PyTuple_Pack(2, ec.entries, ec.errors);
done:
    Py_XDECREF(ec.entries);
    Py_XDECREF(ec.errors);
    return result;
}

static PyMethodDef walker_methods[] = {
    {"take", (PyCFunction)walker_take, METH_O,
     "take(n) -> (entries, errors): the next n entries (0: all that are left) in walk order, "
     "and the errors met on the way; ([], []) once the walk is done"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "backup.archive._fastwalk.Walker",
    .tp_basicsize = sizeof(Walker),
    .tp_dealloc = (destructor)walker_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A listed tree; its entries are built by take(n).",
    .tp_methods = walker_methods,
};

static PyObject *fastwalk_listing(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer top, top_rel;
    PyObject *name_pats, *path_pats, *factory, *kinds;
    int threads;
    Py_ssize_t budget = 0;
    if (!PyArg_ParseTuple(args, "y*y*OOOOi|n", &top, &top_rel, &name_pats, &path_pats, &factory,
                          &kinds, &threads, &budget))
        return NULL;
    Walker *w = NULL;
    if (!PyTuple_Check(kinds) || PyTuple_GET_SIZE(kinds) != K_COUNT) {
        PyErr_SetString(PyExc_TypeError, "kinds must be a tuple of six names");
        goto done;
    }
    if (budget < 0) {
        PyErr_SetString(PyExc_ValueError, "budget must be 0 (list all) or more");
        goto done;
    }
    w = PyObject_New(Walker, &WalkerType);
    if (!w) goto done;
    w->root = NULL;
    memset(&w->pos, 0, sizeof w->pos);
    memset(&w->names, 0, sizeof w->names);
    memset(&w->paths, 0, sizeof w->paths);
    w->factory = Py_NewRef(factory);
    for (int i = 0; i < K_COUNT; i++)
        w->kinds[i] = Py_NewRef(PyTuple_GET_ITEM(kinds, i));
    w->threads = threads;
    w->budget = (size_t)budget;
    if (load_patterns(name_pats, &w->names) < 0 || load_patterns(path_pats, &w->paths) < 0 ||
        !(w->root = list_tree(&top, &top_rel, &w->names, &w->paths, threads, w->budget))) {
        Py_CLEAR(w);
        goto done;
    }
done:
    PyBuffer_Release(&top);
    PyBuffer_Release(&top_rel);
    return (PyObject *)w;
}

static PyObject *fastwalk_walk(PyObject *self, PyObject *args)
{
    PyObject *w = fastwalk_listing(self, args);
    if (!w) return NULL;
    PyObject *zero = PyLong_FromLong(0);
    PyObject *r = zero ? walker_take((Walker *)w, zero) : NULL;
    Py_XDECREF(zero);
    Py_DECREF(w);
    return r;
}

PyDoc_STRVAR(listing_doc,
"listing(top, top_rel, name_patterns, path_patterns, factory, kinds, threads, budget=0)\n"
"--\n\n"
"List the directory `top` as walk() does (the GIL released), building no entries yet:\n"
"about `budget` entries ahead (0: the whole tree); a directory beyond is listed when\n"
"take() reaches it, so a walk holds a bounded listing, not the tree's.\n\n"
"Returns a Walker: its take(n) builds the next n entries (0: all) and returns\n"
"(entries, errors) as walk() does for that part of the walk.");

static PyMethodDef methods[] = {
    {"walk", fastwalk_walk, METH_VARARGS, walk_doc},
    {"listing", fastwalk_listing, METH_VARARGS, listing_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastwalk",
    "The scan's directory walk in C, outside the GIL (see backup/archive/scan.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastwalk(void)
{
    if (PyType_Ready(&WalkerType) < 0)
        return NULL;
    return PyModule_Create(&module);
}
