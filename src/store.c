/*
 * store.c — the durable event store (SQLite, WAL mode).
 *
 * One database holds the events of every integration (`serve` keeps
 * STATE/events.db; `deliver` keeps DIR/blueprint.db with integration ""),
 * so the number of open files does not grow with the number of
 * integrations.  An event is written before any attempt, and its state
 * after each attempt, so a run killed at any moment (SIGKILL included)
 * loses nothing: the next run picks up every event still pending.  WAL with
 * synchronous=NORMAL survives a process crash; only a power loss can lose
 * the last commits.  The store holds the events as received (they never
 * contain secrets) and redacted outcome lines, nothing else.
 *
 * Threads: one write connection guarded by a recursive mutex (`mu`).  A
 * transaction holds it from bp_store_begin to bp_store_commit, so writers
 * (intake, every delivery loop) never interleave inside one another's
 * transactions and never meet SQLITE_BUSY among themselves.  Reads made
 * for people (Live Events, dead letters, counts) go through a second,
 * read-only connection with its own mutex (`rmu`): in WAL mode they see
 * the last commit and never wait for a writer.
 *
 * Checkpoints (copying the WAL back into the database, with an fsync) run
 * on a thread of the store's own, not in the committing thread: a delivery
 * loop that stalled for a checkpoint would send its paced requests late,
 * and bunched.
 *
 * Retention (bp_store_set_retention; `serve` sets it, `deliver` keeps
 * everything) runs on that thread too: final events past their window are
 * deleted a few hundred rows per write transaction with pauses between, so
 * the write lock is held for milliseconds at a time and delivery and
 * intake go on.  Unfinished events (pending, retrying, held) are never
 * pruned.  SQLite keeps the freed pages and fills them with the next
 * events, so a steady flow keeps the file at the size of its window.
 *
 * Failures: a commit that fails (disk full, I/O error, or the fault file
 * of BLUEPRINT_FAULT_FILE present) is rolled back and reported to the
 * caller, who keeps what it wanted to write and tries again; the store
 * counts failures and remembers the last one for /healthz and /metrics.
 */
#include "service.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

struct bp_store {
    pthread_mutex_t mu;         /* the write connection and its statements */
    pthread_mutex_t rmu;        /* the read connection */
    pthread_mutex_t health_mu;  /* failing, last_error, failures */
    sqlite3 *db, *rdb;
    sqlite3_stmt *insert, *insert_src, *update, *pending, *once_get, *once_put, *cache_get, *cache_put;
    char *fault_file;           /* fault injection for tests (BLUEPRINT_FAULT_FILE) */
    pthread_t checkpointer;
    int has_checkpointer;
    pthread_mutex_t ckpt_mu;    /* guards wal_frames, closing */
    pthread_cond_t ckpt_cond;
    int wal_frames, closing;
    int frames_seen;            /* the WAL's size at the last request (write connection: under mu) */
    char *path;
    int failing;
    long failures;
    char last_error[256];
    /* retention (the upkeep thread prunes; guarded by ckpt_mu) */
    bp_retention ret;
    int64_t prune_at;           /* wall ms of the next prune step */
    struct walk { int64_t pass_at; char *cursor; } walks[2];   /* once_keys, cache_values: see walk_step */
    sqlite3_stmt *prune;        /* write connection: under mu */
    _Atomic long pruned;
    /* The highest event id given out or found (under mu).  Rows leave the
     * table (a partition given up forgets its unfinished events, retention
     * prunes, an integration removed), and SQLite gives a new row the table's
     * max(id) + 1: a new event could take the id of one deleted a moment ago.
     * The delivery loops load pending events after the last id they loaded
     * (deliver_job.c) and their jobs write their rows by id, so a reused id
     * hides the new event from its loop (it stays pending, never sent: in a
     * rebalance that gives a node back a partition it gave up, the events it
     * forgot and read again came back under the ids just deleted) and lets a
     * job of the deleted event write over it.  Hence ids only grow while the
     * store is open (the loops load from the start after an open).  The
     * events table is not rebuilt AUTOINCREMENT as batches' is: it can be
     * large, and an open must stay quick. */
    int64_t high_id;
};

/* A new event's id (see high_id): above both the highest id this process
 * gave out (HIGH, a parameter) and the highest in the table (another
 * process may have written one). */
#define NEXT_ID(HIGH) "max(" HIGH ", (SELECT coalesce(max(id), 0) FROM events)) + 1"

static const char SCHEMA[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=NORMAL;"
    /* a delivery run rewrites each event's row and its once-key soon after
     * inserting them: a 16 MiB page cache and checkpoints every ~16 MiB of
     * WAL keep those pages from being read back and copied out repeatedly */
    "PRAGMA cache_size=-16384;"
    "CREATE TABLE IF NOT EXISTS events("
    "  id INTEGER PRIMARY KEY,"
    "  state TEXT NOT NULL,"               /* pending delivered dropped error dead held */
    "  body TEXT NOT NULL,"                /* the event as received */
    "  message_id TEXT,"
    "  idx INTEGER,"                       /* position in the input that added it */
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  failures INTEGER NOT NULL DEFAULT 0," /* consecutive failures of the current request */
    "  done_requests INTEGER NOT NULL DEFAULT 0,"
    "  next_at INTEGER NOT NULL DEFAULT 0,"
    "  last_status INTEGER, reason TEXT, response TEXT, outcome TEXT,"
    "  created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);"
    /* one b-tree keyed by the text (no rowid table plus key index): a mark
     * is one insert, and a delivery run makes one per contact */
    "CREATE TABLE IF NOT EXISTS once_keys(key TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID;"
    /* cluster mode: batches the vendor queued for some node, as every node
     * learns them from NAME.outcomes (batchstore.c); here because the
     * pending query below leaves their events to the node that resumes them */
    "CREATE TABLE IF NOT EXISTS handed(id INTEGER PRIMARY KEY, node TEXT NOT NULL, batch INTEGER NOT NULL,"
    "  integration TEXT NOT NULL, n INTEGER NOT NULL, answer_status INTEGER, answer_url TEXT, answer_body TEXT,"
    "  polls INTEGER NOT NULL DEFAULT 0, created_at INTEGER NOT NULL, UNIQUE(node, batch));"
    "CREATE TABLE IF NOT EXISTS handed_events(handed INTEGER NOT NULL, pos INTEGER NOT NULL, ktopic TEXT NOT NULL,"
    "  kpart INTEGER NOT NULL, koff INTEGER NOT NULL, kidx INTEGER NOT NULL, PRIMARY KEY(handed, pos));"
    "CREATE INDEX IF NOT EXISTS handed_by_source ON handed_events(ktopic, kpart, koff, kidx);"
    "CREATE INDEX IF NOT EXISTS handed_by_integration ON handed(integration);"
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);"
    /* ctx.cache values a blueprint set as durable, per account ("ACCOUNT\nKEY"),
     * with the event whose run set them (cache.c's backing, deliver.c) */
    "CREATE TABLE IF NOT EXISTS cache_values(key TEXT PRIMARY KEY, value TEXT NOT NULL, "
    "  expires INTEGER NOT NULL, event INTEGER) WITHOUT ROWID;";

