/* presenced.sip._scan: the header block of a well-formed SIP message, split
 * in one pass over the bytes.
 *
 * Why in C: splitting ~12 header lines through str methods (decode, split,
 * partition, strip) costs ~40,000 instructions per message even compiled by
 * mypyc, a fifth of a request's total; a byte loop creates only the strings
 * the result holds.
 *
 * Only the common shape is handled here: CRLF line ends, no folded lines,
 * header names already known to message.py (its _LINE_NAMES table), a blank
 * line ending the block within `max_head` bytes. Anything else returns None
 * and message.py parses the message itself, with its full checks and error
 * messages, so both paths give the same result for every input (tested by
 * tests/sip/test_scan.py against the Python path).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* What str.strip() removes from ASCII text (Py_UNICODE_ISSPACE below 128). */
static int
is_strip_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* ASCII bytes -> str without a decoder; other bytes -> strict UTF-8, or NULL
 * with no exception set when they are not valid UTF-8 (caller falls back). */
static PyObject *
text(const unsigned char *p, Py_ssize_t n, int *fallback)
{
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) { /* eight bytes at a time: any high bit set? */
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w & 0x8080808080808080ULL)
            break;
    }
    for (; i < n; i++) {
        if (p[i] >= 0x80) {
            PyObject *s = PyUnicode_DecodeUTF8((const char *)p, n, NULL);
            if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
                *fallback = 1;
            }
            return s;
        }
    }
    PyObject *s = PyUnicode_New(n, 127);
    if (s != NULL)
        memcpy(PyUnicode_DATA(s), p, (size_t)n);
    return s;
}

/* A header value: str.strip() of the decoded text. */
static PyObject *
value_text(const unsigned char *p, Py_ssize_t n, int *fallback)
{
    while (n > 0 && is_strip_space(p[0])) {
        p++;
        n--;
    }
    while (n > 0 && is_strip_space(p[n - 1]))
        n--;
    PyObject *s = text(p, n, fallback);
    if (s == NULL || PyUnicode_IS_ASCII(s))
        return s;
    /* Non-ASCII: str.strip() also removes Unicode spaces (U+00A0, U+3000...). */
    PyObject *stripped = PyObject_CallMethod(s, "strip", NULL);
    Py_DECREF(s);
    return stripped;
}

/* Header names as received -> message.py's (name, key) pair, so that the
 * dozen names every message repeats cost a hash of their bytes instead of a
 * new str, its hash and a dict probe. Entries only ever point at pairs taken
 * from `names` (never changed once added), and are dropped when another
 * dict is passed. */
#define NAME_SLOTS 256
#define NAME_BYTES 32
typedef struct {
    Py_ssize_t len;
    unsigned char bytes[NAME_BYTES];
    PyObject *known; /* owned (name, key) tuple, or NULL */
} name_slot;
static name_slot name_cache[NAME_SLOTS];
static PyObject *name_cache_dict; /* identity only, never dereferenced */

