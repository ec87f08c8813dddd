/*
 * buffer.c — growable byte buffers and error messages.
 *
 * Growth goes through bp_realloc: allocation failure is fatal (alloc.c says
 * why).  Lua's own memory cap is enforced separately (sandbox.c).
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void bp_error_set(bp_error *err, const char *fmt, ...)
{
    if (!err) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
}

void bp_buf_init(bp_buf *b) { b->data = NULL; b->len = b->cap = 0; }

void bp_buf_free(bp_buf *b) { free(b->data); bp_buf_init(b); }

void bp_buf_reset(bp_buf *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

void bp_buf_reserve(bp_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) cap *= 2;
    char *p = bp_realloc(b->data, cap);
    b->data = p;
    b->cap = cap;
}

void bp_buf_add(bp_buf *b, const void *p, size_t n)
{
    bp_buf_reserve(b, n);
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void bp_buf_adds(bp_buf *b, const char *s) { bp_buf_add(b, s, strlen(s)); }

void bp_buf_addc(bp_buf *b, char c) { bp_buf_add(b, &c, 1); }

void bp_buf_printf(bp_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    bp_buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}