/* Indexes that name the integration column, created after it exists (a
 * store written before it is migrated first). */
static const char INDEXES[] =
    "DROP INDEX IF EXISTS events_by_state;"
    "DROP INDEX IF EXISTS events_by_message_id;"
    "DROP INDEX IF EXISTS events_recent;"
    "CREATE INDEX IF NOT EXISTS events_by_integration ON events(integration, state, id);"
    /* Live Events lists an integration's events newest first by id: an
     * index that no update touches (one on updated_at would be rewritten by
     * every answer) */
    "CREATE INDEX IF NOT EXISTS events_by_id ON events(integration, id);"
    /* Signal retries deliveries too: one stored event per message id and integration. */
    "CREATE UNIQUE INDEX IF NOT EXISTS events_by_message ON events(integration, message_id) "
    "  WHERE message_id IS NOT NULL;"
    /* cluster mode (cluster.c): an event read from Kafka is stored once per
     * (topic, partition, offset, index in the message), whichever node
     * delivered it; and the node that owns the partition finds its own
     * unfinished events by slot.  Both empty (and free) outside cluster mode. */
    "CREATE UNIQUE INDEX IF NOT EXISTS events_by_source ON events(ktopic, kpart, koff, kidx) "
    "  WHERE ktopic IS NOT NULL;"
    "CREATE INDEX IF NOT EXISTS events_by_slot ON events(ksrc, state, koff) WHERE ksrc IS NOT NULL;"
    /* retention finds final events by the time of their outcome; unfinished
     * events are not in it, so their updates (each attempt) never touch it */
    "CREATE INDEX IF NOT EXISTS events_final ON events(state, updated_at) "
    "  WHERE state IN ('delivered','dropped','error','dead','replayed');"
    /* Live Events' batch filter; events sent alone are not in it */
    "CREATE INDEX IF NOT EXISTS events_by_batch ON events(integration, batch, id) WHERE batch IS NOT NULL;";

/* Columns added after the first release, created on a store that lacks them. */
static const char *const ADDED_COLUMNS[][2] = {
    { "integration", "ALTER TABLE events ADD COLUMN integration TEXT NOT NULL DEFAULT ''" },
    { "ktopic", "ALTER TABLE events ADD COLUMN ktopic TEXT" },
    { "kpart", "ALTER TABLE events ADD COLUMN kpart INTEGER" },
    { "koff", "ALTER TABLE events ADD COLUMN koff INTEGER" },
    { "kidx", "ALTER TABLE events ADD COLUMN kidx INTEGER" },
    { "ksrc", "ALTER TABLE events ADD COLUMN ksrc INTEGER" },
    /* the answers of an event's steps so far (ctx.send; steps.c's journal) */
    { "steps", "ALTER TABLE events ADD COLUMN steps TEXT" },
    /* the batch it went in (its outcome's batch.id; NULL: alone), so that
     * Live Events finds a batch's events by index (live-events?batch=N) */
    { "batch", "ALTER TABLE events ADD COLUMN batch INTEGER" },
};

/* SQLite's default busy handler backs off up to 100 ms per try.  Within
 * this process writers take `mu` and never meet; another process on the
 * same file (`blueprint dlq` next to a running `deliver`) holds locks for
 * microseconds, so poll every millisecond instead (for at most 5 s). */
static int busy_wait(void *ud, int tries)
{
    (void)ud;
    if (tries >= 5000) return 0;
    usleep(1000);
    return 1;
}

int bp_store_busy_handler(struct sqlite3 *db) { return sqlite3_busy_handler(db, busy_wait, NULL); }

/* once-keys and meta keys are per integration: "ID\x1fKEY" ("" keeps a
 * single-integration store's keys as they were). */
static const char *scoped(const char *integration, const char *key, char *buf, size_t n)
{
    if (!integration || !*integration) return key;
    snprintf(buf, n, "%s\x1f%s", integration, key);
    return buf;
}

static int has_column(sqlite3 *db, const char *name)
{
    sqlite3_stmt *q;
    int found = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA table_info(events)", -1, &q, NULL) != SQLITE_OK) return 0;
    while (sqlite3_step(q) == SQLITE_ROW)
        if (!strcmp((const char *)sqlite3_column_text(q, 1), name)) found = 1;
    sqlite3_finalize(q);
    return found;
}

static int add_columns(sqlite3 *db)
{
    for (size_t i = 0; i < sizeof ADDED_COLUMNS / sizeof ADDED_COLUMNS[0]; i++)
        if (!has_column(db, ADDED_COLUMNS[i][0]) && sqlite3_exec(db, ADDED_COLUMNS[i][1], NULL, NULL, NULL) != SQLITE_OK)
            return 0;
    return 1;
}

#define CHECKPOINT_FRAMES 4000   /* ~16 MiB of WAL */

/* After each commit on the write connection (SQLite calls it with the WAL's size). */
static int on_wal(void *ud, sqlite3 *db, const char *name, int frames)
{
    (void)db; (void)name;
    bp_store *s = ud;
    /* once per CHECKPOINT_FRAMES new frames (the WAL starts over from its
     * beginning once a checkpoint has copied all of it) */
    if (frames < s->frames_seen) s->frames_seen = 0;
    if (frames - s->frames_seen < CHECKPOINT_FRAMES) return SQLITE_OK;
    s->frames_seen = frames;
    pthread_mutex_lock(&s->ckpt_mu);
    s->wal_frames = frames;
    pthread_cond_signal(&s->ckpt_cond);
    pthread_mutex_unlock(&s->ckpt_mu);
    return SQLITE_OK;
}

/* ---- retention: pruning in small steps on the upkeep thread -------------------------------- */

#define PRUNE_BATCH 256          /* rows per write transaction: a few ms of the write lock */
#define PRUNE_PAUSE_MS 25        /* between batches while behind: delivery and intake get the lock */
#define PRUNE_IDLE_MS 1000       /* between looks once caught up */
#define ONCE_PASS_EVERY_MS 60000 /* a walk over a key-ordered table at most this often */

/* Delete up to PRUNE_BATCH events in `state` whose outcome is older than
 * cutoff, in one short transaction; returns how many, -1 on error. */
static long prune_batch(bp_store *s, const char *state, int64_t cutoff)
{
    if (bp_store_begin(s) < 0) return -1;
    sqlite3_stmt *q = s->prune;
    sqlite3_reset(q);
    sqlite3_bind_text(q, 1, state, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, cutoff);
    sqlite3_bind_int(q, 3, PRUNE_BATCH);
    int ok = sqlite3_step(q) == SQLITE_DONE;
    long n = ok ? (long)sqlite3_changes(s->db) : 0;
    sqlite3_reset(q);
    if (bp_store_commit(s, ok) < 0) return -1;
    atomic_fetch_add_explicit(&s->pruned, n, memory_order_relaxed);
    return n;
}

