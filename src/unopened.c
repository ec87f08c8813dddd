/*
 * unopened.c — the configuration records this node could not open: an
 * integration whose stored or shared config names a blueprint this node
 * does not have, or whose secrets do not decrypt with this node's key ring.
 * Such an integration is not delivered here; rather than let it look as if
 * it did not exist (intake 404, /healthz 200), the registry notes it here
 * with the reason, /healthz reports the node not ready and names it, and
 * requests for it answer 503 with what to do.  A record that opens later
 * (a fixed record, a deletion) takes it off the list.
 *
 * Its own lock: the registry notes and clears under its admin lock, the
 * HTTP threads read at any time.
 */
#include "service.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct unopened_item { char *id, *reason, *message; } unopened_item;

struct bp_unopened {
    pthread_mutex_t mu;
    unopened_item *items; size_t n;   /* [mu] */
};

bp_unopened *bp_unopened_new(void)
{
    bp_unopened *u = bp_calloc(1, sizeof *u);
    pthread_mutex_init(&u->mu, NULL);
    return u;
}

static void free_item(unopened_item *x)
{
    free(x->id);
    free(x->reason);
    free(x->message);
}

void bp_unopened_free(bp_unopened *u)
{
    if (!u) return;
    for (size_t i = 0; i < u->n; i++) free_item(&u->items[i]);
    free(u->items);
    pthread_mutex_destroy(&u->mu);
    free(u);
}

/* Index of id, or n (mu held). */
static size_t find(const bp_unopened *u, const char *id)
{
    size_t i = 0;
    while (i < u->n && strcmp(u->items[i].id, id) != 0) i++;
    return i;
}

void bp_unopened_note(bp_unopened *u, const char *id, enum bp_unopened_reason why, const char *vendor)
{
    bp_buf msg;
    bp_buf_init(&msg);
    if (why == BP_UNOPENED_KEYS)
        bp_buf_adds(&msg, "this node cannot decrypt the integration's secrets: start it with the key file they were "
                          "sealed with (--master-key-file, or BLUEPRINT_MASTER_KEY_FILE; in a cluster the same on every "
                          "node), or delete and install the integration again if a stored value was damaged");
    else
        bp_buf_printf(&msg, "this node has no blueprint for the integration's vendor '%s': add the blueprint's folder "
                            "to the blueprints directory and restart the node", vendor ? vendor : "?");
    pthread_mutex_lock(&u->mu);
    size_t i = find(u, id);
    if (i == u->n) {
        u->items = bp_realloc(u->items, (u->n + 1) * sizeof *u->items);
        u->items[u->n++] = (unopened_item){ bp_strdup(id), NULL, NULL };
    }
    free(u->items[i].reason);
    free(u->items[i].message);
    u->items[i].reason = bp_strdup(why == BP_UNOPENED_KEYS ? "secrets_do_not_decrypt" : "blueprint_missing");
    u->items[i].message = bp_strdup(msg.data);
    pthread_mutex_unlock(&u->mu);
    bp_buf_free(&msg);
}

void bp_unopened_clear(bp_unopened *u, const char *id)
{
    pthread_mutex_lock(&u->mu);
    size_t i = find(u, id);
    if (i < u->n) {
        free_item(&u->items[i]);
        memmove(&u->items[i], &u->items[i + 1], (u->n - i - 1) * sizeof *u->items);
        u->n--;
    }
    pthread_mutex_unlock(&u->mu);
}

int bp_unopened_message(bp_unopened *u, const char *id, bp_buf *message)
{
    pthread_mutex_lock(&u->mu);
    size_t i = find(u, id);
    int listed = i < u->n;
    if (listed) bp_buf_adds(message, u->items[i].message);
    pthread_mutex_unlock(&u->mu);
    return listed;
}

size_t bp_unopened_json(bp_unopened *u, bp_buf *out)
{
    pthread_mutex_lock(&u->mu);
    size_t n = u->n;
    bp_buf_addc(out, '[');
    for (size_t i = 0; i < n; i++) {
        unopened_item *x = &u->items[i];
        bp_buf_adds(out, i ? ",{\"integration\":" : "{\"integration\":");
        bp_json_write_string(out, x->id, strlen(x->id));
        bp_buf_adds(out, ",\"reason\":");
        bp_json_write_string(out, x->reason, strlen(x->reason));
        bp_buf_adds(out, ",\"message\":");
        bp_json_write_string(out, x->message, strlen(x->message));
        bp_buf_addc(out, '}');
    }
    bp_buf_addc(out, ']');
    pthread_mutex_unlock(&u->mu);
    return n;
}
