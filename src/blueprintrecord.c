/*
 * blueprintrecord.c — cluster mode's blueprint records: a blueprint folder
 * as one revision of it runs (every top-level file the revision counts),
 * the message with which a save, a rollback or a reload from disk on one
 * node reaches every other node.  They travel in the configuration topic
 * beside the integrations' records, so a node applies a blueprint and the
 * configs validated against it in the order they were made; the key is
 * "blueprint:" and the vendor, so compaction keeps the newest per vendor.
 *
 * Written from a folder; read back with its files checked (plain names, and
 * together they must make the revision the record names); made a folder's
 * files in two steps (every file written beside its place as a dotfile
 * first, which neither the watcher nor the revision counts, then each
 * renamed over its place) so that a failed write leaves the folder as it
 * was.  No state, no locks: reload.c decides when.
 */
#include "service.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_NAME 128

/* A file the record may hold: a plain name at the top of the folder. */
static int plain_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= MAX_NAME || name[0] == '.') return 0;
    for (const char *p = name; *p; p++)
        if (*p == '/' || *p == '\\' || (unsigned char)*p < 0x20) return 0;
    return 1;
}

static int regular_file(const char *dir, const char *name)
{
    char path[BP_PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int bp_blueprint_record_write(const char *vendor, const char *dir, const char *actor, bp_buf *out,
                              char revision[BP_REVISION_LEN], bp_error *err)
{
    DIR *d = opendir(dir);
    if (!d) { bp_error_set(err, "cannot read %s: %s", dir, strerror(errno)); return -1; }
    size_t n = 0;
    const char **names = NULL, **texts = NULL;
    size_t *lens = NULL;
    bp_buf *contents = NULL;
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.' || !regular_file(dir, e->d_name)) continue;
        char path[BP_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        contents = bp_realloc(contents, (n + 1) * sizeof *contents);
        names = bp_realloc(names, (n + 1) * sizeof *names);
        bp_buf_init(&contents[n]);
        names[n] = bp_strdup(e->d_name);
        n++;
        rc = bp_read_file(path, &contents[n - 1], err);
    }
    closedir(d);
    texts = bp_calloc(n + 1, sizeof *texts);
    lens = bp_calloc(n + 1, sizeof *lens);
    for (size_t i = 0; i < n; i++) { texts[i] = contents[i].data ? contents[i].data : ""; lens[i] = contents[i].len; }
    bp_files_revision(n, names, texts, lens, revision);
    bp_buf_adds(out, "{\"blueprint\":");
    bp_json_write_text(out, vendor, strlen(vendor));
    bp_buf_printf(out, ",\"revision\":\"%s\",\"actor\":", revision);
    bp_json_write_text(out, actor, strlen(actor));
    bp_buf_printf(out, ",\"at\":%lld,\"files\":{", (long long)bp_wall_ms());
    for (size_t i = 0; i < n; i++) {
        if (i) bp_buf_addc(out, ',');
        bp_json_write_text(out, names[i], strlen(names[i]));
        bp_buf_addc(out, ':');
        bp_json_write_text(out, texts[i], lens[i]);
    }
    bp_buf_adds(out, "}}");
    for (size_t i = 0; i < n; i++) { free((char *)names[i]); bp_buf_free(&contents[i]); }
    free(names);
    free(texts);
    free(lens);
    free(contents);
    return rc;
}

void bp_blueprint_record_free(bp_blueprint_record *rec)
{
    free(rec->names);
    free(rec->texts);
    free(rec->lens);
    bp_doc_free(&rec->d);
    memset(rec, 0, sizeof *rec);
}

static int by_name(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* No file named twice (which one would be written is nobody's choice):
 * the names sorted, equal neighbours. */
static int named_once(const bp_blueprint_record *rec, bp_error *err)
{
    const char **sorted = bp_memdup(rec->names, (rec->n + 1) * sizeof *sorted);
    qsort(sorted, rec->n, sizeof *sorted, by_name);
    int rc = 0;
    for (size_t i = 1; i < rec->n && rc == 0; i++)
        if (!strcmp(sorted[i - 1], sorted[i])) {
            bp_error_set(err, "the record names the file '%.100s' twice", sorted[i]);
            rc = -1;
        }
    free(sorted);
    return rc;
}

/* The files object of rec's document, checked: strings under plain names,
 * blueprint.yaml among them. */
static int read_files(bp_blueprint_record *rec, uint32_t f, bp_error *err)
{
    const bp_doc *d = &rec->d;
    size_t n = d->nodes[f].len;
    int yaml = 0;
    rec->names = bp_calloc(n + 1, sizeof *rec->names);
    rec->texts = bp_calloc(n + 1, sizeof *rec->texts);
    rec->lens = bp_calloc(n + 1, sizeof *rec->lens);
    for (uint32_t k = f + 1, i = 0; i < n; i++, k = d->nodes[k + 1].next) {
        const char *name = bp_jtext(d, k);
        if (!plain_name(name)) { bp_error_set(err, "the record names a file that is not a plain name: '%.100s'", name); return -1; }
        if (d->nodes[k + 1].type != BP_JSTRING) { bp_error_set(err, "the content of '%s' is not a string", name); return -1; }
        yaml = yaml || !strcmp(name, "blueprint.yaml");
        rec->names[i] = name;
        rec->texts[i] = bp_jtext(d, k + 1);
        rec->lens[i] = d->nodes[k + 1].len;
    }
    rec->n = n;
    if (!yaml) { bp_error_set(err, "the record has no blueprint.yaml"); return -1; }
    return named_once(rec, err);
}

int bp_revision_text(const char *rev)
{
    return rev && strlen(rev) == BP_REVISION_LEN - 1 && strspn(rev, "0123456789abcdef") == BP_REVISION_LEN - 1;
}

int bp_blueprint_record_parse(bp_blueprint_record *rec, const char *record, size_t len, bp_error *err)
{
    memset(rec, 0, sizeof *rec);
    bp_doc_init(&rec->d);
    bp_doc *d = &rec->d;
    bp_json_limits whole = { len + 1, 0 };   /* a blueprint folder's files: not an event's limit */
    if (bp_json_parse(d, record, len, &whole, err) < 0) return -1;
    if (d->nodes[0].type != BP_JOBJECT) { bp_error_set(err, "the record is not a JSON object"); return -1; }
    rec->vendor = bp_jscalar(d, bp_jget(d, 0, "blueprint"));
    rec->revision = bp_jscalar(d, bp_jget(d, 0, "revision"));
    rec->actor = bp_jscalar(d, bp_jget(d, 0, "actor"));
    uint32_t f = bp_jget(d, 0, "files");
    if (!rec->vendor || !*rec->vendor || !bp_revision_text(rec->revision) ||
        f == BP_NONE || d->nodes[f].type != BP_JOBJECT) {
        bp_error_set(err, "the record lacks its blueprint, revision (12 hex digits) or files");
        return -1;
    }
    if (!rec->actor) rec->actor = "";
    if (read_files(rec, f, err) < 0) return -1;
    char made[BP_REVISION_LEN];
    bp_files_revision(rec->n, rec->names, rec->texts, rec->lens, made);
    if (strcmp(made, rec->revision) != 0) {
        bp_error_set(err, "the record's files make revision %s, not the %s it names", made, rec->revision);
        return -1;
    }
    return 0;
}

static int write_all(int fd, const char *data, size_t len)
{
    for (size_t at = 0; at < len;) {
        ssize_t w = write(fd, data + at, len - at);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        at += (size_t)w;
    }
    return 0;
}

/* A file's contents beside its place in dir (a dotfile); its path in tmp. */
static int write_beside(const char *dir, const char *name, const char *data, size_t len, char *tmp, size_t n)
{
    char path[BP_PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, n, "%s/.%s.XXXXXX", dir, name);
    int fd = mkstemp(tmp);
    if (fd < 0) { tmp[0] = '\0'; return -1; }
    mode_t mode = stat(path, &st) == 0 ? st.st_mode & 0777 : 0644;
    int ok = write_all(fd, data, len) == 0 && fchmod(fd, mode) == 0 && fsync(fd) == 0;
    return close(fd) == 0 && ok ? 0 : -1;
}

/* Top-level files of dir that rec does not hold: removed (they count in the revision). */
static void remove_others(const bp_blueprint_record *rec, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !regular_file(dir, e->d_name)) continue;
        int kept = 0;
        for (size_t i = 0; i < rec->n && !kept; i++) kept = !strcmp(rec->names[i], e->d_name);
        if (kept) continue;
        char path[BP_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
}

int bp_blueprint_record_put(const bp_blueprint_record *rec, const char *dir, bp_error *err)
{
    char (*tmp)[BP_PATH_MAX] = bp_calloc(rec->n + 1, sizeof *tmp);
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < rec->n; i++)
        if (write_beside(dir, rec->names[i], rec->texts[i], rec->lens[i], tmp[i], sizeof tmp[i]) < 0) {
            bp_error_set(err, "cannot write %s/%s: %s (nothing was changed)", dir, rec->names[i], strerror(errno));
            rc = -1;
        }
    for (size_t i = 0; rc == 0 && i < rec->n; i++) {
        char path[BP_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, rec->names[i]);
        if (rename(tmp[i], path) < 0) {
            bp_error_set(err, "cannot rename a file into %s: %s", path, strerror(errno));
            rc = -1;
        } else {
            tmp[i][0] = '\0';
        }
    }
    if (rc == 0) remove_others(rec, dir);
    for (size_t i = 0; i < rec->n; i++) if (tmp[i][0]) unlink(tmp[i]);
    free(tmp);
    return rc;
}

void bp_blueprint_record_remove(const bp_blueprint_record *rec, const char *dir)
{
    for (size_t i = 0; i < rec->n; i++) {
        char path[BP_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, rec->names[i]);
        unlink(path);
    }
    rmdir(dir);
}
