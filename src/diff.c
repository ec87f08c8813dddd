/*
 * diff.c — unified diffs of text files, as the console editor's blueprint
 * revisions record them (CONTEXT lines around each change).  The lines are
 * matched by a longest-common-subsequence table while it stays small
 * (MAX_CELLS); beyond that the whole file shows as removed and added,
 * which is still a correct diff.
 */
#include "service.h"

#include <stdlib.h>
#include <string.h>

#define CONTEXT 3               /* unchanged lines around a change in a unified diff */
#define MAX_CELLS (1u << 21)    /* the line-matching table's size before a diff gives up matching */

typedef struct lines {
    const char **at;
    size_t *len;
    size_t n;
    int open_end;               /* the last line has no newline */
} lines;

static void split_lines(const bp_buf *t, lines *l)
{
    const char *p = t && t->data ? t->data : "", *end = p + (t ? t->len : 0);
    memset(l, 0, sizeof *l);
    size_t cap = 1;
    for (const char *q = p; q < end; q++) cap += *q == '\n';
    l->at = bp_calloc(cap, sizeof *l->at);
    l->len = bp_calloc(cap, sizeof *l->len);
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        l->at[l->n] = p;
        l->len[l->n++] = nl ? (size_t)(nl - p) : (size_t)(end - p);
        l->open_end = !nl;
        p = nl ? nl + 1 : end;
    }
}

static void lines_free(lines *l) { free(l->at); free(l->len); }

static int same_line(const lines *x, size_t i, const lines *y, size_t j)
{
    return x->len[i] == y->len[j] && !memcmp(x->at[i], y->at[j], x->len[i]);
}

/* One step of the edit script: ' ' a line kept, '-' removed, '+' added; a
 * and b count the lines of each side before it. */
typedef struct op {
    char kind;
    size_t a, b;
} op;

static void push(op *ops, size_t *n, char kind, size_t *a, size_t *b)
{
    ops[(*n)++] = (op){ kind, *a, *b };
    if (kind != '+') (*a)++;
    if (kind != '-') (*b)++;
}

/* The edit script from x to y: the common start and end kept, the middle
 * matched line by line (longest common subsequence); a middle too large to
 * match is all removed, then all added. */
static size_t edit_script(const lines *x, const lines *y, op *ops)
{
    size_t pre = 0, suf = 0, n = 0, a = 0, b = 0;
    while (pre < x->n && pre < y->n && same_line(x, pre, y, pre)) pre++;
    while (suf < x->n - pre && suf < y->n - pre && same_line(x, x->n - 1 - suf, y, y->n - 1 - suf)) suf++;
    size_t m = x->n - pre - suf, k = y->n - pre - suf, i = 0, j = 0;
    for (size_t p = 0; p < pre; p++) push(ops, &n, ' ', &a, &b);
    uint32_t *t = m && k && m * k <= MAX_CELLS ? bp_calloc((m + 1) * (k + 1), sizeof *t) : NULL;
    if (t) {
        /* t[i][j]: the longest common subsequence of x[pre+i..] and y[pre+j..] */
        for (size_t u = m; u-- > 0;)
            for (size_t v = k; v-- > 0;)
                t[u * (k + 1) + v] = same_line(x, pre + u, y, pre + v) ? t[(u + 1) * (k + 1) + v + 1] + 1
                                     : t[(u + 1) * (k + 1) + v] >= t[u * (k + 1) + v + 1] ? t[(u + 1) * (k + 1) + v]
                                     : t[u * (k + 1) + v + 1];
        while (i < m && j < k) {
            if (same_line(x, pre + i, y, pre + j)) { push(ops, &n, ' ', &a, &b); i++; j++; }
            else if (t[(i + 1) * (k + 1) + j] >= t[i * (k + 1) + j + 1]) { push(ops, &n, '-', &a, &b); i++; }
            else { push(ops, &n, '+', &a, &b); j++; }
        }
        free(t);
    }
    for (; i < m; i++) push(ops, &n, '-', &a, &b);
    for (; j < k; j++) push(ops, &n, '+', &a, &b);
    for (size_t p = 0; p < suf; p++) push(ops, &n, ' ', &a, &b);
    return n;
}

static void diff_line(bp_buf *out, char kind, const lines *l, size_t i)
{
    bp_buf_addc(out, kind);
    bp_buf_add(out, l->at[i], l->len[i]);
    bp_buf_addc(out, '\n');
    if (i == l->n - 1 && l->open_end) bp_buf_adds(out, "\\ No newline at end of file\n");
}

/* The hunks of a script: each change with CONTEXT lines around it, changes
 * closer than twice that in one hunk. */
static void write_hunks(bp_buf *out, const op *ops, size_t n, const lines *x, const lines *y)
{
    for (size_t i = 0; i < n;) {
        while (i < n && ops[i].kind == ' ') i++;
        if (i == n) break;
        size_t last = i;
        for (;;) {
            size_t next = last + 1;
            while (next < n && ops[next].kind == ' ') next++;
            if (next == n || next - last - 1 > 2 * CONTEXT) break;
            last = next;
        }
        size_t start = i > CONTEXT ? i - CONTEXT : 0, end = last + 1 + CONTEXT < n ? last + 1 + CONTEXT : n;
        size_t la = 0, lb = 0;
        for (size_t k = start; k < end; k++) { la += ops[k].kind != '+'; lb += ops[k].kind != '-'; }
        bp_buf_printf(out, "@@ -%zu,%zu +%zu,%zu @@\n", ops[start].a + (la ? 1 : 0), la, ops[start].b + (lb ? 1 : 0), lb);
        for (size_t k = start; k < end; k++)
            if (ops[k].kind == '+') diff_line(out, '+', y, ops[k].b); else diff_line(out, ops[k].kind, x, ops[k].a);
        i = end;
    }
}

/* One file's unified diff (a or b NULL: the file is new, or gone). */
void bp_diff_file(bp_buf *out, const char *name, const bp_buf *a, const bp_buf *b)
{
    lines x, y;
    split_lines(a, &x);
    split_lines(b, &y);
    op *ops = bp_calloc(x.n + y.n + 1, sizeof *ops);
    size_t n = edit_script(&x, &y, ops);
    bp_buf_printf(out, "--- %s%s\n+++ %s%s\n", a ? "a/" : "/dev/null", a ? name : "", b ? "b/" : "/dev/null", b ? name : "");
    write_hunks(out, ops, n, &x, &y);
    free(ops);
    lines_free(&x);
    lines_free(&y);
}