static unsigned int
name_hash(const unsigned char *p, Py_ssize_t n)
{
    unsigned int h = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static void
name_cache_reset(PyObject *names)
{
    for (int i = 0; i < NAME_SLOTS; i++) {
        Py_CLEAR(name_cache[i].known);
        name_cache[i].len = 0;
    }
    name_cache_dict = names;
}

/* Borrowed (name, key) for the raw name, NULL with no error when unknown. */
static PyObject *
known_name(PyObject *names, const unsigned char *p, Py_ssize_t n)
{
    name_slot *slot = NULL;
    if (n <= NAME_BYTES) {
        slot = &name_cache[name_hash(p, n) & (NAME_SLOTS - 1)];
        if (slot->known != NULL && slot->len == n && memcmp(slot->bytes, p, (size_t)n) == 0)
            return slot->known;
    }
    PyObject *raw = PyUnicode_New(n, 127);
    if (raw == NULL)
        return NULL;
    memcpy(PyUnicode_DATA(raw), p, (size_t)n);
    PyObject *known = PyDict_GetItemWithError(names, raw); /* borrowed */
    Py_DECREF(raw);
    if (known == NULL)
        return NULL;
    if (!PyTuple_Check(known) || PyTuple_GET_SIZE(known) != 2) {
        PyErr_SetString(PyExc_TypeError, "names values must be (name, key) tuples");
        return NULL;
    }
    if (slot != NULL) {
        Py_INCREF(known);
        Py_XSETREF(slot->known, known);
        slot->len = n;
        memcpy(slot->bytes, p, (size_t)n);
    }
    return known;
}

/* scan_head(data, names, max_head) -> (start_line, index, body_start, count) | None
 *
 * names: header text before the colon, as received -> (name, lookup key).
 * index: {key: [values]} in message order; count: header lines. The ordered
 * (name, value) list is left to message.py, which builds it only when asked
 * (serialising a received message is rare). */
static PyObject *
scan_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "scan_head(data: bytes, names: dict, max_head: int)");
        return NULL;
    }
    if (!PyBytes_Check(args[0]))
        Py_RETURN_NONE; /* a bytearray or memoryview: the Python path takes any of them */
    PyObject *names = args[1];
    Py_ssize_t max_head = PyLong_AsSsize_t(args[2]);
    if (max_head == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t start = 0;
    while (start < n && (d[start] == '\r' || d[start] == '\n'))
        start++;
    Py_ssize_t limit = start + max_head + 4; /* the blank line must come by here */
    if (limit > n)
        limit = n;

    if (names != name_cache_dict)
        name_cache_reset(names);
    int fallback = 0;
    PyObject *first = NULL, *index = NULL, *result = NULL;
    Py_ssize_t count = 0;

    /* Start line. */
    const unsigned char *nl = memchr(d + start, '\n', (size_t)(limit - start));
    if (nl == NULL || nl == d + start || nl[-1] != '\r')
        Py_RETURN_NONE;
    Py_ssize_t eol = (nl - d) - 1; /* the CR */
    if (eol == start)
        Py_RETURN_NONE;
    first = text(d + start, eol - start, &fallback);
    if (first == NULL)
        goto done;
    index = _PyDict_NewPresized(16); /* no resize for the usual dozen names */
    if (index == NULL)
        goto done;

    Py_ssize_t pos = eol + 2;
    for (;;) {
        if (pos + 1 < limit && d[pos] == '\r' && d[pos + 1] == '\n') {
            /* Blank line: end of the header block. */
            if (pos - 2 - start > max_head) {
                fallback = 1;
                goto done;
            }
            result = Py_BuildValue("(OOnn)", first, index, pos + 2, count);
            goto done;
        }
        if (pos >= limit || d[pos] == ' ' || d[pos] == '\t' || d[pos] == '\r' || d[pos] == '\n') {
            fallback = 1; /* folded line, bare LF or CR, no blank line in reach */
            goto done;
        }
        nl = memchr(d + pos, '\n', (size_t)(limit - pos));
        if (nl == NULL || nl[-1] != '\r') {
            fallback = 1;
            goto done;
        }
        Py_ssize_t line_end = (nl - d) - 1;
        const unsigned char *colon = memchr(d + pos, ':', (size_t)(line_end - pos));
        if (colon == NULL) {
            fallback = 1;
            goto done;
        }
        Py_ssize_t name_len = (colon - d) - pos;
        Py_ssize_t i;
        for (i = 0; i < name_len; i++) {
            if (d[pos + i] >= 0x80) {
                fallback = 1;
                goto done;
            }
        }
        PyObject *known = known_name(names, d + pos, name_len); /* borrowed */
        if (known == NULL) {
            if (!PyErr_Occurred())
                fallback = 1; /* a name message.py has not checked yet */
            goto done;
        }
        PyObject *value = value_text(colon + 1, line_end - (colon - d) - 1, &fallback);
        if (value == NULL)
            goto done;
        count++;
        PyObject *key = PyTuple_GET_ITEM(known, 1);
        PyObject *vals = PyDict_GetItemWithError(index, key); /* borrowed */
        if (vals == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(value);
                goto done;
            }
            vals = PyList_New(1);
            if (vals == NULL) {
                Py_DECREF(value);
                goto done;
            }
            PyList_SET_ITEM(vals, 0, value); /* steals */
            int rc = PyDict_SetItem(index, key, vals);
            Py_DECREF(vals);
            if (rc < 0)
                goto done;
        } else {
            int rc = PyList_Append(vals, value);
            Py_DECREF(value);
            if (rc < 0)
                goto done;
        }
        pos = line_end + 2;
    }

done:
    Py_XDECREF(first);
    Py_XDECREF(index);
    if (result == NULL && !PyErr_Occurred() && fallback)
        Py_RETURN_NONE;
    return result;
}

static PyMethodDef methods[] = {
    {"scan_head", (PyCFunction)(void (*)(void))scan_head, METH_FASTCALL,
     "scan_head(data, names, max_head) -> (start_line, index, body_start, count) or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "presenced.sip._scan",
    "The header block of a well-formed SIP message, split in one pass (see _scan.c).",
    -1, methods,
};

PyMODINIT_FUNC
PyInit__scan(void)
{
    return PyModule_Create(&module);
}