/* Two tables keyed by text are pruned by walking them in key order (no
 * index on their time column: every contact sync and ctx.cache write would
 * pay for one): once_keys by their mark time, cache_values (durable
 * ctx.cache) by their expiry, which otherwise only went at the next open. */
static const struct walked {
    const char *stretch, *last;     /* keys after ?1 up to ?2 / all keys after ?1; ?3 the cutoff */
    const char *next;               /* the key that ends the next stretch */
} WALKED[2] = {
    { "DELETE FROM once_keys WHERE key > ?1 AND key <= ?2 AND at < ?3",
      "DELETE FROM once_keys WHERE key > ?1 AND at < ?3",
      "SELECT key FROM once_keys WHERE key > ?1 ORDER BY key LIMIT 1 OFFSET ?2" },
    { "DELETE FROM cache_values WHERE key > ?1 AND key <= ?2 AND expires < ?3",
      "DELETE FROM cache_values WHERE key > ?1 AND expires < ?3",
      "SELECT key FROM cache_values WHERE key > ?1 ORDER BY key LIMIT 1 OFFSET ?2" },
};
enum { WALK_ONCE, WALK_CACHE };

/* The next stretch of a walk (keys after its cursor, in key order): rows
 * older than cutoff deleted, in one short transaction.  Returns 1 while the
 * walk goes on. */
static int walk_stretch(bp_store *s, int which, int64_t cutoff)
{
    const struct walked *w = &WALKED[which];
    char **cursor = &s->walks[which].cursor;
    sqlite3_stmt *q;
    char *end = NULL;
    if (bp_store_begin(s) < 0) return 0;
    if (sqlite3_prepare_v2(s->db, w->next, -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, *cursor, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 2, 4 * PRUNE_BATCH - 1);
        if (sqlite3_step(q) == SQLITE_ROW) end = bp_strdup((const char *)sqlite3_column_text(q, 0));
        sqlite3_finalize(q);
    }
    int ok = sqlite3_prepare_v2(s->db, end ? w->stretch : w->last, -1, &q, NULL) == SQLITE_OK;
    if (ok) {
        sqlite3_bind_text(q, 1, *cursor, -1, SQLITE_STATIC);
        if (end) sqlite3_bind_text(q, 2, end, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 3, cutoff);
        ok = sqlite3_step(q) == SQLITE_DONE;
        sqlite3_finalize(q);
    }
    bp_store_commit(s, ok);
    free(*cursor);
    *cursor = end;              /* NULL: the walk is over */
    return end != NULL;
}

/* A walk starts at most every ONCE_PASS_EVERY_MS and goes a stretch per
 * prune step.  Returns 1 while it goes on. */
static int walk_step(bp_store *s, int which, int64_t cutoff, int64_t now)
{
    struct walk *w = &s->walks[which];
    if (!w->cursor && now < w->pass_at) return 0;
    if (!w->cursor) w->cursor = bp_strdup("");
    if (walk_stretch(s, which, cutoff)) return 1;
    w->pass_at = now + ONCE_PASS_EVERY_MS;
    return 0;
}

/* One step: a batch of each kind of final event past its window, and a
 * stretch of each walk.  Returns 1 when there is more to do now. */
static int prune_step(bp_store *s, const bp_retention *r, int64_t now)
{
    /* "replayed" (cluster mode): a dead letter sent again as a new event, kept as history */
    static const char *const short_lived[] = { "delivered", "dropped", "replayed" }, *const long_lived[] = { "dead", "error" };
    int behind = 0;
    for (int i = 0; i < 3; i++)
        if (r->delivered_ms > 0 && prune_batch(s, short_lived[i], now - r->delivered_ms) == PRUNE_BATCH) behind = 1;
    for (int i = 0; i < 2; i++)
        if (r->dead_ms > 0 && prune_batch(s, long_lived[i], now - r->dead_ms) == PRUNE_BATCH) behind = 1;
    if (r->once_ms > 0 && walk_step(s, WALK_ONCE, now - r->once_ms, now)) behind = 1;
    if (walk_step(s, WALK_CACHE, now, now)) behind = 1;
    return behind;
}

/* Copy the WAL into the database.  A PASSIVE checkpoint copies what was
 * committed without blocking the writers; but SQLite starts the WAL over
 * from its beginning only once every frame is copied, which under a steady
 * flow of commits never happens, so the WAL would grow without end.  So the
 * frames committed meanwhile are copied again with the write lock held, and
 * the next commit starts the WAL over: it stays a few tens of MiB.  That
 * catch-up (and its fsyncs) holds commits ~10 ms, at most ~30 (measured in
 * the soak), once per ~16 MiB of WAL; doing it less often makes each wait
 * longer (~27 ms every ~64 MiB), not the total shorter. */
static void checkpoint(bp_store *s, sqlite3 *db)
{
    if (sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL) != SQLITE_OK) return;
    pthread_mutex_lock(&s->mu);
    sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    pthread_mutex_unlock(&s->mu);
}

/* The store's own thread: checkpoints when the WAL has grown (see on_wal),
 * and, when a retention is set, a prune step now and then.  One thread per
 * store, whatever the number of integrations. */
static void *upkeep_main(void *arg)
{
    bp_store *s = arg;
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(s->path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) { sqlite3_close(db); db = NULL; }
    if (db) bp_store_busy_handler(db);
    /* a connection that has read nothing does not know the file is in WAL
     * mode, and its checkpoints do nothing (SQLite answers -1 frames): the
     * WAL then grew without end */
    if (db) sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
    pthread_mutex_lock(&s->ckpt_mu);
    while (!s->closing) {
        int64_t now = (int64_t)bp_wall_ms();
        int pruning = s->ret.delivered_ms > 0 || s->ret.dead_ms > 0 || s->ret.once_ms > 0;
        if (s->wal_frames) {
            s->wal_frames = 0;
            pthread_mutex_unlock(&s->ckpt_mu);
            /* PASSIVE: copies what it can without blocking the writers; a later
             * commit restarts the WAL from its beginning once all is copied */
            if (db) checkpoint(s, db);
            pthread_mutex_lock(&s->ckpt_mu);
        } else if (pruning && now >= s->prune_at) {
            bp_retention r = s->ret;
            pthread_mutex_unlock(&s->ckpt_mu);
            int behind = prune_step(s, &r, now);
            pthread_mutex_lock(&s->ckpt_mu);
            s->prune_at = (int64_t)bp_wall_ms() + (behind ? PRUNE_PAUSE_MS : PRUNE_IDLE_MS);
        } else if (pruning) {
            struct timespec until = { (time_t)(s->prune_at / 1000), (long)(s->prune_at % 1000) * 1000000L };
            pthread_cond_timedwait(&s->ckpt_cond, &s->ckpt_mu, &until);
        } else {
            pthread_cond_wait(&s->ckpt_cond, &s->ckpt_mu);
        }
    }
    pthread_mutex_unlock(&s->ckpt_mu);
    sqlite3_close(db);
    return NULL;
}

