/*
 * reader.c — split an input stream into event texts, in constant memory.
 *
 * Three input shapes are accepted (docs/contracts.md, dry-run: EVENTS):
 *   - NDJSON: one event per line; a bad line is one bad event;
 *   - a JSON array: elements are cut out one by one, never the whole array;
 *   - a single JSON object, compact or pretty-printed (or several in a row).
 * The reader only splits; the engine's JSON parser judges each piece, so a
 * malformed event gets the parser's exact message.  Nothing longer than the
 * event size limit is ever buffered.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum mode { MODE_UNKNOWN, MODE_LINES, MODE_ARRAY, MODE_VALUES, MODE_DONE };

struct bp_reader {
    int fd;                 /* -1: reading from mem */
    const char *mem;
    size_t memlen, mempos;
    size_t max;
    char in[65536];
    size_t start, end;
    int eof;
    enum mode mode;
    long elements;          /* array elements returned so far */
    long lines;             /* line breaks consumed: messages name lines, not bytes */
    long ev_line;           /* the line (1-based) where the last event or bad stretch began */
    bp_buf ev;
};

bp_reader *bp_reader_new(int fd, size_t max_event_bytes)
{
    bp_reader *r = bp_calloc(1, sizeof *r);
    r->fd = fd;
    r->max = max_event_bytes ? max_event_bytes : BP_DEFAULT_MAX_EVENT_BYTES;
    bp_buf_init(&r->ev);
    return r;
}

void bp_reader_free(bp_reader *r)
{
    if (!r) return;
    bp_buf_free(&r->ev);
    free(r);
}

bp_reader *bp_reader_new_mem(const char *data, size_t len, size_t max_event_bytes)
{
    bp_reader *r = bp_reader_new(-1, max_event_bytes);
    r->mem = data;
    r->memlen = len;
    return r;
}

static int fill(bp_reader *r)
{
    if (r->start < r->end) return 1;
    if (r->eof) return 0;
    if (r->fd < 0) {
        size_t n = r->memlen - r->mempos < sizeof r->in ? r->memlen - r->mempos : sizeof r->in;
        if (!n) { r->eof = 1; return 0; }
        memcpy(r->in, r->mem + r->mempos, n);
        r->mempos += n;
        r->start = 0;
        r->end = n;
        return 1;
    }
    ssize_t n;
    do n = read(r->fd, r->in, sizeof r->in); while (n < 0 && errno == EINTR);
    if (n <= 0) { r->eof = 1; return 0; }
    r->start = 0;
    r->end = (size_t)n;
    return 1;
}

static int peek(bp_reader *r) { return fill(r) ? (unsigned char)r->in[r->start] : -1; }

static int next(bp_reader *r)
{
    if (!fill(r)) return -1;
    if (r->in[r->start] == '\n') r->lines++;
    return (unsigned char)r->in[r->start++];
}

static void skip_ws(bp_reader *r)
{
    int c;
    while ((c = peek(r)) == ' ' || c == '\t' || c == '\n' || c == '\r') next(r);
}

/* Append c unless the event is already over the limit. */
static void keep(bp_reader *r, int c)
{
    if (r->ev.len <= r->max) bp_buf_addc(&r->ev, (char)c);
}

/* Cut out one JSON value structurally.  In an array, a scalar ends at ',' or
 * ']' (left unread).  A raw line break inside a string can never be valid
 * JSON, so the value is cut there and the parser will say what is wrong:
 * that keeps one broken event from swallowing the ones after it. */
static void scan_value(bp_reader *r, int in_array)
{
    int depth = 0, in_str = 0, esc = 0, c;
    while ((c = peek(r)) >= 0) {
        if (in_str) {
            if (c == '\n') return;
            next(r);
            keep(r, c);
            if (esc) esc = 0;
            else if (c == '\\') esc = 1;
            else if (c == '"') { in_str = 0; if (depth == 0) return; }
            continue;
        }
        if (depth == 0 && r->ev.len > 0 && (c == ',' || c == ']' || (!in_array && (c == '\n' || c == ' ' || c == '{'))))
            return;
        next(r);
        keep(r, c);
        if (c == '"') in_str = 1;
        else if (c == '{' || c == '[') depth++;
        else if (c == '}' || c == ']') { if (--depth <= 0) return; }
    }
}

long bp_reader_line(const bp_reader *r) { return r->ev_line; }

/* The reader's own refusals name the line they begin on, as bp_map_events
 * does for an event the parser refused. */
static enum bp_read_status bad(bp_reader *r, bp_error *err, const char *what)
{
    bp_error_set(err, "line %ld: malformed %s", r->ev_line, what);
    return BP_READ_BAD;
}

static enum bp_read_status too_large(bp_reader *r, bp_error *err)
{
    char what[96];
    snprintf(what, sizeof what, "event: larger than the %zu-byte limit (skipped)", r->max);
    return bad(r, err, what);
}

