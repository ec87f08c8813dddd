/*
 * auth.c — Management API tokens: HS256 JWTs (RFC 7519).  The HMAC-SHA256
 * and the constant-time compare of signatures are libcrypto's (crypto.c).
 */
#include "service.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- base64url --------------------------------------------------------------------- */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void b64url(bp_buf *out, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        bp_buf_addc(out, B64[(v >> 18) & 63]);
        bp_buf_addc(out, B64[(v >> 12) & 63]);
        if (i + 1 < n) bp_buf_addc(out, B64[(v >> 6) & 63]);
        if (i + 2 < n) bp_buf_addc(out, B64[v & 63]);
    }
}

/* Canonical base64url only (RFC 7515 §2: no padding), so that one token has
 * one spelling: a last character whose unused low bits are set, or a
 * dangling sixth of a byte, would otherwise decode to the same bytes as the
 * token that was signed. */
static int b64url_decode(const char *s, size_t n, bp_buf *out)
{
    uint32_t v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *c = memchr(B64, s[i], 64);
        if (!c || !s[i]) return -1;
        v = (v << 6) | (uint32_t)(c - B64);
        bits += 6;
        if (bits >= 8) { bits -= 8; bp_buf_addc(out, (char)((v >> bits) & 0xff)); }
    }
    return bits >= 6 || (v & ((1u << bits) - 1)) ? -1 : 0;
}

/* ---- JWT ---------------------------------------------------------------------------- */