void bp_store_set_retention(bp_store *s, const bp_retention *r)
{
    pthread_mutex_lock(&s->ckpt_mu);
    s->ret = *r;
    s->prune_at = 0;
    pthread_cond_signal(&s->ckpt_cond);
    pthread_mutex_unlock(&s->ckpt_mu);
}

bp_retention bp_store_retention(bp_store *s)
{
    pthread_mutex_lock(&s->ckpt_mu);
    bp_retention r = s->ret;
    pthread_mutex_unlock(&s->ckpt_mu);
    return r;
}

static int prepare(sqlite3 *db, sqlite3_stmt **st, const char *sql)
{
    return sqlite3_prepare_v2(db, sql, -1, st, NULL) == SQLITE_OK ? 0 : -1;
}

bp_store *bp_store_open(const char *dir, const char *file, bp_error *err)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        bp_error_set(err, "state directory %s: %s", dir, strerror(errno));
        return NULL;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    bp_store *s = bp_calloc(1, sizeof *s);
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&s->mu, &ma);
    pthread_mutexattr_destroy(&ma);
    pthread_mutex_init(&s->rmu, NULL);
    pthread_mutex_init(&s->health_mu, NULL);
    pthread_mutex_init(&s->ckpt_mu, NULL);
    pthread_cond_init(&s->ckpt_cond, NULL);
    s->path = bp_strdup(path);
    const char *fault = getenv("BLUEPRINT_FAULT_FILE");
    if (fault && *fault) s->fault_file = bp_strdup(fault);
    /* The database, its WAL and SHM are created owner-only whatever the
     * caller's umask: the WAL can hold recent pages of any table.  The file
     * is made 0600 before SQLite opens it, and SQLite gives the WAL and SHM
     * the database's own mode; the process's umask (shared by every thread
     * of an embedder) is never changed. */
    int pre = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (pre >= 0) { fchmod(pre, 0600); close(pre); }
    int ok = sqlite3_open(path, &s->db) == SQLITE_OK && bp_store_busy_handler(s->db) == SQLITE_OK &&
             sqlite3_exec(s->db, SCHEMA, NULL, NULL, NULL) == SQLITE_OK;
    ok = ok && add_columns(s->db) && sqlite3_exec(s->db, INDEXES, NULL, NULL, NULL) == SQLITE_OK &&
         prepare(s->db, &s->insert, "INSERT INTO events(id, integration, state, body, idx, created_at, updated_at, "
                                    "message_id) VALUES(" NEXT_ID("?11") ", ?5, 'pending', ?1, ?2, ?3, ?3, ?4) "
                                    "ON CONFLICT DO NOTHING") == 0 &&
         prepare(s->db, &s->insert_src, "INSERT INTO events(id, integration, state, body, idx, created_at, updated_at, "
                                        "message_id, ktopic, kpart, koff, kidx, ksrc) VALUES(" NEXT_ID("?11") ", ?5, "
                                        "'pending', ?1, ?2, ?3, ?3, ?4, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING") == 0 &&
         prepare(s->db, &s->update, "UPDATE events SET state=?2, attempts=?3, failures=?4, done_requests=?5, "
                                    "next_at=?6, last_status=?7, reason=?8, response=?9, outcome=?10, updated_at=?11, steps=?12, "
                                    "batch=?13 WHERE id=?1") == 0 &&
         prepare(s->db, &s->pending, "SELECT id, body, attempts, failures, done_requests, next_at, idx, ksrc, koff, steps FROM events "
                                     "WHERE integration=?3 AND state='pending' AND id > ?1 "
                                     /* an event of a batch another node had queued at the vendor waits
                                      * until its loop resumes that batch (batchstore.c) */
                                     "AND NOT EXISTS(SELECT 1 FROM handed_events h WHERE h.ktopic=events.ktopic AND "
                                     "h.kpart=events.kpart AND h.koff=events.koff AND h.kidx=events.kidx) "
                                     "ORDER BY id LIMIT ?2") == 0 &&
         /* the same terms as events_final's WHERE, so that it is used */
         prepare(s->db, &s->prune, "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE state IN "
                                   "('delivered','dropped','error','dead','replayed') AND state=?1 AND updated_at < ?2 LIMIT ?3)") == 0 &&
         prepare(s->db, &s->once_get, "SELECT at FROM once_keys WHERE key=?1") == 0 &&
         prepare(s->db, &s->once_put, "INSERT OR REPLACE INTO once_keys(key, at) VALUES(?1, ?2)") == 0 &&
         /* a value counts once the run that set it is over: its event delivered (or
          * dropped, or purged); while the event is unfinished a restart must map
          * it again to the same requests, and a failed one must be tried again */
         prepare(s->db, &s->cache_get, "SELECT value, expires FROM cache_values c WHERE key=?1 AND expires > ?2 AND "
                                       "NOT EXISTS(SELECT 1 FROM events WHERE id=c.event AND "
                                       "state IN ('pending','held','error','dead'))") == 0 &&
         prepare(s->db, &s->cache_put, "INSERT OR REPLACE INTO cache_values(key, value, expires, event) "
                                       "VALUES(?1, ?2, ?3, ?4)") == 0 &&
         sqlite3_exec(s->db, "DELETE FROM cache_values WHERE expires < strftime('%s','now') * 1000",
                      NULL, NULL, NULL) == SQLITE_OK &&
         sqlite3_open_v2(path, &s->rdb, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
         bp_store_busy_handler(s->rdb) == SQLITE_OK;
    if (!ok) {
        sqlite3 *bad = s->rdb && sqlite3_errcode(s->rdb) != SQLITE_OK ? s->rdb : s->db;
        bp_error_set(err, "state store %s: %s", path, bad ? sqlite3_errmsg(bad) : "cannot open");
        bp_store_close(s);
        return NULL;
    }
    chmod(path, 0600);   /* a store made by an older version under a looser umask */
    sqlite3_stmt *hq;
    if (sqlite3_prepare_v2(s->db, "SELECT coalesce(max(id), 0) FROM events", -1, &hq, NULL) == SQLITE_OK) {
        if (sqlite3_step(hq) == SQLITE_ROW) s->high_id = sqlite3_column_int64(hq, 0);
        sqlite3_finalize(hq);
    }
    sqlite3_wal_hook(s->db, on_wal, s);   /* replaces SQLite's own auto-checkpoint */
    if (pthread_create(&s->checkpointer, NULL, upkeep_main, s) == 0) s->has_checkpointer = 1;
    else sqlite3_wal_autocheckpoint(s->db, CHECKPOINT_FRAMES);
    return s;
}

