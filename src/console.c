/*
 * console.c — the web console's files, served by `blueprint serve` at / and
 * /console/… (server.c sets the headers: a strict Content-Security-Policy).
 *
 * The console is plain HTML, CSS and JavaScript modules from the repository's
 * console/ folder (installed to share/blueprint/console), and the editor's
 * CodeMirror from Debian's libjs-codemirror, read where Debian installs it.
 * Nothing outside those two folders can be read: a path is a list of plain
 * names (no "..", no dotfiles), and the file found must still lie inside the
 * folder once symbolic links are resolved.
 */
#include "service.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef BP_DATADIR
#define BP_DATADIR "/usr/local/share"   /* make passes $(DATADIR) */
#endif

#define MAX_FILE_BYTES (8u * 1024u * 1024u)

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

void bp_console_dir(const char *option, const char *blueprints_dir, char *out, size_t n)
{
    if (option && *option) { snprintf(out, n, "%s", option); return; }
    /* the repository's (or an install's) layout: console/ beside blueprints/ */
    snprintf(out, n, "%s/../console", blueprints_dir);
    if (is_dir(out)) return;
    /* an install's, found from the program (PREFIX/bin/…): right whatever
     * PREFIX the objects were compiled with */
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    char *slash = len > 0 ? (self[len] = '\0', strrchr(self, '/')) : NULL;
    if (slash) {
        *slash = '\0';
        snprintf(out, n, "%s/../share/blueprint/console", self);
        if (is_dir(out)) return;
    }
    snprintf(out, n, "%s/blueprint/console", BP_DATADIR);
}

/* The Content-Type of the file types the console is made of; NULL: not served. */
static const char *type_of(const char *name)
{
    static const struct { const char *ext, *type; } types[] = {
        { ".html", "text/html; charset=utf-8" }, { ".js", "text/javascript; charset=utf-8" },
        { ".mjs", "text/javascript; charset=utf-8" }, { ".css", "text/css; charset=utf-8" },
        { ".svg", "image/svg+xml" }, { ".png", "image/png" }, { ".json", "application/json" },
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(dot, types[i].ext)) return types[i].type;
    return NULL;
}

/* Plain names separated by single slashes: nothing that climbs out or hides. */
static int plain_path(const char *rel)
{
    if (!*rel || strlen(rel) > 1024 || strchr(rel, '\\')) return 0;
    for (const char *p = rel; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 0 || p[0] == '.') return 0;   /* "//", "..", ".git", ".env" */
        p += n;
        if (*p == '/') p++;
        if (!*p && p[-1] == '/') return 0;
    }
    return 1;
}

int bp_console_file(const char *root, const char *rel, bp_buf *out, const char **ctype, bp_error *err)
{
    char path[PATH_MAX + 1100], real_root[PATH_MAX], real[PATH_MAX];
    *ctype = type_of(rel);
    if (!plain_path(rel) || !*ctype) { bp_error_set(err, "no such file"); return 404; }
    snprintf(path, sizeof path, "%s/%s", root, rel);
    if (!realpath(root, real_root) || !realpath(path, real)) {
        bp_error_set(err, is_dir(root) ? "no such file" : "the console's files are not installed here (serve --console DIR)");
        return 404;
    }
    size_t rl = strlen(real_root);
    struct stat st;
    if (strncmp(real, real_root, rl) != 0 || real[rl] != '/' || stat(real, &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size > (off_t)MAX_FILE_BYTES) {
        bp_error_set(err, "no such file");
        return 404;
    }
    if (bp_read_file(real, out, err) < 0) return 404;
    return 200;
}
