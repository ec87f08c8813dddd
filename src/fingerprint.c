/*
 * fingerprint.c — what a blueprint folder is, as two numbers: a cheap
 * signature (names, sizes, modification times) that tells the hot-reload
 * watcher something may have changed, and the revision (names and
 * contents) that says which version runs, in the catalog, Live Events and
 * the editor's history.
 *
 * Both the registry and the delivery loops name versions by their revision,
 * so it lives below both.
 */
#include "service.h"

#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* A cheap fingerprint of a blueprint folder: names, sizes and mtimes. */
uint64_t bp_folder_signature(const char *dir)
{
    uint64_t h = BP_FNV1A_BASIS;   /* any seed would do: compared only with itself */
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[BP_PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        uint64_t v = (uint64_t)st.st_mtim.tv_sec * 1000000007ULL + (uint64_t)st.st_mtim.tv_nsec +
                     (uint64_t)st.st_size * 31ULL;
        for (const char *p = e->d_name; *p; p++) v = v * 131 + (unsigned char)*p;
        h ^= v;   /* order-independent: readdir order may change */
    }
    closedir(d);
    return h;
}

/* The revision: the files hot reload watches (bp_folder_signature's), by
 * name and contents, FNV-1a each, mixed and summed so that readdir's order
 * does not matter (recorded in server.db: BP_FNV1A_BASIS says why it must
 * not change).  A folder's files and the same files in memory (a cluster
 * record's) give the same revision. */

#define REVISION_SEED 0x9e3779b97f4a7c15ULL

/* One file's share of the sum, from the FNV-1a of its name (ending with
 * its NUL) and contents. */
static uint64_t share(uint64_t h)
{
    h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53ULL; h ^= h >> 33;
    return h;
}

static void revision_text(uint64_t sum, char out[BP_REVISION_LEN])
{
    snprintf(out, BP_REVISION_LEN, "%012llx", (unsigned long long)(sum >> 16));
}

void bp_blueprint_revision(const char *dir, char out[BP_REVISION_LEN])
{
    out[0] = 0;
    DIR *d = opendir(dir);
    if (!d) return;
    uint64_t sum = REVISION_SEED;
    struct dirent *e;
    char chunk[8192];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[BP_PATH_MAX];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        uint64_t h = bp_fnv1a(BP_FNV1A_BASIS, e->d_name, strlen(e->d_name) + 1);
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) h = bp_fnv1a(h, chunk, n);
        fclose(f);
        sum += share(h);
    }
    closedir(d);
    revision_text(sum, out);
}

void bp_files_revision(size_t n, const char *const *names, const char *const *texts, const size_t *lens,
                       char out[BP_REVISION_LEN])
{
    uint64_t sum = REVISION_SEED;
    for (size_t i = 0; i < n; i++)
        sum += share(bp_fnv1a(bp_fnv1a(BP_FNV1A_BASIS, names[i], strlen(names[i]) + 1), texts[i], lens[i]));
    revision_text(sum, out);
}