void bp_store_close(bp_store *s)
{
    if (!s) return;
    if (s->has_checkpointer) {
        pthread_mutex_lock(&s->ckpt_mu);
        s->closing = 1;
        pthread_cond_signal(&s->ckpt_cond);
        pthread_mutex_unlock(&s->ckpt_mu);
        pthread_join(s->checkpointer, NULL);
    }
    sqlite3_finalize(s->insert);
    sqlite3_finalize(s->insert_src);
    sqlite3_finalize(s->update);
    sqlite3_finalize(s->pending);
    sqlite3_finalize(s->once_get);
    sqlite3_finalize(s->once_put);
    sqlite3_finalize(s->cache_get);
    sqlite3_finalize(s->cache_put);
    sqlite3_finalize(s->prune);
    sqlite3_close(s->rdb);
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->rmu);
    pthread_mutex_destroy(&s->health_mu);
    pthread_mutex_destroy(&s->ckpt_mu);
    pthread_cond_destroy(&s->ckpt_cond);
    free(s->path);
    free(s->fault_file);
    for (int i = 0; i < 2; i++) free(s->walks[i].cursor);
    free(s);
}

/* The write connection for a table kept in a file of its own (batchstore.c),
 * held (with the write lock) until bp_store_db_release. */
struct sqlite3 *bp_store_db_hold(bp_store *s) { pthread_mutex_lock(&s->mu); return s->db; }
void bp_store_db_release(bp_store *s) { pthread_mutex_unlock(&s->mu); }
/* The read connection, for reads for people that must not wait for a commit. */
struct sqlite3 *bp_store_rdb_hold(bp_store *s) { pthread_mutex_lock(&s->rmu); return s->rdb; }
void bp_store_rdb_release(bp_store *s) { pthread_mutex_unlock(&s->rmu); }

/* ---- transactions and health --------------------------------------------------- */

static void record_failure(bp_store *s, const char *what)
{
    pthread_mutex_lock(&s->health_mu);
    s->failing = 1;
    s->failures++;
    snprintf(s->last_error, sizeof s->last_error, "%s", what);
    pthread_mutex_unlock(&s->health_mu);
}

static void record_success(bp_store *s)
{
    pthread_mutex_lock(&s->health_mu);
    s->failing = 0;
    pthread_mutex_unlock(&s->health_mu);
}

int bp_store_begin(bp_store *s)
{
    pthread_mutex_lock(&s->mu);
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        char why[200];
        snprintf(why, sizeof why, "begin: %s", sqlite3_errmsg(s->db));
        record_failure(s, why);
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    return 0;
}

/* Commit (or, when `ok` is 0 because a write inside failed, roll back) and
 * release the write connection.  Returns 0 when the transaction is durable. */
int bp_store_commit(bp_store *s, int ok)
{
    char why[256] = "";
    if (!ok) snprintf(why, sizeof why, "write: %s", sqlite3_errmsg(s->db));
    else if (s->fault_file && access(s->fault_file, F_OK) == 0)
        snprintf(why, sizeof why, "commit: injected fault (%s exists)", s->fault_file);
    else if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        snprintf(why, sizeof why, "commit: %s", sqlite3_errmsg(s->db));
    if (why[0]) {
        if (!sqlite3_get_autocommit(s->db)) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        record_failure(s, why);
    } else {
        record_success(s);
    }
    pthread_mutex_unlock(&s->mu);
    return why[0] ? -1 : 0;
}

/* Give up a transaction on purpose (not a failure). */
void bp_store_rollback(bp_store *s)
{
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    pthread_mutex_unlock(&s->mu);
}

void bp_store_health(bp_store *s, bp_store_status *out)
{
    pthread_mutex_lock(&s->health_mu);
    out->failing = s->failing;
    out->failures = s->failures;
    snprintf(out->last_error, sizeof out->last_error, "%s", s->last_error);
    pthread_mutex_unlock(&s->health_mu);
    out->pruned = atomic_load_explicit(&s->pruned, memory_order_relaxed);
    out->bytes = 0;
    char wal[BP_PATH_MAX];
    snprintf(wal, sizeof wal, "%s-wal", s->path);
    struct stat st;
    if (stat(s->path, &st) == 0) out->bytes += (int64_t)st.st_size;
    if (stat(wal, &st) == 0) out->bytes += (int64_t)st.st_size;
}

/* ---- writes (inside bp_store_begin … bp_store_commit) ------------------------------- */

int64_t bp_store_add(bp_store *s, const char *integration, const char *json, size_t len, long idx,
                     const char *message_id, int64_t now)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *q = s->insert;
    sqlite3_reset(q);
    sqlite3_bind_text(q, 1, json, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, idx);
    sqlite3_bind_int64(q, 3, now);
    if (message_id) sqlite3_bind_text(q, 4, message_id, -1, SQLITE_STATIC);
    else sqlite3_bind_null(q, 4);
    sqlite3_bind_text(q, 5, integration, -1, SQLITE_STATIC);
    sqlite3_bind_int64(q, 11, s->high_id);
    int64_t id = -1;
    if (sqlite3_step(q) == SQLITE_DONE)
        id = sqlite3_changes(s->db) == 0 ? 0 : sqlite3_last_insert_rowid(s->db);   /* 0: a message id already stored */
    if (id > s->high_id) s->high_id = id;
    pthread_mutex_unlock(&s->mu);
    return id;
}

/* An event read from a Kafka partition (cluster mode): 0 when it is stored
 * already (by this node, or as another node's outcome) or its message id is. */
int64_t bp_store_add_from(bp_store *s, const char *integration, const char *json, size_t len, const char *message_id,
                          const bp_source *src, int64_t now)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *q = s->insert_src;
    sqlite3_reset(q);
    sqlite3_bind_text(q, 1, json, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, src->index);
    sqlite3_bind_int64(q, 3, now);
    if (message_id) sqlite3_bind_text(q, 4, message_id, -1, SQLITE_STATIC);
    else sqlite3_bind_null(q, 4);
    sqlite3_bind_text(q, 5, integration, -1, SQLITE_STATIC);
    sqlite3_bind_text(q, 6, src->topic, -1, SQLITE_STATIC);
    sqlite3_bind_int(q, 7, src->partition);
    sqlite3_bind_int64(q, 8, src->offset);
    sqlite3_bind_int(q, 9, src->index);
    sqlite3_bind_int64(q, 10, src->slot);
    sqlite3_bind_int64(q, 11, s->high_id);
    int64_t id = -1;
    if (sqlite3_step(q) == SQLITE_DONE) id = sqlite3_changes(s->db) == 0 ? 0 : sqlite3_last_insert_rowid(s->db);
    if (id > s->high_id) s->high_id = id;
    pthread_mutex_unlock(&s->mu);
    return id;
}

/* Another node's final outcome for an event (cluster mode): stored, or
 * written over this node's row of the same event, so that Live Events and
 * dead letters show the whole cluster and a node that takes the partition
 * over later does not deliver it again. */