static enum bp_read_status read_line(bp_reader *r, const char **ev, size_t *len, bp_error *err)
{
    for (;;) {
        bp_buf_reset(&r->ev);
        r->ev_line = r->lines + 1;
        int any = 0;
        while (fill(r)) {
            any = 1;
            char *nl = memchr(r->in + r->start, '\n', r->end - r->start);
            size_t n = nl ? (size_t)(nl - (r->in + r->start)) : r->end - r->start;
            if (r->ev.len <= r->max) bp_buf_add(&r->ev, r->in + r->start, n > r->max + 1 ? r->max + 1 : n);
            r->start += n + (nl ? 1 : 0);
            if (nl) { r->lines++; break; }
        }
        if (!any) return BP_READ_END;
        if (r->ev.len > r->max) return too_large(r, err);
        while (r->ev.len && (r->ev.data[r->ev.len - 1] == '\r')) r->ev.len--;
        size_t i = 0;
        while (i < r->ev.len && (r->ev.data[i] == ' ' || r->ev.data[i] == '\t')) i++;
        if (i == r->ev.len) continue;          /* blank line */
        *ev = r->ev.data ? r->ev.data : "";
        *len = r->ev.len;
        return BP_READ_EVENT;
    }
}

/* Decide between NDJSON and pretty-printed values by looking at the first
 * line: a line that closes its own braces is NDJSON; one that leaves them
 * open is the start of a pretty-printed object, unless the next line starts
 * a new object at column 0 (then it is NDJSON with a truncated first line). */
static enum mode detect(bp_reader *r)
{
    skip_ws(r);
    int c = peek(r);
    if (c < 0) return MODE_DONE;
    if (c == '[') { next(r); return MODE_ARRAY; }
    if (c != '{') return MODE_LINES;
    size_t i = r->start;
    int depth = 0, in_str = 0, esc = 0;
    for (; i < r->end && r->in[i] != '\n'; i++) {
        char ch = r->in[i];
        if (in_str) { if (esc) esc = 0; else if (ch == '\\') esc = 1; else if (ch == '"') in_str = 0; continue; }
        if (ch == '"') in_str = 1;
        else if (ch == '{' || ch == '[') depth++;
        else if (ch == '}' || ch == ']') depth--;
    }
    if (i == r->end || depth <= 0 || in_str) return MODE_LINES;
    if (i + 1 < r->end && r->in[i + 1] == '{') return MODE_LINES;
    return MODE_VALUES;
}

enum bp_read_status bp_reader_next(bp_reader *r, const char **ev, size_t *len, bp_error *err)
{
    if (err) err->msg[0] = '\0';
    if (r->mode == MODE_UNKNOWN) r->mode = detect(r);
    switch (r->mode) {
    case MODE_DONE:
    case MODE_UNKNOWN:
        return BP_READ_END;
    case MODE_LINES:
        return read_line(r, ev, len, err);
    case MODE_VALUES:
        skip_ws(r);
        if (peek(r) < 0) return BP_READ_END;
        bp_buf_reset(&r->ev);
        r->ev_line = r->lines + 1;
        scan_value(r, 0);
        if (r->ev.len > r->max) return too_large(r, err);
        *ev = r->ev.data;
        *len = r->ev.len;
        return BP_READ_EVENT;
    case MODE_ARRAY: {
        skip_ws(r);
        int c = peek(r);
        if (r->elements > 0) {
            if (c == ',') { next(r); skip_ws(r); c = peek(r); }
            else if (c == ']') { r->mode = MODE_DONE; return BP_READ_END; }
            else if (c < 0) {
                r->mode = MODE_DONE;
                r->ev_line = r->lines + 1;
                return bad(r, err, "input: the JSON array is not closed (missing ']' at the end)");
            } else {
                /* carry on with the next element; the missing comma is reported once */
                r->elements++;
                bp_buf_reset(&r->ev);
                r->ev_line = r->lines + 1;
                scan_value(r, 1);
                return bad(r, err, "input: expected ',' between array elements before this one (this element skipped)");
            }
        } else if (c == ']') {
            next(r);
            r->mode = MODE_DONE;
            return BP_READ_END;
        }
        r->ev_line = r->lines + 1;
        if (c < 0) {
            r->mode = MODE_DONE;
            return bad(r, err, "input: the JSON array is not closed (missing ']' at the end)");
        }
        r->elements++;
        bp_buf_reset(&r->ev);
        scan_value(r, 1);
        if (r->ev.len > r->max) return too_large(r, err);
        while (r->ev.len && strchr(" \t\r\n", r->ev.data[r->ev.len - 1])) r->ev.len--;
        if (r->ev.len == 0) {   /* e.g. "[,": consume one byte so we always progress */
            next(r);
            return bad(r, err, "input: empty array element");
        }
        *ev = r->ev.data;
        *len = r->ev.len;
        return BP_READ_EVENT;
    }
    }
    return BP_READ_END;
}
