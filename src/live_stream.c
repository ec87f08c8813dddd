/*
 * live_stream.c — the Live Events stream (GET …/live-events/stream,
 * Server-Sent Events): one "outcome" event per judged event of an
 * integration, as the registry's ring of recent outcome lines has them.
 *
 * A stream never holds an HTTP thread: it parks its connection when it has
 * nothing to send and the registry's on_live hook resumes it; the server's
 * main loop resumes parked streams for a keep-alive, and all of them when
 * it stops.  A stream ends when its integration is deleted, the server
 * stops, or its console session is signed out.
 */
#include "server.h"

#include <stdlib.h>
#include <string.h>

#define STREAM_KEEPALIVE_MS 15000

/* A stream parks its connection (MHD_suspend_connection) when it has
 * nothing to send, and the registry's on_live hook resumes it; a parked
 * stream is also resumed every few seconds for a keep-alive comment. */
struct stream {
    stream *next;                 /* [streams_mu] */
    server *s;
    struct MHD_Connection *c;
    bp_integration *it;           /* a reference held until freed */
    uint64_t next_seq;
    bp_buf pending;
    size_t sent;
    int parked;                   /* [streams_mu] */
    int news;                     /* [streams_mu] an outcome arrived since the last read */
    double last_write_ms;         /* [streams_mu] */
    char jti[sizeof ((bp_claims *)0)->jti];   /* the session's: a sign-out ends the stream too */
};

static void resume_locked(stream *st)
{
    st->news = 1;   /* also when not parked: the reader may be about to park */
    if (!st->parked) return;
    st->parked = 0;
    MHD_resume_connection(st->c);
}

void bp_streams_on_live(void *ctx, bp_integration *it)
{
    server *s = ctx;
    pthread_mutex_lock(&s->streams_mu);
    for (stream *st = s->streams; st; st = st->next) if (st->it == it) resume_locked(st);
    pthread_mutex_unlock(&s->streams_mu);
}

void bp_streams_wake(server *s, int all)
{
    double now = bp_monotonic_ms();
    pthread_mutex_lock(&s->streams_mu);
    if (all) s->stopping = 1;
    for (stream *st = s->streams; st; st = st->next)
        if (all || now - st->last_write_ms >= STREAM_KEEPALIVE_MS) { resume_locked(st); st->news = 0; }
    pthread_mutex_unlock(&s->streams_mu);
}

int bp_streams_resume_all(server *s)
{
    pthread_mutex_lock(&s->streams_mu);
    int open = s->streams != NULL;
    for (stream *st = s->streams; st; st = st->next) resume_locked(st);
    pthread_mutex_unlock(&s->streams_mu);
    return open;
}

void bp_streams_end_session(server *s, const char *jti)
{
    pthread_mutex_lock(&s->streams_mu);
    for (stream *st = s->streams; st; st = st->next)
        if (!strcmp(st->jti, jti)) resume_locked(st);
    pthread_mutex_unlock(&s->streams_mu);
}

/* Fill st->pending with what the ring holds past next_seq.  Returns 1
 * when the stream has ended (deleted, or the server stops). */
static void add_line(void *ctx, const char *line)
{
    stream *st = ctx;
    bp_buf_printf(&st->pending, "event: outcome\ndata: %s\n\n", line ? line : "{}");
}

static int take_lines(stream *st)
{
    return bp_registry_live_since(st->s->reg, st->it, &st->next_seq, add_line, st);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream *st = cls;
    server *s = st->s;
    while (st->sent == st->pending.len) {
        bp_buf_reset(&st->pending);
        st->sent = 0;
        pthread_mutex_lock(&s->streams_mu);
        st->news = 0;   /* what arrives from here on is read below, or sets it again */
        pthread_mutex_unlock(&s->streams_mu);
        int ended = take_lines(st) || (st->jti[0] && bp_registry_jti_spent(s->reg, st->jti));
        pthread_mutex_lock(&s->streams_mu);
        if (s->stopping) ended = 1;
        if (ended) {
            pthread_mutex_unlock(&s->streams_mu);
            if (!st->pending.len) return MHD_CONTENT_READER_END_OF_STREAM;
            break;
        }
        if (st->pending.len) { pthread_mutex_unlock(&s->streams_mu); break; }
        if (st->news) { pthread_mutex_unlock(&s->streams_mu); continue; }   /* it came meanwhile */
        if (bp_monotonic_ms() - st->last_write_ms >= STREAM_KEEPALIVE_MS) {
            pthread_mutex_unlock(&s->streams_mu);
            bp_buf_adds(&st->pending, ": keep-alive\n\n");
            break;
        }
        /* nothing to say: park until on_live or the keep-alive tick */
        st->parked = 1;
        MHD_suspend_connection(st->c);
        pthread_mutex_unlock(&s->streams_mu);
        return 0;
    }
    size_t n = st->pending.len - st->sent < max ? st->pending.len - st->sent : max;
    memcpy(buf, st->pending.data + st->sent, n);
    st->sent += n;
    pthread_mutex_lock(&s->streams_mu);
    st->last_write_ms = bp_monotonic_ms();
    pthread_mutex_unlock(&s->streams_mu);
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    stream *st = cls;
    server *s = st->s;
    pthread_mutex_lock(&s->streams_mu);
    for (stream **p = &s->streams; *p; p = &(*p)->next) if (*p == st) { *p = st->next; break; }
    pthread_mutex_unlock(&s->streams_mu);
    bp_registry_unwatch(s->reg, st->it);
    bp_integration_release(st->it);
    bp_buf_free(&st->pending);
    free(st);
}

enum MHD_Result bp_api_open_stream(call *k)
{
    stream *st = bp_calloc(1, sizeof *st);
    st->s = k->s;
    st->c = k->c;
    st->it = k->it;
    memcpy(st->jti, k->who.jti, sizeof st->jti);
    k->it = NULL;   /* the stream keeps the reference */
    st->next_seq = bp_registry_watch(k->s->reg, st->it);
    st->last_write_ms = bp_monotonic_ms();
    bp_buf_init(&st->pending);
    bp_buf_adds(&st->pending, ": live events; one 'outcome' event per judged event ('retrying' while it waits)\n\n");
    pthread_mutex_lock(&k->s->streams_mu);
    st->next = k->s->streams;
    k->s->streams = st;
    pthread_mutex_unlock(&k->s->streams_mu);
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, stream_free);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(k->c, 200, resp);
    MHD_destroy_response(resp);
    return ret;
}