int bp_store_record(bp_store *s, const char *integration, const bp_source *src, const bp_store_row *r)
{
    sqlite3_stmt *q;
    int ok = 0;
    pthread_mutex_lock(&s->mu);
    if (sqlite3_prepare_v2(s->db, "INSERT INTO events(id, integration, state, body, message_id, idx, attempts, last_status, "
                                  "reason, response, outcome, created_at, updated_at, ktopic, kpart, koff, kidx, batch) "
                                  "VALUES(" NEXT_ID("?16") ", ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, "
                                  "?13, ?14, ?5, ?15) "
                                  "ON CONFLICT(ktopic, kpart, koff, kidx) WHERE ktopic IS NOT NULL DO UPDATE SET "
                                  "state=excluded.state, attempts=excluded.attempts, last_status=excluded.last_status, "
                                  "reason=excluded.reason, response=excluded.response, outcome=excluded.outcome, "
                                  "updated_at=excluded.updated_at, batch=excluded.batch", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, integration, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, r->state, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, r->body ? r->body : "null", -1, SQLITE_STATIC);
        if (r->message_id) sqlite3_bind_text(q, 4, r->message_id, -1, SQLITE_STATIC); else sqlite3_bind_null(q, 4);
        sqlite3_bind_int(q, 5, src->index);
        sqlite3_bind_int(q, 6, r->attempts);
        if (r->last_status) sqlite3_bind_int(q, 7, r->last_status); else sqlite3_bind_null(q, 7);
        const char *texts[] = { r->reason, r->response, r->outcome };
        for (int i = 0; i < 3; i++)
            if (texts[i]) sqlite3_bind_text(q, 8 + i, texts[i], -1, SQLITE_STATIC); else sqlite3_bind_null(q, 8 + i);
        sqlite3_bind_int64(q, 11, r->updated_at);
        sqlite3_bind_text(q, 12, src->topic, -1, SQLITE_STATIC);
        sqlite3_bind_int(q, 13, src->partition);
        sqlite3_bind_int64(q, 14, src->offset);
        if (r->batch > 0) sqlite3_bind_int64(q, 15, r->batch); else sqlite3_bind_null(q, 15);
        sqlite3_bind_int64(q, 16, s->high_id);
        int rc = sqlite3_step(q);
        /* an update (the row was there) leaves the last insert's id: no higher than high_id */
        if (rc == SQLITE_DONE && sqlite3_last_insert_rowid(s->db) > s->high_id) s->high_id = sqlite3_last_insert_rowid(s->db);
        /* the message id is known here under another source (a resent
         * event): that row tells the story already */
        ok = rc == SQLITE_DONE || rc == SQLITE_CONSTRAINT;
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->mu);
    return ok ? 0 : -1;
}

/* Text is bound SQLITE_STATIC (no copy): every statement here binds all
 * its parameters afresh before each step, and the strings outlive the step. */
