/*
 * log.c — where the library's messages go.
 *
 * Every message the library has for a person (the service's JSON log lines,
 * delivery progress, a mapping's print/ctx.log) goes through one place: the
 * embedder's callback when one is set with bp_set_log, else stderr as the
 * CLI has always written it (a JSON line per message; a mapping's lines as
 * "blueprint log [event N id] file.lua:12: text").
 *
 * The callback and its context are one pair behind a read-write lock: a
 * message is written with the read lock held, so once bp_set_log returns no
 * thread is still inside the previous callback and its context may be freed.
 */
#include "internal.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

static pthread_rwlock_t log_lock = PTHREAD_RWLOCK_INITIALIZER;
static bp_log_fn log_fn;
static void *log_ctx;

static int report_oom(void);

void bp_set_log(bp_log_fn fn, void *ctx)
{
    pthread_rwlock_wrlock(&log_lock);
    log_fn = fn;
    log_ctx = fn ? ctx : NULL;
    pthread_rwlock_unlock(&log_lock);
    bp_set_oom_report(fn ? report_oom : NULL);
}

void bp_get_log(bp_log_fn *fn, void **ctx)
{
    pthread_rwlock_rdlock(&log_lock);
    if (fn) *fn = log_fn;
    if (ctx) *ctx = log_ctx;
    pthread_rwlock_unlock(&log_lock);
}

void bp_log_stderr(void *ctx, int level, const char *msg, const char *json)
{
    (void)ctx;
    (void)level;
    (void)msg;
    /* one write per line: lines from several threads do not interleave */
    size_t n = strlen(json);
    char small[4096];
    if (n + 1 <= sizeof small) {
        memcpy(small, json, n);
        small[n] = '\n';
        fwrite(small, 1, n + 1, stderr);
    } else {
        flockfile(stderr);
        fwrite(json, 1, n, stderr);
        fputc('\n', stderr);
        funlockfile(stderr);
    }
    fflush(stderr);
}

int bp_log_level_of(const char *level)
{
    if (!level) return BP_LOG_INFO;
    if (!strcmp(level, "error")) return BP_LOG_ERROR;
    if (!strcmp(level, "warn") || !strcmp(level, "warning")) return BP_LOG_WARN;
    if (!strcmp(level, "debug")) return BP_LOG_DEBUG;
    return BP_LOG_INFO;
}

int bp_log_has_sink(void)
{
    pthread_rwlock_rdlock(&log_lock);
    int set = log_fn != NULL;
    pthread_rwlock_unlock(&log_lock);
    return set;
}

void bp_log(const char *level, const char *msg, const char *fields_json)
{
    bp_buf b;
    bp_buf_init(&b);
    bp_buf_printf(&b, "{\"ts\":%.3f,\"level\":\"%s\",\"msg\":", bp_wall_ms() / 1000.0, level);
    bp_json_write_string(&b, msg, strlen(msg));
    if (fields_json && *fields_json) { bp_buf_addc(&b, ','); bp_buf_adds(&b, fields_json); }
    bp_buf_addc(&b, '}');
    pthread_rwlock_rdlock(&log_lock);
    if (log_fn) log_fn(log_ctx, bp_log_level_of(level), msg, b.data);
    else bp_log_stderr(NULL, bp_log_level_of(level), msg, b.data);
    pthread_rwlock_unlock(&log_lock);
    bp_buf_free(&b);
}

/* The out-of-memory report (alloc.c calls it, then aborts): nothing may be
 * allocated here, so a fixed line; 0 leaves it to alloc.c's stderr line. */
static int report_oom(void)
{
    static const char line[] = "{\"level\":\"error\",\"msg\":\"blueprint: out of memory\"}";
    int told = 0;
    if (pthread_rwlock_tryrdlock(&log_lock) == 0) {
        if (log_fn) {
            log_fn(log_ctx, BP_LOG_ERROR, "blueprint: out of memory", line);
            told = 1;
        }
        pthread_rwlock_unlock(&log_lock);
    }
    return told;
}

void bp_log_field(bp_buf *f, const char *key, const char *text)
{
    if (f->len) bp_buf_addc(f, ',');
    bp_json_write_string(f, key, strlen(key));
    bp_buf_addc(f, ':');
    bp_json_write_text(f, text ? text : "", text ? strlen(text) : 0);
}

void bp_log_field_int(bp_buf *f, const char *key, long long value)
{
    if (f->len) bp_buf_addc(f, ',');
    bp_json_write_string(f, key, strlen(key));
    bp_buf_printf(f, ":%lld", value);
}
