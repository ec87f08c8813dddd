/*
 * cluster.h — what the files of cluster mode share, and nobody else: the
 * cluster's struct, its partition slots, and the functions one of its
 * files offers the others.  The doors run one way: cluster.c (life cycle,
 * producing, the registry's hooks) uses clusterconsumer.c (delivery
 * topics) and clusterview.c (the whole cluster's configuration and
 * outcomes), which use clusterslots.c and kafkaconf.c (settings, logs,
 * health, topics).
 */
#ifndef BP_CLUSTER_H
#define BP_CLUSTER_H

#include "service.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>

#define SLOT_CHUNK 1024
#define SLOT_CHUNKS 16384        /* 16M partition ownerships per process */
#define EPOCHS 64
#define MAX_UNFINISHED 100000    /* events a node holds for one partition before it stops reading it */
#define BATCH 500
#define MAX_VIEW_PARTS 1024
#define CATCHUP_WAIT_MS 15000
#define SYNC_TIMEOUT_MS 5000     /* intake and config writes: 503 after this */
#define SESSIONS_RETENTION_MS "32400000"   /* 9 h: longer than any token a record spends (8 h sessions) */

typedef struct slot {
    char *topic;
    int partition;
    _Atomic int owned;           /* this node may deliver its events */
    _Atomic long inflight;       /* requests in flight */
    int64_t next_offset;         /* [mu] last read + 1, -1 before any */
    int64_t committed;           /* [mu] last committed, -1 before any */
    int paused;                  /* consumer thread: too many unfinished */
} slot;

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    rd_kafka_resp_err_t err;
    int32_t partition;           /* where the broker put the message */
    int64_t offset;
    int maybe_written;           /* failed, yet the brokers may have written it */
} waiter;

/* A record read while the node catches up with the configuration topic:
 * only the newest of each key is applied, once it has caught up. */
typedef struct held_record {
    char *key, *value;
    size_t key_len, len;
} held_record;

typedef struct held_list {
    held_record *v;
    size_t n;
} held_list;

/* A line of --kafka-config: librdkafka's own property, for every client. */
typedef struct kafka_setting {
    char *key, *value;
    int line;
} kafka_setting;

struct bp_cluster {
    bp_registry *reg;
    bp_store *store;             /* the registry's (this node's events.db) */
    char *brokers, *name, *node;
    char *settings_file;         /* --kafka-config, or NULL */
    kafka_setting *settings; size_t nsettings;
    int per_vendor, session_timeout_ms;
    char t_config[256], t_outcomes[256], t_dead[256], t_sessions[256];
    rd_kafka_t *producer, *consumer, *viewer;
    pthread_t poller_thread, consumer_thread, viewer_thread;
    int threads_started;
    _Atomic int stopping;
    pthread_mutex_t mu;          /* slots table growth, assigned, health, view positions, counters */
    slot *_Atomic chunks[SLOT_CHUNKS];   /* chunks never move: slot pointers stay valid */
    _Atomic int64_t nslots;
    int64_t epoch_base;
    int64_t *assigned; size_t nassigned, capassigned;   /* [mu] slot ids owned */
    int brokers_up;              /* [mu] */
    char last_error[256];        /* [mu] */
    int nview;                   /* [mu] outcomes partitions */
    int64_t view_pos[MAX_VIEW_PARTS];   /* [mu] next outcomes offset applied, per partition */
    int config_parts;
    int64_t config_end[MAX_VIEW_PARTS]; /* config topic end at start (catch-up before serving) */
    int64_t config_pos[MAX_VIEW_PARTS]; /* [mu] (written by the viewer only) */
    held_list held_blueprints, held_configs;   /* viewer: records kept while catching up */
    int sessions_parts;
    int64_t sessions_end[MAX_VIEW_PARTS];   /* NAME.sessions' end at start (catch-up before serving) */
    int64_t sessions_pos[MAX_VIEW_PARTS];   /* [mu] next NAME.sessions offset applied */
    pthread_cond_t applied;      /* [mu] broadcast when sessions_pos moves */
    bp_jti_set *won;             /* the claim ids (nonces) that were the first record of their jti */
    _Atomic int topics_changed;  /* integrations came or went: subscribe again */
    char **topics; size_t ntopics;   /* consumer thread: the delivery topics subscribed */
    int can_create;              /* the brokers take CreateTopics (the mock cluster does not) */
    int partitions;              /* for the topics this service creates */
    rd_kafka_queue_t *admin_q;   /* CreateTopics results, read by the poller */
    _Atomic unsigned epoch;      /* outcomes produced now count here */
    _Atomic long outstanding[EPOCHS];
    _Atomic long bad_messages, duplicates, produce_failures, rebalances, commits;
    struct cluster_paces *paces; /* consumer thread: shared accounts' partition counts (clusterpace.c) */
    int paces_stale;             /* consumer thread: the assignment changed */
};

/* kafkaconf.c */
void cluster_log_kafka(const char *level, const char *msg, const char *topic, int partition, const char *detail);
int cluster_stopping(bp_cluster *c);
void cluster_set_health(bp_cluster *c, int up, const char *why);
/* Kafka topic names: [A-Za-z0-9._-], at most 249 characters. */
void cluster_topic_name(char *out, size_t n, const char *prefix, const char *what);
int cluster_set_conf(rd_kafka_conf_t *conf, const char *k, const char *v, bp_error *err);
int cluster_read_settings(bp_cluster *c, const char *path, bp_error *err);
/* A client's configuration: the brokers, this node, --kafka-config. */
rd_kafka_conf_t *cluster_base_conf(bp_cluster *c, bp_error *err);
int cluster_create_topics(bp_cluster *c, const char *const *names, int n, int wait_ms);
void cluster_read_admin_answers(bp_cluster *c);

/* clusterslots.c */
slot *cluster_slot_at(bp_cluster *c, int64_t id);
int64_t cluster_slot_new(bp_cluster *c, const char *topic, int partition);
int64_t cluster_slot_find_locked(bp_cluster *c, const char *topic, int partition);
int64_t cluster_slot_find(bp_cluster *c, const char *topic, int partition);
void cluster_lease(bp_cluster *c, bp_lease *out);
void cluster_free_slots(bp_cluster *c);

/* clusterview.c */
int cluster_start_viewer(bp_cluster *c, bp_error *err);
void *cluster_viewer_main(void *arg);
void cluster_save_view_positions(bp_cluster *c);
void cluster_catch_up_outcomes(bp_cluster *c);
void cluster_free_held(held_list *l);

/* clusterpace.c: the part of a shared account's limit this node paces
 * (per_integration mode); now: at once, else at most every 5 s. */
void cluster_share_paces(bp_cluster *c, int now);
void cluster_free_paces(bp_cluster *c);

/* clusterconsumer.c */
int cluster_start_consumer(bp_cluster *c, bp_error *err);
void *cluster_consumer_main(void *arg);

#endif