static const char HEADER[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* The token with these claims; `use` only on sign-in tokens, `jti` (random)
 * on sign-in and session tokens: the ids the server takes once or revokes. */
static void sign(const char *secret, const char *role, const char *subject, const char *issuer, const char *audience,
                 const char *use, int with_jti, int64_t iat, int64_t exp, bp_buf *out)
{
    char jti[33] = "";
    if (with_jti) {
        unsigned char raw[16];
        if (bp_random_bytes(raw, sizeof raw) < 0) abort();   /* a guessable jti would not be single-use */
        for (int i = 0; i < 16; i++) snprintf(jti + 2 * i, 3, "%02x", raw[i]);
    }
    bp_buf payload;
    bp_buf_init(&payload);
    bp_buf_adds(&payload, "{\"sub\":");
    bp_json_write_string(&payload, subject, strlen(subject));
    bp_buf_adds(&payload, ",\"role\":");
    bp_json_write_string(&payload, role, strlen(role));
    if (issuer) { bp_buf_adds(&payload, ",\"iss\":"); bp_json_write_string(&payload, issuer, strlen(issuer)); }
    if (audience) { bp_buf_adds(&payload, ",\"aud\":"); bp_json_write_string(&payload, audience, strlen(audience)); }
    if (use) bp_buf_printf(&payload, ",\"use\":\"%s\"", use);
    if (with_jti) bp_buf_printf(&payload, ",\"jti\":\"%s\"", jti);
    bp_buf_printf(&payload, ",\"iat\":%lld,\"exp\":%lld}", (long long)iat, (long long)exp);
    b64url(out, (const unsigned char *)HEADER, strlen(HEADER));
    bp_buf_addc(out, '.');
    b64url(out, (const unsigned char *)payload.data, payload.len);
    unsigned char mac[32];
    bp_hmac_sha256(secret, strlen(secret), out->data, out->len, mac);
    bp_buf_addc(out, '.');
    b64url(out, mac, 32);
    bp_buf_free(&payload);
}

void bp_jwt_sign(const char *secret, const char *role, const char *subject, const char *issuer, const char *audience,
                 int64_t iat, int64_t exp, bp_buf *out)
{
    sign(secret, role, subject, issuer, audience, NULL, 0, iat, exp, out);
}

/* A sign-in token carries "use":"signin", which the API refuses as a bearer
 * token, and a random jti, so that the server can take it only once. */
void bp_jwt_sign_signin(const char *secret, const char *role, const char *subject, const char *issuer,
                        const char *audience, int64_t iat, int64_t exp, bp_buf *out)
{
    sign(secret, role, subject, issuer, audience, BP_JWT_USE_SIGNIN, 1, iat, exp, out);
}

/* A console session: an API token with a random jti, so that sign-out can
 * revoke it before it expires. */
void bp_jwt_sign_session(const char *secret, const char *role, const char *subject, const char *issuer,
                         const char *audience, int64_t iat, int64_t exp, bp_buf *out)
{
    sign(secret, role, subject, issuer, audience, NULL, 1, iat, exp, out);
}

/* aud is a string or an array of strings (RFC 7519 §4.1.3). */
static int audience_has(const bp_doc *d, const char *want)
{
    uint32_t a = bp_jget(d, 0, "aud");
    if (a == BP_NONE) return 0;
    if (d->nodes[a].type == BP_JSTRING) return !strcmp(bp_jtext(d, a), want);
    if (d->nodes[a].type != BP_JARRAY) return 0;
    for (uint32_t k = a + 1, i = 0; i < d->nodes[a].len; i++, k = d->nodes[k].next)
        if (d->nodes[k].type == BP_JSTRING && !strcmp(bp_jtext(d, k), want)) return 1;
    return 0;
}

int bp_jwt_verify(const char *secret, const char *token, int64_t now, const bp_jwt_expect *expect, bp_claims *out,
                  bp_error *err)
{
    const char *dot1 = strchr(token, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot1 || !dot2 || strchr(dot2 + 1, '.')) { bp_error_set(err, "malformed token"); return -1; }
    bp_buf hdr, payload, sig;
    bp_buf_init(&hdr);
    bp_buf_init(&payload);
    bp_buf_init(&sig);
    int rc = -1;
    if (b64url_decode(token, (size_t)(dot1 - token), &hdr) < 0 ||
        b64url_decode(dot1 + 1, (size_t)(dot2 - dot1 - 1), &payload) < 0 ||
        b64url_decode(dot2 + 1, strlen(dot2 + 1), &sig) < 0) {
        bp_error_set(err, "malformed token");
        goto out;
    }
    unsigned char mac[32];
    bp_hmac_sha256(secret, strlen(secret), token, (size_t)(dot2 - token), mac);
    if (sig.len != 32 || !bp_equal_consttime(mac, sig.data, 32)) { bp_error_set(err, "bad signature"); goto out; }
    bp_doc d;
    bp_doc_init(&d);
    bp_error perr;
    if (bp_json_parse(&d, hdr.data ? hdr.data : "", hdr.len, NULL, &perr) < 0 ||
        !bp_jscalar(&d, bp_jget(&d, 0, "alg")) || strcmp(bp_jscalar(&d, bp_jget(&d, 0, "alg")), "HS256") != 0) {
        bp_error_set(err, "unsupported token algorithm (HS256 only)");
        bp_doc_free(&d);
        goto out;
    }
    if (bp_json_parse(&d, payload.data ? payload.data : "", payload.len, NULL, &perr) < 0 || d.nodes[0].type != BP_JOBJECT) {
        bp_error_set(err, "malformed token payload");
        bp_doc_free(&d);
        goto out;
    }
    const char *exp = bp_jscalar(&d, bp_jget(&d, 0, "exp"));
    const char *r = bp_jscalar(&d, bp_jget(&d, 0, "role"));
    const char *sub = bp_jscalar(&d, bp_jget(&d, 0, "sub"));
    const char *iss = bp_jscalar(&d, bp_jget(&d, 0, "iss"));
    const char *use = bp_jscalar(&d, bp_jget(&d, 0, "use")), *jti = bp_jscalar(&d, bp_jget(&d, 0, "jti"));
    const char *iat = bp_jscalar(&d, bp_jget(&d, 0, "iat"));
    const char *nbf = bp_jscalar(&d, bp_jget(&d, 0, "nbf"));
    if (!exp || atoll(exp) <= now) bp_error_set(err, "token expired");
    /* RFC 7519 §4.1.5; and a token "issued" later than now was not issued by
     * a clock that agrees with ours.  BP_JWT_SKEW allows for clocks apart. */
    else if (nbf && atoll(nbf) > now + BP_JWT_SKEW) bp_error_set(err, "token not valid yet (nbf is in the future)");
    else if (iat && atoll(iat) > now + BP_JWT_SKEW) bp_error_set(err, "token issued in the future (iat; are the clocks apart?)");
    else if (!r) bp_error_set(err, "token has no role");
    else if (expect && expect->issuer && (!iss || strcmp(iss, expect->issuer) != 0))
        bp_error_set(err, "token issuer is not '%s'", expect->issuer);
    else if (expect && expect->audience && !audience_has(&d, expect->audience))
        bp_error_set(err, "token audience does not include '%s'", expect->audience);
    else {
        snprintf(out->role, sizeof out->role, "%s", r);
        snprintf(out->sub, sizeof out->sub, "%s", sub ? sub : "");
        snprintf(out->use, sizeof out->use, "%s", use ? use : "");
        snprintf(out->jti, sizeof out->jti, "%s", jti ? jti : "");
        out->iat = iat ? atoll(iat) : 0;
        out->exp = atoll(exp);
        rc = 0;
    }
    bp_doc_free(&d);
out:
    bp_buf_free(&hdr);
    bp_buf_free(&payload);
    bp_buf_free(&sig);
    return rc;
}

/* An HMAC-SHA256 key shorter than its 32-byte output is easier to guess
 * than the MAC (RFC 7518 §3.2 requires at least that); one cut short by our
 * buffer would be a different key than the operator's. */
static int secret_usable(const char *secret, const char *where, size_t outlen, bp_error *err)
{
    size_t n = strlen(secret);
    if (n >= BP_JWT_MIN_SECRET && n < outlen - 1) return 0;
    bp_error_set(err, "%s is %zu bytes; a JWT secret is %d to %zu bytes (make one with: openssl rand -hex 32)", where, n,
                 BP_JWT_MIN_SECRET, outlen - 2);
    return -1;
}

/* The signing secret: $BLUEPRINT_JWT_SECRET, else STATE/jwt.secret, created
 * on first use from /dev/urandom with mode 0600. */
int bp_jwt_secret(const char *state_dir, char *out, size_t outlen, bp_error *err)
{
    const char *env = getenv("BLUEPRINT_JWT_SECRET");
    if (env && *env) {
        if (secret_usable(env, "BLUEPRINT_JWT_SECRET", outlen, err) < 0) return -1;
        snprintf(out, outlen, "%s", env);
        return 0;
    }
    char path[4096];
    mkdir(state_dir, 0700);
    snprintf(path, sizeof path, "%s/jwt.secret", state_dir);
    FILE *f = fopen(path, "r");
    if (f) {
        int ok = fgets(out, (int)outlen, f) != NULL;
        fclose(f);
        out[strcspn(out, "\r\n")] = '\0';
        if (ok && *out) return secret_usable(out, path, outlen, err);
    }
    unsigned char raw[32];
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, raw, sizeof raw) != (ssize_t)sizeof raw) {
        if (fd >= 0) close(fd);
        bp_error_set(err, "cannot read /dev/urandom to create %s", path);
        return -1;
    }
    close(fd);
    for (int i = 0; i < 32 && (size_t)(2 * i + 2) < outlen; i++) snprintf(out + 2 * i, 3, "%02x", raw[i]);
    int wfd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (wfd < 0) { bp_error_set(err, "cannot create %s", path); return -1; }
    int ok = write(wfd, out, strlen(out)) == (ssize_t)strlen(out) && write(wfd, "\n", 1) == 1;
    close(wfd);
    if (!ok) { bp_error_set(err, "cannot write %s", path); return -1; }
    return 0;
}

