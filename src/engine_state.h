/*
 * engine_state.h — the engine's state, shared by engine.c (one event: route,
 * consent, mapping, result), steps.c (ctx.send and ctx.cache within a run)
 * and batch.c (a batch mapping's run) and by nothing else: they work on the
 * same run of a mapping.
 */
#ifndef BP_ENGINE_STATE_H
#define BP_ENGINE_STATE_H

#include "internal.h"

struct bp_engine {
    const bp_blueprint *bp;
    const bp_config *cfg;
    bp_sandbox *sb;
    lua_State *L;
    int *route_refs;        /* registry refs of the compiled mappings */
    int custom_ref;
    int denied_ref;         /* consent_denied's mapping, or LUA_NOREF */
    int verify_ref;         /* verify's mapping, or LUA_NOREF */
    int batch_ref;          /* batch's mapping (batch.c), or LUA_NOREF */
    bp_doc denied_doc;      /* the event cut down for it */
    int ctx_ref;            /* the real ctx table (the core writes per-event fields) */
    int ctx_proxy_ref;      /* what mappings receive: read-only */
    bp_doc doc;
    bp_json_limits json_limits;
    long seq;               /* events run by bp_engine_run: the dry-run index */
    int in_run_as;          /* bp_engine_run_as: a delivery loop, no index to tell */
    bp_outcome *out;        /* the event running, for its log lines */
    bp_buf *log_to;         /* the CLI's lines go here instead of stderr (bp_engine_log_to) */
    /* steps (ctx.send) and ctx.cache */
    bp_cache *cache, *own_cache;    /* the delivery pool's, or the engine's own (made on first use) */
    char own_account[300];          /* the account of e->cfg (bp_engine_run) */
    const char *account;            /* the account of the config running */
    bp_doc jdoc;                    /* the journal given for the next run, parsed */
    const char *jtext; size_t jlen;
    size_t jnext;                   /* journal entries this run has gone past */
    uint64_t owner;                 /* who claims shared answers (a delivery job) */
    bp_doc adoc;                    /* a step's answer, parsed for r.json */
    bp_answer_fn answerer; void *answerer_ud;
    size_t nsteps;                  /* steps reached in this run */
    int stopped;                    /* the run stopped at a step (pending or waiting) */
    struct cache_write { char *key, *json; double ttl; int durable; } *writes;   /* ctx.cache.set, applied when the run completes */
    size_t nwrites, capwrites;
    size_t write_bytes;         /* held by this run's writes: at most the memory cap */
};

/* steps.c: ctx.send and ctx.cache on the ctx table at the top of the stack. */
void bp_steps_add(lua_State *L, bp_engine *e);
/* A completed run's ctx.cache.set values go to the cache (apply), a stopped
 * or failed run's are forgotten. */
void bp_steps_end_writes(bp_engine *e, int apply);
/* Free what the steps hold (pending writes) when the engine is freed. */
void bp_steps_free(bp_engine *e);

/* engine.c: a run's print and ctx.log lines go to e->out (on) or nowhere;
 * the completed run's lines are written (emit). */
void bp_engine_log_hook(bp_engine *e, int on);
void bp_engine_emit_logs(bp_engine *e, const bp_outcome *o);

#endif
