/*
 * mock-cluster — a Kafka cluster for tests, in one process, on loopback.
 *
 * librdkafka's mock cluster (rdkafka_mock.h) speaks the Kafka protocol well
 * enough for producers, consumer groups and committed offsets; it is not a
 * real broker (no CreateTopics, no compaction), which the specs keep in mind.
 *
 *   mock-cluster [--brokers N] [--partitions N] [--topic NAME]... [--ready FILE]
 *
 * Prints the bootstrap servers on stdout (and writes them to FILE, for
 * scripts that cannot read a pipe), then runs until SIGTERM/SIGINT.
 * SIGUSR1 takes every broker down ("Broker transport failure" for clients),
 * SIGUSR2 brings them back.  Topics named with --topic are created with
 * --partitions partitions (4 by default, as auto-created ones get).
 */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void set_all(rd_kafka_mock_cluster_t *mc, int n, int up)
{
    for (int b = 1; b <= n; b++) {
        rd_kafka_resp_err_t e = up ? rd_kafka_mock_broker_set_up(mc, b) : rd_kafka_mock_broker_set_down(mc, b);
        if (e) fprintf(stderr, "mock-cluster: broker %d: %s\n", b, rd_kafka_err2str(e));
    }
    fprintf(stderr, "mock-cluster: every broker %s\n", up ? "up" : "down");
}

int main(int argc, char **argv)
{
    int brokers = 3, partitions = 4;
    const char *ready = NULL;
    const char *topics[64];
    int ntopics = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--brokers") && i + 1 < argc) brokers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--partitions") && i + 1 < argc) partitions = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--topic") && i + 1 < argc && ntopics < 64) topics[ntopics++] = argv[++i];
        else if (!strcmp(argv[i], "--ready") && i + 1 < argc) ready = argv[++i];
        else {
            fprintf(stderr, "usage: mock-cluster [--brokers N] [--partitions N] [--topic NAME]... [--ready FILE]\n");
            return 2;
        }
    }
    if (brokers < 1 || partitions < 1) { fprintf(stderr, "mock-cluster: --brokers and --partitions must be >= 1\n"); return 2; }
    /* the signals are taken by sigwait below, on this thread: blocked here,
     * before librdkafka starts its threads (they inherit the mask), so that
     * none of them takes one instead (a signal handled on another thread
     * left pause() asleep: the brokers stayed down) */
    sigset_t wanted;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGTERM);
    sigaddset(&wanted, SIGINT);
    sigaddset(&wanted, SIGUSR1);
    sigaddset(&wanted, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &wanted, NULL);
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* the handle only hosts the mock cluster's threads; it never connects */
    rd_kafka_conf_set(conf, "bootstrap.servers", "", errstr, sizeof errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) { fprintf(stderr, "mock-cluster: %s\n", errstr); return 1; }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) { fprintf(stderr, "mock-cluster: could not start the mock cluster\n"); rd_kafka_destroy(rk); return 1; }
    for (int i = 0; i < ntopics; i++) {
        rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, topics[i], partitions, brokers < 3 ? brokers : 3);
        if (e) fprintf(stderr, "mock-cluster: topic %s: %s\n", topics[i], rd_kafka_err2str(e));
    }
    const char *boot = rd_kafka_mock_cluster_bootstraps(mc);
    printf("%s\n", boot);
    fflush(stdout);
    if (ready) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", ready);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%s\n", boot) < 0 || fclose(f) != 0 || rename(tmp, ready) != 0) {
            fprintf(stderr, "mock-cluster: cannot write %s\n", ready);
            return 1;
        }
    }
    for (;;) {
        int sig = 0;
        if (sigwait(&wanted, &sig) != 0) continue;
        if (sig == SIGUSR1) set_all(mc, brokers, 0);
        else if (sig == SIGUSR2) set_all(mc, brokers, 1);
        else if (sig == SIGTERM || sig == SIGINT) break;
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