/* ---- spent token ids ------------------------------------------------------------------------ */

/* Token ids that may not be used again (sign-in links taken, sessions signed
 * out), for the bearer check on every request: a few per sign-in, each kept
 * until its token expires, so a scan is cheaper than any index. */
struct bp_jti_set {
    pthread_mutex_t mu;
    struct spent { char jti[64]; int64_t exp; } *items;
    size_t n, cap;
};

bp_jti_set *bp_jti_set_new(void)
{
    bp_jti_set *s = bp_calloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

void bp_jti_set_free(bp_jti_set *s)
{
    if (!s) return;
    pthread_mutex_destroy(&s->mu);
    free(s->items);
    free(s);
}

static long find_locked(const bp_jti_set *s, const char *jti)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->items[i].jti, jti)) return (long)i;
    return -1;
}

int bp_jti_set_add(bp_jti_set *s, const char *jti, int64_t exp, int64_t now)
{
    pthread_mutex_lock(&s->mu);
    size_t kept = 0;
    for (size_t i = 0; i < s->n; i++)   /* an expired token is refused anyway: forget its id */
        if (s->items[i].exp >= now) s->items[kept++] = s->items[i];
    s->n = kept;
    int had = find_locked(s, jti) >= 0;
    if (!had) {
        if (s->n == s->cap) {
            size_t cap = s->cap ? 2 * s->cap : 16;
            struct spent *items = bp_realloc(s->items, cap * sizeof *items);
            s->items = items;
            s->cap = cap;
        }
        snprintf(s->items[s->n].jti, sizeof s->items[s->n].jti, "%s", jti);
        s->items[s->n++].exp = exp;
    }
    pthread_mutex_unlock(&s->mu);
    return had;
}

int bp_jti_set_has(bp_jti_set *s, const char *jti)
{
    pthread_mutex_lock(&s->mu);
    int had = find_locked(s, jti) >= 0;
    pthread_mutex_unlock(&s->mu);
    return had;
}
