/*
 * auth.c — Management API tokens: HS256 JWTs (RFC 7519) over SHA-256 and
 * HMAC (FIPS 180-4, RFC 2104).
 *
 * SHA-256 is written out here rather than taken from OpenSSL: the project's
 * dependency list has no crypto library, and these ~100 lines are checked
 * against the RFC 4231 test vectors in the unit tests.  Signatures are
 * compared in constant time.
 */
#include "internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- SHA-256 ---------------------------------------------------------------------- */

typedef struct sha256 {
    uint32_t h[8];
    uint64_t len;
    unsigned char block[64];
    size_t fill;
} sha256;

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(sha256 *s, const unsigned char *p)
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
    s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha256_init(sha256 *s)
{
    static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->fill = 0;
}

static void sha256_update(sha256 *s, const void *data, size_t n)
{
    const unsigned char *p = data;
    s->len += n;
    while (n) {
        size_t take = 64 - s->fill < n ? 64 - s->fill : n;
        memcpy(s->block + s->fill, p, take);
        s->fill += take;
        p += take;
        n -= take;
        if (s->fill == 64) { sha256_block(s, s->block); s->fill = 0; }
    }
}

static void sha256_final(sha256 *s, unsigned char out[32])
{
    uint64_t bits = s->len * 8;
    unsigned char pad = 0x80;
    sha256_update(s, &pad, 1);
    pad = 0;
    while (s->fill != 56) sha256_update(s, &pad, 1);
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(s, len, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(s->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)s->h[i];
    }
}

void bp_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen, unsigned char out[32])
{
    unsigned char k[64] = { 0 }, pad[64], inner[32];
    sha256 s;
    if (keylen > 64) { sha256_init(&s); sha256_update(&s, key, keylen); sha256_final(&s, k); }
    else memcpy(k, key, keylen);
    for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x36;
    sha256_init(&s);
    sha256_update(&s, pad, 64);
    sha256_update(&s, msg, msglen);
    sha256_final(&s, inner);
    for (int i = 0; i < 64; i++) pad[i] = k[i] ^ 0x5c;
    sha256_init(&s);
    sha256_update(&s, pad, 64);
    sha256_update(&s, inner, 32);
    sha256_final(&s, out);
}

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
    return 0;
}

/* ---- JWT ---------------------------------------------------------------------------- */

static const char HEADER[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

void bp_jwt_sign(const char *secret, const char *role, const char *subject, int64_t iat, int64_t exp, bp_buf *out)
{
    bp_buf payload;
    bp_buf_init(&payload);
    bp_buf_adds(&payload, "{\"sub\":");
    bp_json_write_string(&payload, subject, strlen(subject));
    bp_buf_adds(&payload, ",\"role\":");
    bp_json_write_string(&payload, role, strlen(role));
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

int bp_jwt_verify(const char *secret, const char *token, int64_t now, char *role, size_t rolelen, bp_error *err)
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
    unsigned diff = sig.len != 32;
    for (size_t i = 0; i < 32; i++) diff |= (unsigned)(mac[i] ^ (unsigned char)(i < sig.len ? sig.data[i] : 0));
    if (diff) { bp_error_set(err, "bad signature"); goto out; }
    bp_doc d;
    bp_doc_init(&d);
    bp_error perr;
    if (bp_json_parse(&d, hdr.data ? hdr.data : "", hdr.len, NULL, &perr) < 0 ||
        !bp_jscalar(&d, bp_jget(&d, 0, "alg")) || strcmp(bp_jscalar(&d, bp_jget(&d, 0, "alg")), "HS256") != 0) {
        bp_error_set(err, "unsupported token algorithm (HS256 only)");
        bp_doc_free(&d);
        goto out;
    }
    if (bp_json_parse(&d, payload.data ? payload.data : "", payload.len, NULL, &perr) < 0) {
        bp_error_set(err, "malformed token payload");
        bp_doc_free(&d);
        goto out;
    }
    const char *exp = bp_jscalar(&d, bp_jget(&d, 0, "exp"));
    const char *r = bp_jscalar(&d, bp_jget(&d, 0, "role"));
    if (!exp || atoll(exp) <= now) bp_error_set(err, "token expired");
    else if (!r) bp_error_set(err, "token has no role");
    else { snprintf(role, rolelen, "%s", r); rc = 0; }
    bp_doc_free(&d);
out:
    bp_buf_free(&hdr);
    bp_buf_free(&payload);
    bp_buf_free(&sig);
    return rc;
}

/* The signing secret: $BLUEPRINT_JWT_SECRET, else STATE/jwt.secret, created
 * on first use from /dev/urandom with mode 0600. */
int bp_jwt_secret(const char *state_dir, char *out, size_t outlen, bp_error *err)
{
    const char *env = getenv("BLUEPRINT_JWT_SECRET");
    if (env && *env) { snprintf(out, outlen, "%s", env); return 0; }
    char path[4096];
    mkdir(state_dir, 0700);
    snprintf(path, sizeof path, "%s/jwt.secret", state_dir);
    FILE *f = fopen(path, "r");
    if (f) {
        int ok = fgets(out, (int)outlen, f) != NULL;
        fclose(f);
        out[strcspn(out, "\r\n")] = '\0';
        if (ok && *out) return 0;
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