int bp_store_update(bp_store *s, const bp_stored *e, const char *state, int last_status, const char *reason,
                    const char *response, const char *outcome, int64_t batch, int64_t now)
{
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *u = s->update;
    sqlite3_reset(u);
    sqlite3_bind_int64(u, 1, e->id);
    sqlite3_bind_text(u, 2, state, -1, SQLITE_STATIC);
    sqlite3_bind_int(u, 3, e->attempts);
    sqlite3_bind_int(u, 4, e->failures);
    sqlite3_bind_int(u, 5, e->done_requests);
    sqlite3_bind_int64(u, 6, e->next_at);
    if (last_status) sqlite3_bind_int(u, 7, last_status); else sqlite3_bind_null(u, 7);
    if (reason) sqlite3_bind_text(u, 8, reason, -1, SQLITE_STATIC); else sqlite3_bind_null(u, 8);
    if (response) sqlite3_bind_text(u, 9, response, -1, SQLITE_STATIC); else sqlite3_bind_null(u, 9);
    if (outcome) sqlite3_bind_text(u, 10, outcome, -1, SQLITE_STATIC); else sqlite3_bind_null(u, 10);
    sqlite3_bind_int64(u, 11, now);
    if (e->steps_len) sqlite3_bind_text(u, 12, e->steps, (int)e->steps_len, SQLITE_STATIC); else sqlite3_bind_null(u, 12);
    if (batch > 0) sqlite3_bind_int64(u, 13, batch); else sqlite3_bind_null(u, 13);
    int rc = sqlite3_step(u) == SQLITE_DONE ? 0 : -1;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int bp_store_once_mark(bp_store *s, const char *integration, const char *key, int64_t now)
{
    char buf[1024];
    pthread_mutex_lock(&s->mu);
    sqlite3_reset(s->once_put);
    sqlite3_bind_text(s->once_put, 1, scoped(integration, key, buf, sizeof buf), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s->once_put, 2, now);
    int rc = sqlite3_step(s->once_put) == SQLITE_DONE ? 0 : -1;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* "ACCOUNT\nKEY": cache values are an account's, whichever integration set them. */
static void cache_key(bp_buf *b, const char *account, const char *key)
{
    bp_buf_adds(b, account);
    bp_buf_addc(b, '\n');
    bp_buf_adds(b, key);
}

int bp_store_cache_put(bp_store *s, const char *account, const char *key, const char *json, size_t len,
                       int64_t expires_ms, int64_t event)
{
    bp_buf k;
    bp_buf_init(&k);
    cache_key(&k, account, key);
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *q = s->cache_put;
    sqlite3_reset(q);
    sqlite3_bind_text(q, 1, k.data, (int)k.len, SQLITE_STATIC);
    sqlite3_bind_text(q, 2, json, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(q, 3, expires_ms);
    if (event) sqlite3_bind_int64(q, 4, event); else sqlite3_bind_null(q, 4);
    int rc = sqlite3_step(q) == SQLITE_DONE ? 0 : -1;
    sqlite3_reset(q);
    pthread_mutex_unlock(&s->mu);
    bp_buf_free(&k);
    return rc;
}

int bp_store_cache_get(bp_store *s, const char *account, const char *key, int64_t now_ms, bp_buf *out,
                       int64_t *expires_ms)
{
    bp_buf k;
    bp_buf_init(&k);
    cache_key(&k, account, key);
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *q = s->cache_get;
    sqlite3_reset(q);
    sqlite3_bind_text(q, 1, k.data, (int)k.len, SQLITE_STATIC);
    sqlite3_bind_int64(q, 2, now_ms);
    int hit = sqlite3_step(q) == SQLITE_ROW;
    if (hit) {
        bp_buf_add(out, (const char *)sqlite3_column_text(q, 0), (size_t)sqlite3_column_bytes(q, 0));
        *expires_ms = sqlite3_column_int64(q, 1);
    }
    sqlite3_reset(q);
    pthread_mutex_unlock(&s->mu);
    bp_buf_free(&k);
    return hit;
}

/* ---- reads made by delivery (write connection: they see its own commits) ----------------- */

int bp_store_pending(bp_store *s, const char *integration, int64_t after_id, int limit, bp_stored **out, size_t *n)
{
    *n = 0;
    *out = bp_calloc((size_t)limit + 1, sizeof **out);
    pthread_mutex_lock(&s->mu);
    sqlite3_stmt *q = s->pending;
    sqlite3_reset(q);
    sqlite3_bind_int64(q, 1, after_id);
    sqlite3_bind_int(q, 2, limit);
    sqlite3_bind_text(q, 3, integration, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        bp_stored *e = &(*out)[(*n)++];
        e->id = sqlite3_column_int64(q, 0);
        e->body = bp_strdup((const char *)sqlite3_column_text(q, 1));
        e->body_len = (size_t)sqlite3_column_bytes(q, 1);
        e->attempts = sqlite3_column_int(q, 2);
        e->failures = sqlite3_column_int(q, 3);
        e->done_requests = sqlite3_column_int(q, 4);
        e->next_at = sqlite3_column_int64(q, 5);
        e->idx = (long)sqlite3_column_int64(q, 6);
        e->ksrc = sqlite3_column_int64(q, 7);
        e->koff = sqlite3_column_int64(q, 8);
        if (sqlite3_column_type(q, 9) == SQLITE_TEXT) {
            e->steps = bp_strdup((const char *)sqlite3_column_text(q, 9));
            e->steps_len = (size_t)sqlite3_column_bytes(q, 9);
        }
    }
    sqlite3_reset(q);
    pthread_mutex_unlock(&s->mu);
    return rc == SQLITE_DONE ? 0 : -1;
}

int bp_store_once_seen(bp_store *s, const char *integration, const char *key, int64_t since)
{
    char buf[1024];
    pthread_mutex_lock(&s->mu);
    sqlite3_reset(s->once_get);
    sqlite3_bind_text(s->once_get, 1, scoped(integration, key, buf, sizeof buf), -1, SQLITE_STATIC);
    int seen = sqlite3_step(s->once_get) == SQLITE_ROW && sqlite3_column_int64(s->once_get, 0) >= since;
    sqlite3_reset(s->once_get);
    pthread_mutex_unlock(&s->mu);
    return seen;
}

/* ---- small statements made once in a while ------------------------------------------------ */

/* Run one statement with text parameters (NULL binds SQL NULL) on the write
 * connection; returns the number of rows changed, -1 on error. */
long bp_store_exec(bp_store *s, const char *sql, int n, const char *const *args)
{
    sqlite3_stmt *q;
    long changed = -1;
    pthread_mutex_lock(&s->mu);
    if (sqlite3_prepare_v2(s->db, sql, -1, &q, NULL) == SQLITE_OK) {
        for (int i = 0; i < n; i++)
            if (args[i]) sqlite3_bind_text(q, i + 1, args[i], -1, SQLITE_STATIC);
            else sqlite3_bind_null(q, i + 1);
        if (sqlite3_step(q) == SQLITE_DONE) changed = (long)sqlite3_changes(s->db);
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->mu);
    return changed;
}

char *bp_store_meta_get(bp_store *s, const char *integration, const char *key)
{
    char buf[1024];
    sqlite3_stmt *q;
    char *v = NULL;
    pthread_mutex_lock(&s->mu);
    if (sqlite3_prepare_v2(s->db, "SELECT value FROM meta WHERE key=?1", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, scoped(integration, key, buf, sizeof buf), -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW && sqlite3_column_text(q, 0)) v = bp_strdup((const char *)sqlite3_column_text(q, 0));
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->mu);
    return v;
}

int bp_store_meta_set(bp_store *s, const char *integration, const char *key, const char *value)
{
    char buf[1024];
    const char *args[] = { scoped(integration, key, buf, sizeof buf), value };
    return bp_store_exec(s, "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)", 2, args) < 0 ? -1 : 0;
}

/* Move events of an integration between states; returns how many moved,
 * -1 on error.  id 0 = all events in `from`. */
long bp_store_move(bp_store *s, const char *integration, const char *from, const char *to, int64_t id)
{
    char idtext[32];
    snprintf(idtext, sizeof idtext, "%lld", (long long)id);
    const char *args[] = { integration, from, to, idtext };
    return bp_store_exec(s, id ? "UPDATE events SET state=?3, failures=0, next_at=0 WHERE integration=?1 AND state=?2 AND id=?4"
                            : "UPDATE events SET state=?3, failures=0, next_at=0 WHERE integration=?1 AND state=?2",
                      id ? 4 : 3, args);
}

/* Forget an integration: its events, once-keys and meta.  Returns -1 on error. */
int bp_store_purge(bp_store *s, const char *integration)
{
    char prefix[200];
    snprintf(prefix, sizeof prefix, "%s\x1f", integration);
    const char *args[] = { integration, prefix };
    if (bp_store_begin(s) < 0) return -1;
    int ok = bp_store_exec(s, "DELETE FROM events WHERE integration=?1", 1, args) >= 0 &&
             bp_store_exec(s, "DELETE FROM once_keys WHERE substr(key, 1, length(?2)) = ?2", 2, args) >= 0 &&
             bp_store_exec(s, "DELETE FROM meta WHERE substr(key, 1, length(?2)) = ?2", 2, args) >= 0;
    return bp_store_commit(s, ok);
}

/* Forget the unfinished events read from partition slot `slot` (0: from
 * any partition): the partition went to another node, which reads them
 * again from the last committed offset. */
long bp_store_release_slot(bp_store *s, int64_t slot)
{
    char text[32];
    snprintf(text, sizeof text, "%lld", (long long)slot);
    const char *args[] = { text };
    return slot ? bp_store_exec(s, "DELETE FROM events WHERE ksrc=?1 AND state IN ('pending', 'held')", 1, args)
                : bp_store_exec(s, "DELETE FROM events WHERE ksrc IS NOT NULL AND state IN ('pending', 'held')", 0, args);
}

/* For each partition slot with unfinished events: the lowest offset among
 * them and how many there are (the read connection: committed state). */
int bp_store_slot_progress(bp_store *s, void (*fn)(void *ctx, int64_t slot, int64_t min_offset, long n), void *ctx)
{
    sqlite3_stmt *q;
    pthread_mutex_lock(&s->rmu);
    int rc = sqlite3_prepare_v2(s->rdb, "SELECT ksrc, min(koff), count(*) FROM events WHERE ksrc IS NOT NULL AND "
                                        "state IN ('pending', 'held') GROUP BY ksrc", -1, &q, NULL) == SQLITE_OK ? 0 : -1;
    if (rc == 0) {
        while (sqlite3_step(q) == SQLITE_ROW)
            fn(ctx, sqlite3_column_int64(q, 0), sqlite3_column_int64(q, 1), (long)sqlite3_column_int64(q, 2));
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->rmu);
    return rc;
}

/* Integrations with events read from Kafka still pending after `before`
 * (ms): candidates for "no such integration" (cluster.c). */
int bp_store_waiting_integrations(bp_store *s, int64_t before, void (*fn)(void *ctx, const char *integration), void *ctx)
{
    sqlite3_stmt *q;
    pthread_mutex_lock(&s->rmu);
    int rc = sqlite3_prepare_v2(s->rdb, "SELECT DISTINCT integration FROM events WHERE ksrc IS NOT NULL AND "
                                        "state='pending' AND created_at < ?1", -1, &q, NULL) == SQLITE_OK ? 0 : -1;
    if (rc == 0) {
        sqlite3_bind_int64(q, 1, before);
        while (sqlite3_step(q) == SQLITE_ROW) fn(ctx, (const char *)sqlite3_column_text(q, 0));
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->rmu);
    return rc;
}

/* End an integration's events read from Kafka with `state` and `reason`. */
long bp_store_end_sourced(bp_store *s, const char *integration, const char *state, const char *reason)
{
    const char *args[] = { integration, state, reason };
    return bp_store_exec(s, "UPDATE events SET state=?2, reason=?3, outcome=json_object('outcome', ?2, 'reason', ?3), batch=NULL "
                         "WHERE integration=?1 AND ksrc IS NOT NULL AND state='pending'", 3, args);
}

/* ---- reads for people (the read connection) ------------------------------------------------- */

#define ROW_COLUMNS "id, message_id, attempts, last_status, reason, response, outcome, updated_at, body, state, " \
                    "ktopic, kpart, koff, kidx, batch"

/* Step through q, handing each row (ROW_COLUMNS, in that order) to fn. */
static void each_row(sqlite3_stmt *q, bp_store_row_fn fn, void *ctx)
{
    while (sqlite3_step(q) == SQLITE_ROW) {
        bp_store_row r = {
            sqlite3_column_int64(q, 0), (const char *)sqlite3_column_text(q, 1), sqlite3_column_int(q, 2),
            sqlite3_column_int(q, 3), (const char *)sqlite3_column_text(q, 4), (const char *)sqlite3_column_text(q, 5),
            (const char *)sqlite3_column_text(q, 6), sqlite3_column_int64(q, 7), (const char *)sqlite3_column_text(q, 8),
            (const char *)sqlite3_column_text(q, 9), (const char *)sqlite3_column_text(q, 10),
            sqlite3_column_int(q, 11), sqlite3_column_int64(q, 12), sqlite3_column_int(q, 13),
            sqlite3_column_int64(q, 14),
        };
        fn(ctx, &r);
    }
    sqlite3_finalize(q);
}

/* Call fn for each event of an integration in `state` (id order). */
int bp_store_each(bp_store *s, const char *integration, const char *state, bp_store_row_fn fn, void *ctx)
{
    sqlite3_stmt *q;
    pthread_mutex_lock(&s->rmu);
    int rc = sqlite3_prepare_v2(s->rdb, "SELECT " ROW_COLUMNS " FROM events WHERE integration=?1 AND state=?2 "
                                "ORDER BY id", -1, &q, NULL) == SQLITE_OK ? 0 : -1;
    if (rc == 0) {
        sqlite3_bind_text(q, 1, integration, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 2, state, -1, SQLITE_STATIC);
        each_row(q, fn, ctx);
    }
    pthread_mutex_unlock(&s->rmu);
    return rc;
}

/* Events in `state`, of one integration or (NULL) of all. */
long bp_store_count(bp_store *s, const char *integration, const char *state)
{
    sqlite3_stmt *q;
    long n = -1;
    pthread_mutex_lock(&s->rmu);
    const char *sql = integration ? "SELECT count(*) FROM events WHERE integration=?2 AND state=?1"
                                  : "SELECT count(*) FROM events WHERE state=?1";
    if (sqlite3_prepare_v2(s->rdb, sql, -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, state, -1, SQLITE_STATIC);
        if (integration) sqlite3_bind_text(q, 2, integration, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) n = (long)sqlite3_column_int64(q, 0);
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->rmu);
    return n;
}

int64_t bp_store_oldest(bp_store *s, const char *integration)
{
    sqlite3_stmt *q;
    int64_t at = 0;
    pthread_mutex_lock(&s->rmu);
    const char *sql = integration ? "SELECT created_at FROM events WHERE integration=?1 ORDER BY id LIMIT 1"
                                  : "SELECT created_at FROM events ORDER BY id LIMIT 1";
    if (sqlite3_prepare_v2(s->rdb, sql, -1, &q, NULL) == SQLITE_OK) {
        if (integration) sqlite3_bind_text(q, 1, integration, -1, SQLITE_STATIC);
        if (sqlite3_step(q) == SQLITE_ROW) at = sqlite3_column_int64(q, 0);
        sqlite3_finalize(q);
    }
    pthread_mutex_unlock(&s->rmu);
    return at;
}

/* The latest events of an integration that have an outcome line (final,
 * or waiting for a retry), newest first, optionally only in one state and
 * (batch > 0) only those that went in that batch. */
int bp_store_recent(bp_store *s, const char *integration, const char *state, int64_t batch, int limit,
                    bp_store_row_fn fn, void *ctx)
{
    static const char *const sqls[2][2] = {
        { "SELECT " ROW_COLUMNS " FROM events WHERE integration=?3 AND outcome IS NOT NULL ORDER BY id DESC LIMIT ?1",
          "SELECT " ROW_COLUMNS " FROM events WHERE integration=?3 AND state=?2 AND outcome IS NOT NULL "
          "ORDER BY id DESC LIMIT ?1" },
        /* the same terms as events_by_batch's WHERE, so that it is used */
        { "SELECT " ROW_COLUMNS " FROM events WHERE integration=?3 AND batch IS NOT NULL AND batch=?4 "
          "AND outcome IS NOT NULL ORDER BY id DESC LIMIT ?1",
          "SELECT " ROW_COLUMNS " FROM events WHERE integration=?3 AND batch IS NOT NULL AND batch=?4 AND state=?2 "
          "AND outcome IS NOT NULL ORDER BY id DESC LIMIT ?1" },
    };
    sqlite3_stmt *q;
    pthread_mutex_lock(&s->rmu);
    int rc = sqlite3_prepare_v2(s->rdb, sqls[batch > 0][state != NULL], -1, &q, NULL) == SQLITE_OK ? 0 : -1;
    if (rc == 0) {
        sqlite3_bind_int(q, 1, limit);
        if (state) sqlite3_bind_text(q, 2, state, -1, SQLITE_STATIC);
        sqlite3_bind_text(q, 3, integration, -1, SQLITE_STATIC);
        if (batch > 0) sqlite3_bind_int64(q, 4, batch);
        each_row(q, fn, ctx);
    }
    pthread_mutex_unlock(&s->rmu);
    return rc;
}
