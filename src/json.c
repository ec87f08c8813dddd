/*
 * json.c — exact JSON: a strict parser into a flat node tree, and writers.
 *
 * Why not lua-cjson: as Debian ships it for Lua 5.4 it turns 64-bit integers
 * into doubles and re-encodes [] as {} (docs/events.md, Exact numbers and text).  Here numbers keep
 * their source text until someone asks for a value, arrays and objects keep
 * their kind, and strings are validated UTF-8, so an event passes through
 * the runtime unchanged.
 *
 * The parser copies the source once into the document and unescapes strings
 * in place (an escape never expands), so a parse costs one memcpy plus one
 * node per value and no allocation per string.
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void bp_doc_init(bp_doc *d)
{
    memset(d, 0, sizeof *d);
    bp_buf_init(&d->text);
}

void bp_doc_free(bp_doc *d)
{
    free(d->nodes);
    bp_buf_free(&d->text);
    memset(d, 0, sizeof *d);
}

/* ---- UTF-8 ---------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when it is invalid. */
static size_t utf8_seq(const unsigned char *s, size_t avail)
{
    unsigned c = s[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned min;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) { n = 2; min = 0x80; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { n = 3; min = 0x800; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; min = 0x10000; cp = c & 0x07; }
    else return 0;
    if (avail < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

int bp_utf8_check(const char *s, size_t len, size_t *bad_at)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        /* ASCII fast path: eight bytes at a time */
        while (i + 8 <= len) {
            uint64_t w;
            memcpy(&w, u + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= len) break;
        if (u[i] < 0x80) { i++; continue; }
        size_t n = utf8_seq(u + i, len - i);
        if (!n) { if (bad_at) *bad_at = i; return -1; }
        i += n;
    }
    return 0;
}

static size_t utf8_put(char *w, unsigned cp)
{
    if (cp < 0x80) { w[0] = (char)cp; return 1; }
    if (cp < 0x800) {
        w[0] = (char)(0xC0 | (cp >> 6));
        w[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        w[0] = (char)(0xE0 | (cp >> 12));
        w[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        w[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    w[0] = (char)(0xF0 | (cp >> 18));
    w[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    w[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    w[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- parser ----------------------------------------------------------------- */

typedef struct parser {
    bp_doc *d;
    char *s;          /* the document's own copy of the source */
    size_t len, pos;
    int depth, max_depth;
    bp_error *err;
} parser;

static int fail(parser *p, const char *what)
{
    if (p->pos >= p->len)
        bp_error_set(p->err, "invalid JSON: %s at byte %zu (the input ends too early)", what, p->pos);
    else
        bp_error_set(p->err, "invalid JSON: %s at byte %zu", what, p->pos);
    return -1;
}

uint32_t bp_doc_add_node(bp_doc *d, uint8_t type, size_t off, size_t len, size_t line)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        bp_jnode *nodes = bp_realloc(d->nodes, cap * sizeof *nodes);
        d->nodes = nodes;
        d->cap = cap;
    }
    bp_jnode *n = &d->nodes[d->n];
    n->type = type;
    n->off = (uint32_t)off;
    n->len = (uint32_t)len;
    n->next = (uint32_t)d->n + 1;
    n->line = (uint32_t)line;
    return (uint32_t)d->n++;
}


static inline void skip_ws(parser *p)
{
    /* compact JSON has none: one look decides */
    if (p->pos < p->len && (unsigned char)p->s[p->pos] > ' ') return;
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int hex4(const char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* Bytes that can be skipped inside a string without a second look:
 * printable ASCII other than '"' and '\\'. */
static const unsigned char plain_char[256] = {
    ['\x20'] = 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

#define ONES  0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Nonzero when some byte of w is zero.  A borrow can flag bytes after a real
 * zero, never a word without one, which is all the callers ask. */
static inline uint64_t has_zero_byte(uint64_t w) { return (w - ONES) & ~w & HIGHS; }

/* Length of the leading run of s that a JSON string can carry as is:
 * bytes other than '"', '\\' and controls (< 0x20); with stop_high, bytes
 * >= 0x80 end the run too (the parser validates them as UTF-8).  Eight
 * bytes per step: a word with none of those bytes is skipped whole. */
static inline size_t plain_run(const char *s, size_t len, int stop_high)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, u + i, 8);
        uint64_t special = ((w - ONES * 0x20) & ~w & HIGHS)          /* a byte < 0x20 */
                         | has_zero_byte(w ^ (ONES * '"'))
                         | has_zero_byte(w ^ (ONES * '\\'));
        if (stop_high) special |= w & HIGHS;
        if (special) {
#if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            /* the lowest flag is the first special byte (false flags only
             * follow a real one) */
            return i + (size_t)__builtin_ctzll(special) / 8;
#else
            break;
#endif
        }
    }
    while (i < len && (plain_char[u[i]] || (!stop_high && u[i] >= 0x80))) i++;
    return i;
}

/* The parser's node append: a store while there is room. */
static inline void add_node_fast(parser *p, uint8_t type, size_t off, size_t len)
{
    bp_doc *d = p->d;
    if (d->n == d->cap) { bp_doc_add_node(d, type, off, len, 0); return; }
    bp_jnode *n = &d->nodes[d->n];
    n->type = type;
    n->off = (uint32_t)off;
    n->len = (uint32_t)len;
    n->next = (uint32_t)d->n + 1;
    n->line = 0;
    d->n++;
}

/* p->pos is on the opening quote.  Unescapes in place. */
static int parse_string(parser *p)
{
    size_t start = ++p->pos;
    /* Fast path: most strings have no escapes, so nothing moves until the
     * first backslash; only the bytes are checked. */
    const unsigned char *u = (const unsigned char *)p->s;
    for (;;) {
        p->pos += plain_run(p->s + p->pos, p->len - p->pos, 1);
        if (p->pos < p->len && u[p->pos] >= 0x80) {
            size_t n = utf8_seq(u + p->pos, p->len - p->pos);
            if (!n) return fail(p, "invalid UTF-8 in string");
            p->pos += n;
            continue;
        }
        break;
    }
    if (p->pos < p->len && u[p->pos] == '"') {
        size_t len = p->pos - start;
        p->s[p->pos++] = '\0';   /* the closing quote, already read */
        add_node_fast(p, BP_JSTRING, start, len);
        return 0;
    }
    char *w = p->s + p->pos;
    for (;;) {
        if (p->pos >= p->len) return fail(p, "unterminated string");
        unsigned char c = (unsigned char)p->s[p->pos];
        if (c == '"') break;
        if (c < 0x20) return fail(p, "control character in string (escape it)");
        if (c == '\\') {
            if (p->pos + 1 >= p->len) return fail(p, "unterminated string");
            char e = p->s[p->pos + 1];
            const char *simple = strchr("\"\\/bfnrt", e);
            if (e && simple) {
                static const char out[] = "\"\\/\b\f\n\r\t";
                *w++ = out[simple - "\"\\/bfnrt"];
                p->pos += 2;
                continue;
            }
            if (e != 'u') { p->pos++; return fail(p, "invalid escape in string"); }
            unsigned cp, lo;
            if (p->pos + 6 > p->len || hex4(p->s + p->pos + 2, &cp) < 0)
                return fail(p, "invalid \\u escape");
            p->pos += 6;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return fail(p, "lone low surrogate in \\u escape");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (p->pos + 6 > p->len || p->s[p->pos] != '\\' || p->s[p->pos + 1] != 'u' ||
                    hex4(p->s + p->pos + 2, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF)
                    return fail(p, "high surrogate not followed by a low surrogate");
                p->pos += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            w += utf8_put(w, cp);
            continue;
        }
        if (c < 0x80) { *w++ = (char)c; p->pos++; continue; }
        size_t n = utf8_seq((unsigned char *)p->s + p->pos, p->len - p->pos);
        if (!n) return fail(p, "invalid UTF-8 in string");
        memmove(w, p->s + p->pos, n);
        w += n;
        p->pos += n;
    }
    size_t len = (size_t)(w - (p->s + start));
    *w = '\0'; /* w <= the closing quote, which has been read */
    p->pos++;
    add_node_fast(p, BP_JSTRING, start, len);
    return 0;
}

static int digits(parser *p)
{
    size_t start = p->pos;
    while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') p->pos++;
    return p->pos > start ? 0 : -1;
}

static int parse_number(parser *p)
{
    size_t start = p->pos;
    if (p->s[p->pos] == '-') p->pos++;
    if (p->pos < p->len && p->s[p->pos] == '0') p->pos++;
    else if (digits(p) < 0) return fail(p, "invalid number");
    if (p->pos < p->len && p->s[p->pos] == '.') {
        p->pos++;
        if (digits(p) < 0) return fail(p, "invalid number (digits expected after '.')");
    }
    if (p->pos < p->len && (p->s[p->pos] == 'e' || p->s[p->pos] == 'E')) {
        p->pos++;
        if (p->pos < p->len && (p->s[p->pos] == '+' || p->s[p->pos] == '-')) p->pos++;
        if (digits(p) < 0) return fail(p, "invalid number (digits expected in exponent)");
    }
    add_node_fast(p, BP_JNUMBER, start, p->pos - start);
    return 0;
}

static int parse_literal(parser *p, const char *word, uint8_t type)
{
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
        return fail(p, "unexpected character");
    p->pos += n;
    add_node_fast(p, type, p->pos - n, n);
    return 0;
}

static int parse_value(parser *p);

static int parse_container(parser *p, int is_object)
{
    if (++p->depth > p->max_depth) return fail(p, "nesting too deep");
    uint32_t self = (uint32_t)p->d->n;
    add_node_fast(p, is_object ? BP_JOBJECT : BP_JARRAY, p->pos, 0);
    char close = is_object ? '}' : ']';
    uint32_t count = 0;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
    } else {
        for (;;) {
            skip_ws(p);
            if (is_object) {
                if (p->pos >= p->len || p->s[p->pos] != '"') return fail(p, "expected a string key");
                if (parse_string(p) < 0) return -1;
                skip_ws(p);
                if (p->pos >= p->len || p->s[p->pos] != ':') return fail(p, "expected ':' after key");
                p->pos++;
            }
            if (parse_value(p) < 0) return -1;
            count++;
            skip_ws(p);
            if (p->pos < p->len && p->s[p->pos] == ',') { p->pos++; continue; }
            if (p->pos < p->len && p->s[p->pos] == close) { p->pos++; break; }
            return fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    p->d->nodes[self].len = count;
    p->d->nodes[self].next = (uint32_t)p->d->n;
    p->depth--;
    return 0;
}

static int parse_value(parser *p)
{
    skip_ws(p);
    if (p->pos >= p->len) return fail(p, "expected a value");
    switch (p->s[p->pos]) {
    case '{': return parse_container(p, 1);
    case '[': return parse_container(p, 0);
    case '"': return parse_string(p);
    case 't': return parse_literal(p, "true", BP_JTRUE);
    case 'f': return parse_literal(p, "false", BP_JFALSE);
    case 'n': return parse_literal(p, "null", BP_JNULL);
    default:
        if (p->s[p->pos] == '-' || (p->s[p->pos] >= '0' && p->s[p->pos] <= '9'))
            return parse_number(p);
        return fail(p, "unexpected character");
    }
}

int bp_json_parse(bp_doc *d, const char *src, size_t len, const bp_json_limits *limits,
                  bp_error *err)
{
    size_t max_bytes = limits && limits->max_bytes ? limits->max_bytes : BP_DEFAULT_MAX_EVENT_BYTES;
    int max_depth = limits && limits->max_depth ? limits->max_depth : BP_DEFAULT_MAX_DEPTH;
    bp_error_clear(err);
    d->n = 0;
    d->generation++;
    bp_buf_reset(&d->text);
    if (len > max_bytes) {
        bp_error_set(err, "event too large: %zu bytes (the limit is %zu)", len, max_bytes);
        return -1;
    }
    bp_buf_add(&d->text, src, len);
    parser p = { d, d->text.data, len, 0, 0, max_depth, err };
    if (parse_value(&p) < 0) { d->n = 0; bp_error_ensure(err, "invalid JSON"); return -1; }
    skip_ws(&p);
    if (p.pos != p.len) { d->n = 0; return fail(&p, "unexpected data after the JSON value"); }
    /* Numbers end at a delimiter that has been consumed: terminate them so
     * bp_jtext can hand them to strtod and lua_stringtonumber. */
    for (size_t i = 0; i < d->n; i++)
        if (d->nodes[i].type == BP_JNUMBER) d->text.data[d->nodes[i].off + d->nodes[i].len] = '\0';
    return 0;
}

/* ---- access ----------------------------------------------------------------- */

const char *bp_jtext(const bp_doc *d, uint32_t i) { return d->text.data + d->nodes[i].off; }

const char *bp_jscalar(const bp_doc *d, uint32_t i)
{
    if (i == BP_NONE || i >= d->n) return NULL;
    if (d->nodes[i].type != BP_JSTRING && d->nodes[i].type != BP_JNUMBER) return NULL;
    return bp_jtext(d, i);
}

uint32_t bp_jget_n(const bp_doc *d, uint32_t obj, const char *key, size_t klen)
{
    if (obj == BP_NONE || obj >= d->n || d->nodes[obj].type != BP_JOBJECT) return BP_NONE;
    uint32_t i = obj + 1;
    for (uint32_t k = 0; k < d->nodes[obj].len; k++) {
        const bp_jnode *kn = &d->nodes[i];
        if (kn->len == klen && memcmp(d->text.data + kn->off, key, klen) == 0) return i + 1;
        i = d->nodes[i + 1].next;
    }
    return BP_NONE;
}

uint32_t bp_jget(const bp_doc *d, uint32_t obj, const char *key) { return bp_jget_n(d, obj, key, strlen(key)); }

/* ---- duplicate keys ------------------------------------------------------------ */

typedef struct keyref { const char *s; uint32_t len, node; } keyref;

static int cmp_keyref(const void *a, const void *b)
{
    const keyref *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->node < y->node ? -1 : x->node > y->node;
}

/* Every object's keys sorted (n log n, whatever a hostile file holds): equal
 * neighbours are a key written twice.  The one reported is the earliest
 * second occurrence in the document, so the message does not depend on the
 * sort. */
int bp_doc_unique_keys(const bp_doc *d, const char *origin, bp_error *err)
{
    keyref *keys = NULL;
    size_t cap = 0;
    uint32_t first = BP_NONE, again = BP_NONE;
    for (uint32_t o = 0; o < d->n; o++) {
        if (d->nodes[o].type != BP_JOBJECT || d->nodes[o].len < 2) continue;
        size_t n = d->nodes[o].len;
        if (n > cap) {
            keyref *k = bp_realloc(keys, n * sizeof *k);
            keys = k;
            cap = n;
        }
        uint32_t i = o + 1;
        for (size_t k = 0; k < n; k++, i = d->nodes[i + 1].next)
            keys[k] = (keyref){ d->text.data + d->nodes[i].off, d->nodes[i].len, i };
        qsort(keys, n, sizeof *keys, cmp_keyref);
        for (size_t k = 1; k < n; k++)
            if (keys[k].len == keys[k - 1].len && !memcmp(keys[k].s, keys[k - 1].s, keys[k].len) &&
                (again == BP_NONE || keys[k].node < again)) {
                first = keys[k - 1].node;
                again = keys[k].node;
            }
    }
    free(keys);
    if (again == BP_NONE) return 0;
    const bp_jnode *a = &d->nodes[first], *b = &d->nodes[again];
    int shown = b->len > 80 ? 80 : (int)b->len;
    char at[32] = "";
    if (b->line) snprintf(at, sizeof at, ":%u", b->line);
    if (a->line && a->line != b->line)
        bp_error_set(err, "%s%s: key `%.*s` is already set at line %u (keys are unique: keep one)", origin, at, shown,
                     d->text.data + b->off, a->line);
    else   /* one-line JSON: lines say nothing */
        bp_error_set(err, "%s%s: key `%.*s` is set twice in the same map (keys are unique: keep one)", origin, at,
                     shown, d->text.data + b->off);
    return -1;
}

uint32_t bp_jget_path(const bp_doc *d, uint32_t from, const char *dotted)
{
    char part[256];
    const char *s = dotted;
    uint32_t cur = from;
    while (cur != BP_NONE && *s) {
        const char *dot = strchr(s, '.');
        size_t n = dot ? (size_t)(dot - s) : strlen(s);
        if (n >= sizeof part) return BP_NONE;
        memcpy(part, s, n);
        part[n] = '\0';
        cur = bp_jget(d, cur, part);
        s += n + (dot ? 1 : 0);
    }
    return cur;
}

/* ---- writers ---------------------------------------------------------------- */

/* The string writer behind the three below.  Runs that need no escaping
 * are copied whole; with `check`, bytes >= 0x80 are validated as UTF-8 on
 * the way (one pass instead of a check then a write), and a bad byte either
 * fails the write (the buffer is left as it was) or, with `replace`, is
 * written as U+FFFD. */
static int write_string(bp_buf *out, const char *s, size_t len, int check, int replace, size_t *bad_at)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t start = out->len;
    bp_buf_reserve(out, len + 2);
    out->data[out->len++] = '"';
    size_t i = 0;
    for (;;) {
        size_t run = plain_run(s + i, len - i, check);
        bp_buf_add(out, s + i, run);
        i += run;
        if (i >= len) break;
        unsigned char c = u[i];
        if (c >= 0x80) {                     /* only stops here when checking */
            size_t n = utf8_seq(u + i, len - i);
            if (n) {
                bp_buf_put(out, s + i, n);
            } else if (replace) {
                bp_buf_put(out, "\xEF\xBF\xBD", 3);
                n = 1;
            } else {
                out->len = start;
                out->data[start] = '\0';
                if (bad_at) *bad_at = i;
                return -1;
            }
            i += n;
            continue;
        }
        i++;
        switch (c) {
        case '"': bp_buf_put(out, "\\\"", 2); break;
        case '\\': bp_buf_put(out, "\\\\", 2); break;
        case '\n': bp_buf_put(out, "\\n", 2); break;
        case '\r': bp_buf_put(out, "\\r", 2); break;
        case '\t': bp_buf_put(out, "\\t", 2); break;
        case '\b': bp_buf_put(out, "\\b", 2); break;
        case '\f': bp_buf_put(out, "\\f", 2); break;
        default: {
            char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };
            bp_buf_put(out, esc, 6);
        }
        }
    }
    bp_buf_putc(out, '"');
    return 0;
}

void bp_json_write_string(bp_buf *out, const char *s, size_t len) { write_string(out, s, len, 0, 0, NULL); }

int bp_json_write_utf8(bp_buf *out, const char *s, size_t len, size_t *bad_at)
{
    return write_string(out, s, len, 1, 0, bad_at);
}

void bp_json_write_text(bp_buf *out, const char *s, size_t len) { write_string(out, s, len, 1, 1, NULL); }

void bp_json_write_int(bp_buf *out, long long v)
{
    char tmp[24];
    int n = 0;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do { tmp[n++] = (char)('0' + u % 10); u /= 10; } while (u);
    if (v < 0) tmp[n++] = '-';
    bp_buf_reserve(out, (size_t)n);
    while (n) out->data[out->len++] = tmp[--n];
    out->data[out->len] = '\0';
}

int bp_json_write_double(bp_buf *out, double v)
{
    if (isnan(v) || isinf(v)) return -1;
    char tmp[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) break;
    }
    bp_buf_adds(out, tmp);
    if (!strpbrk(tmp, ".eE")) bp_buf_add(out, ".0", 2);
    return 0;
}

void bp_json_write_node(bp_buf *out, const bp_doc *d, uint32_t i)
{
    const bp_jnode *n = &d->nodes[i];
    switch (n->type) {
    case BP_JNULL: bp_buf_add(out, "null", 4); break;
    case BP_JTRUE: bp_buf_add(out, "true", 4); break;
    case BP_JFALSE: bp_buf_add(out, "false", 5); break;
    case BP_JNUMBER: bp_buf_add(out, d->text.data + n->off, n->len); break;
    case BP_JSTRING: bp_json_write_string(out, d->text.data + n->off, n->len); break;
    case BP_JARRAY:
    case BP_JOBJECT: {
        int obj = n->type == BP_JOBJECT;
        bp_buf_addc(out, obj ? '{' : '[');
        uint32_t c = i + 1;
        for (uint32_t k = 0; k < n->len; k++) {
            if (k) bp_buf_addc(out, ',');
            if (obj) {
                bp_json_write_node(out, d, c);
                bp_buf_addc(out, ':');
                c++;
            }
            bp_json_write_node(out, d, c);
            c = d->nodes[c].next;
        }
        bp_buf_addc(out, obj ? '}' : ']');
        break;
    }
    }
}
