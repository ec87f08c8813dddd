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

/* A regular file itself (a link, a folder, a device: not a blueprint
 * file), its size in *size. */
static int regular_file(const char *dir, const char *name, off_t *size)
{
    char path[BP_PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    if (size) *size = st.st_size;
    return 1;
}

/* A record is one Kafka message: Kafka's default message.max.bytes. */
#define MAX_RECORD 1000000

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
    off_t size = 0, total = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (e->d_name[0] == '.' || !regular_file(dir, e->d_name, &size)) continue;
        if ((total += size) > MAX_RECORD) {
            bp_error_set(err, "the blueprint's top-level files hold more than %d bytes, the most one record (a "
                         "Kafka message) carries", MAX_RECORD);
            rc = -1;
            break;
        }
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
    if (rc == 0 && out->len > MAX_RECORD) {
        bp_error_set(err, "the blueprint's record would be %zu bytes, more than the %d one Kafka message carries",
                     out->len, MAX_RECORD);
        rc = -1;
    }
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

/* One change to a folder: a file's new contents renamed over it (tmp), or
 * a file the revision does not have removed (tmp ""); the file as it was
 * kept under bak ("" when there was none) until every change is made. */
typedef struct change {
    char path[BP_PATH_MAX], tmp[BP_PATH_MAX], bak[BP_PATH_MAX];
    const char *name;
    int old;
} change;

/* A hard link to c's file beside it, to put back if a later change fails. */
static int keep_old(const char *dir, change *c)
{
    if (!c->old) return 0;
    snprintf(c->bak, sizeof c->bak, "%s/.%s.XXXXXX", dir, c->name);
    int fd = mkstemp(c->bak);
    if (fd < 0) { c->bak[0] = '\0'; return -1; }
    close(fd);
    if (unlink(c->bak) < 0 || link(c->path, c->bak) < 0) { c->bak[0] = '\0'; return -1; }
    return 0;
}

static void put_back(change *c)
{
    if (c->bak[0] && rename(c->bak, c->path) == 0) c->bak[0] = '\0';
    else if (!c->old) unlink(c->path);
}

/* Leftovers of an earlier write that did not finish (a crash between the
 * two steps): ".NAME.XXXXXX" beside a file of the record. */
static void remove_leftovers(const bp_blueprint_record *rec, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (e->d_name[0] != '.' || n < 9 || e->d_name[n - 7] != '.') continue;
        for (size_t i = 0; i < rec->n; i++) {
            if (strlen(rec->names[i]) != n - 8 || memcmp(e->d_name + 1, rec->names[i], n - 8) != 0) continue;
            char path[BP_PATH_MAX];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
            break;
        }
    }
    closedir(d);
}

/* The changes rec makes to dir: its files, then the top-level files it
 * does not have.  -1 with err when a place of one is not a regular file
 * (a folder, a link: nothing is changed). */
static int plan(const bp_blueprint_record *rec, const char *dir, change **out, size_t *n, bp_error *err)
{
    change *cs = bp_calloc(rec->n + 1, sizeof *cs);
    size_t k = 0;
    struct stat st;
    for (size_t i = 0; i < rec->n; i++, k++) {
        cs[k].name = rec->names[i];
        snprintf(cs[k].path, sizeof cs[k].path, "%s/%s", dir, rec->names[i]);
        int exists = lstat(cs[k].path, &st) == 0;
        if (exists && !S_ISREG(st.st_mode)) {
            bp_error_set(err, "%s/%s is not a regular file (nothing was changed)", dir, rec->names[i]);
            free(cs);
            return -1;
        }
        cs[k].old = exists;
    }
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.' || !regular_file(dir, e->d_name, NULL)) continue;
        int kept = 0;
        for (size_t i = 0; i < rec->n && !kept; i++) kept = !strcmp(rec->names[i], e->d_name);
        if (kept) continue;
        cs = bp_realloc(cs, (k + 1) * sizeof *cs);
        memset(&cs[k], 0, sizeof cs[k]);
        cs[k].name = bp_strdup(e->d_name);
        snprintf(cs[k].path, sizeof cs[k].path, "%s/%s", dir, e->d_name);
        cs[k++].old = 1;
    }
    if (d) closedir(d);
    *out = cs;
    *n = k;
    return 0;
}

static void sync_folder(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;
    fsync(fd);
    close(fd);
}

int bp_blueprint_record_put(const bp_blueprint_record *rec, const char *dir, bp_error *err)
{
    change *cs;
    size_t n, done = 0;
    remove_leftovers(rec, dir);
    if (plan(rec, dir, &cs, &n, err) < 0) return -1;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < rec->n; i++)
        if (write_beside(dir, rec->names[i], rec->texts[i], rec->lens[i], cs[i].tmp, sizeof cs[i].tmp) < 0) {
            bp_error_set(err, "cannot write %s/%s: %s (nothing was changed)", dir, rec->names[i], strerror(errno));
            rc = -1;
        }
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (keep_old(dir, &cs[i]) < 0) {
            bp_error_set(err, "cannot keep %s while it is replaced: %s (nothing was changed)", cs[i].path, strerror(errno));
            rc = -1;
        }
    /* every change, or (one failing) every one made undone */
    for (; rc == 0 && done < n; done++) {
        change *c = &cs[done];
        if (c->tmp[0] ? rename(c->tmp, c->path) < 0 : unlink(c->path) < 0) {
            bp_error_set(err, "cannot %s %s: %s (nothing was changed)", c->tmp[0] ? "replace" : "remove", c->path,
                         strerror(errno));
            rc = -1;
            break;
        }
        c->tmp[0] = '\0';
    }
    if (rc < 0)
        for (size_t i = 0; i < done; i++) put_back(&cs[i]);
    sync_folder(dir);
    for (size_t i = 0; i < n; i++) {
        if (cs[i].tmp[0]) unlink(cs[i].tmp);
        if (cs[i].bak[0]) unlink(cs[i].bak);
        if (i >= rec->n) free((char *)cs[i].name);
    }
    free(cs);
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
