/*
 * crypto.c — what the runtime needs from cryptography, all from OpenSSL's
 * libcrypto: HMAC-SHA256 (tokens), SHA-256 (content addresses), a constant-time compare, random bytes,
 * and AES-256-GCM for secrets at rest under a master key ring.
 *
 * Secrets at rest: a secret config value is stored as
 *
 *     bp:enc:v2:KID:BASE64(destination):BASE64(nonce[12] ciphertext tag[16])
 *
 * encrypted with the key KID of the ring, a fresh random nonce per value,
 * and as associated data the integration id, the field name and the
 * destination: the URL fields the secret is sent to with their values
 * ("api_url=https://acct.api-us1.com", one per line; registry.c computes it
 * from the blueprint's sent_to).  A ciphertext moved to another field or
 * integration, or kept while its URL is changed (by whoever can write the
 * cluster's configuration topic, say), does not open for that use.  The
 * destination is kept readable in the value so that a key rotation, which
 * has no blueprint, wraps it again for the same destination.
 *
 * bp:enc:v1:KID:BASE64(…) values (before destinations were bound: the id
 * and field only) still decrypt; serve migrates them to v2 at start.
 *
 * The key ring is a file (BLUEPRINT_MASTER_KEY_FILE, else STATE/master.key,
 * created 0600 on first use): one key per line, "KID HEX64"; the first is
 * the one new values are encrypted with, the others only decrypt (they are
 * there during a rotation).  The file is read again whenever it changes,
 * so a rotation by `blueprint rotate-key` reaches a running server.
 */
#include "service.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ENC_PREFIX "bp:enc:v2:"
#define ENC_PREFIX_V1 "bp:enc:v1:"
#define ENC_PREFIX_LEN 10   /* both prefixes */
#define NONCE_LEN 12
#define TAG_LEN 16

void bp_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen, unsigned char out[32])
{
    unsigned int n = 32;
    if (!HMAC(EVP_sha256(), key, (int)keylen, msg, msglen, out, &n)) memset(out, 0, 32);
}

void bp_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int n = 32;
    if (EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) != 1) memset(md, 0, sizeof md);
    for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

int bp_equal_consttime(const void *a, const void *b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

int bp_random_bytes(unsigned char *out, size_t n) { return RAND_bytes(out, (int)n) == 1 ? 0 : -1; }

/* ---- base64 (standard alphabet, padded) -------------------------------------------- */

static void b64_encode(bp_buf *out, const unsigned char *p, size_t n)
{
    bp_buf_reserve(out, 4 * ((n + 2) / 3) + 1);
    int len = EVP_EncodeBlock((unsigned char *)out->data + out->len, p, (int)n);
    out->len += (size_t)len;
    out->data[out->len] = '\0';
}

/* -1 when s is not base64; else the decoded length (padding removed). */
static int b64_decode(const char *s, size_t n, unsigned char *out, size_t cap)
{
    if (n % 4 || (n / 4) * 3 > cap) return -1;
    int len = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    if (len < 0) return -1;
    for (size_t i = n; i > 0 && s[i - 1] == '='; i--) len--;
    return len;
}

/* ---- the key ring -------------------------------------------------------------------- */

#define MAX_KEYS 8

struct bp_keyring {
    pthread_mutex_t mu;         /* guards everything below */
    char path[4096];
    struct timespec mtime;
    off_t size;
    int n;
    struct { char kid[17]; unsigned char key[32]; } keys[MAX_KEYS];
};

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Parse the key file into r (mu held).  -1 with err on a malformed file. */
static int parse_ring(bp_keyring *r, const char *text, bp_error *err)
{
    int n = 0;
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char kid[17] = "", hex[65] = "";
        if (len && line[0] != '#') {
            if (n == MAX_KEYS || sscanf(line, "%16s %64s", kid, hex) != 2 || strlen(hex) != 64) {
                bp_error_set(err, "%s: each line must be \"KID HEX\" with 64 hex digits (at most %d keys)", r->path,
                             MAX_KEYS);
                return -1;
            }
            for (int i = 0; i < 32; i++) {
                int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
                if (hi < 0 || lo < 0) { bp_error_set(err, "%s: key '%s' is not hex", r->path, kid); return -1; }
                r->keys[n].key[i] = (unsigned char)(hi * 16 + lo);
            }
            snprintf(r->keys[n].kid, sizeof r->keys[n].kid, "%s", kid);
            n++;
        }
        line += len + (end ? 1 : 0);
    }
    if (!n) { bp_error_set(err, "%s holds no key", r->path); return -1; }
    r->n = n;
    return 0;
}

/* Re-read the file if it changed since (mu held). */
static int refresh(bp_keyring *r, bp_error *err)
{
    struct stat st;
    if (stat(r->path, &st) != 0) { bp_error_set(err, "master key %s: %s", r->path, strerror(errno)); return -1; }
    if (r->n && st.st_mtim.tv_sec == r->mtime.tv_sec && st.st_mtim.tv_nsec == r->mtime.tv_nsec && st.st_size == r->size)
        return 0;
    bp_buf text;
    bp_buf_init(&text);
    int rc = bp_read_file(r->path, &text, err);
    if (rc == 0) rc = parse_ring(r, text.data ? text.data : "", err);
    if (text.data) OPENSSL_cleanse(text.data, text.cap);
    bp_buf_free(&text);
    if (rc == 0) { r->mtime = st.st_mtim; r->size = st.st_size; }
    return rc;
}

void bp_key_new(char kid[17], unsigned char key[32])
{
    if (bp_random_bytes(key, 32) < 0) abort();   /* no randomness: nothing safe to do */
    unsigned char id[4];
    if (bp_random_bytes(id, sizeof id) < 0) abort();
    snprintf(kid, 17, "k%02x%02x%02x%02x", id[0], id[1], id[2], id[3]);
}

/* Write keys (first = primary) to path, atomically, mode 0600. */
int bp_keyring_write(const char *path, int n, char kids[][17], unsigned char keys[][32], bp_error *err)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) { bp_error_set(err, "cannot write %s: %s", tmp, strerror(errno)); return -1; }
    bp_buf b;
    bp_buf_init(&b);
    bp_buf_adds(&b, "# master key ring: the first key encrypts, the others only decrypt\n");
    for (int i = 0; i < n; i++) {
        bp_buf_printf(&b, "%s ", kids[i]);
        for (int k = 0; k < 32; k++) bp_buf_printf(&b, "%02x", keys[i][k]);
        bp_buf_addc(&b, '\n');
    }
    int ok = write(fd, b.data, b.len) == (ssize_t)b.len && fsync(fd) == 0;
    OPENSSL_cleanse(b.data, b.cap);
    bp_buf_free(&b);
    close(fd);
    if (!ok || rename(tmp, path) != 0) {
        bp_error_set(err, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

bp_keyring *bp_keyring_open(const char *state_dir, bp_error *err)
{
    bp_keyring *r = bp_calloc(1, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    const char *env = getenv("BLUEPRINT_MASTER_KEY_FILE");
    if (env && *env) {
        snprintf(r->path, sizeof r->path, "%s", env);
    } else {
        snprintf(r->path, sizeof r->path, "%s/master.key", state_dir);
        if (access(r->path, F_OK) != 0) {   /* first start: make one */
            char kid[1][17];
            unsigned char key[1][32];
            bp_key_new(kid[0], key[0]);
            int rc = bp_keyring_write(r->path, 1, kid, key, err);
            OPENSSL_cleanse(key, sizeof key);
            if (rc < 0) { bp_keyring_close(r); return NULL; }
        }
    }
    if (refresh(r, err) < 0) { bp_keyring_close(r); return NULL; }
    return r;
}

void bp_keyring_close(bp_keyring *r)
{
    if (!r) return;
    OPENSSL_cleanse(r->keys, sizeof r->keys);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

const char *bp_keyring_path(const bp_keyring *r) { return r->path; }

/* The keys, primary first (for rotation).  Returns how many. */
int bp_keyring_keys(bp_keyring *r, char kids[][17], unsigned char keys[][32], int cap, bp_error *err)
{
    pthread_mutex_lock(&r->mu);
    int n = refresh(r, err) < 0 ? -1 : r->n < cap ? r->n : cap;
    for (int i = 0; i < n; i++) { memcpy(kids[i], r->keys[i].kid, 17); memcpy(keys[i], r->keys[i].key, 32); }
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* ---- AES-256-GCM ------------------------------------------------------------------------ */

int bp_is_encrypted(const char *value)
{
    return value && (!strncmp(value, ENC_PREFIX, ENC_PREFIX_LEN) || !strncmp(value, ENC_PREFIX_V1, ENC_PREFIX_LEN));
}

int bp_is_encrypted_v1(const char *value) { return value && !strncmp(value, ENC_PREFIX_V1, ENC_PREFIX_LEN); }

/* Parts of a NUL between: "ab"+"c" is not "a"+"bc".  v1 has no version
 * tag and no destination. */
static void aad_for(bp_buf *aad, int v1, const char *integration, const char *field, const char *dest)
{
    if (!v1) bp_buf_add(aad, "v2", 3);
    bp_buf_adds(aad, integration);
    bp_buf_add(aad, "", 1);
    bp_buf_adds(aad, field);
    if (!v1) { bp_buf_add(aad, "", 1); bp_buf_adds(aad, dest); }
}

/* Encrypt with the primary key for dest; out gets the bp:enc:v2 string
 * (dest NULL: v1, only for a rotation to re-wrap a value that serve has
 * not migrated yet as it was). */
int bp_encrypt_secret(bp_keyring *r, const char *integration, const char *field, const char *dest, const char *plain,
                      bp_buf *out, bp_error *err)
{
    size_t len = strlen(plain);
    unsigned char *blob = bp_malloc(NONCE_LEN + len + TAG_LEN + 1);
    bp_buf aad;
    bp_buf_init(&aad);
    aad_for(&aad, !dest, integration, field, dest);
    pthread_mutex_lock(&r->mu);
    int rc = refresh(r, err);
    char kid[17];
    unsigned char key[32];
    if (rc == 0) { memcpy(kid, r->keys[0].kid, 17); memcpy(key, r->keys[0].key, 32); }
    pthread_mutex_unlock(&r->mu);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, fin = 0;
    if (rc == 0 && (bp_random_bytes(blob, NONCE_LEN) < 0 || !c ||
                    EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
                    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
                    EVP_EncryptInit_ex(c, NULL, NULL, key, blob) != 1 ||
                    EVP_EncryptUpdate(c, NULL, &n, (const unsigned char *)aad.data, (int)aad.len) != 1 ||
                    EVP_EncryptUpdate(c, blob + NONCE_LEN, &n, (const unsigned char *)plain, (int)len) != 1 ||
                    EVP_EncryptFinal_ex(c, blob + NONCE_LEN + n, &fin) != 1 ||
                    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, TAG_LEN, blob + NONCE_LEN + n + fin) != 1)) {
        bp_error_set(err, "could not encrypt the secret '%s'", field);
        rc = -1;
    }
    if (rc == 0) {
        bp_buf_printf(out, "%s%s:", dest ? ENC_PREFIX : ENC_PREFIX_V1, kid);
        if (dest) { b64_encode(out, (const unsigned char *)dest, strlen(dest)); bp_buf_addc(out, ':'); }
        b64_encode(out, blob, NONCE_LEN + (size_t)(n + fin) + TAG_LEN);
    }
    EVP_CIPHER_CTX_free(c);
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(blob, NONCE_LEN + len + TAG_LEN);
    free(blob);
    bp_buf_free(&aad);
    return rc;
}

/* The parts of a sealed value: kid, the destination it was sealed for
 * (v2; "" for v1), and the base64 blob.  -1 when it is not in the form. */
static int split_sealed(const char *value, char kid[17], bp_buf *dest, const char **blob64)
{
    if (!bp_is_encrypted(value)) return -1;
    const char *p = value + ENC_PREFIX_LEN, *colon = strchr(p, ':');
    if (!colon || colon - p > 16 || colon == p) return -1;
    snprintf(kid, 17, "%.*s", (int)(colon - p), p);
    *blob64 = colon + 1;
    if (bp_is_encrypted_v1(value)) return 0;
    const char *d = colon + 1, *end = strchr(d, ':');
    if (!end) return -1;
    size_t n = (size_t)(end - d);
    bp_buf_reserve(dest, n + 1);
    int len = b64_decode(d, n, (unsigned char *)dest->data + dest->len, n + 1);
    if (len < 0 || memchr(dest->data + dest->len, '\0', (size_t)len)) return -1;
    dest->len += (size_t)len;
    dest->data[dest->len] = '\0';
    *blob64 = end + 1;
    return 0;
}

int bp_sealed_destination(const char *value, bp_buf *dest)
{
    char kid[17];
    const char *blob64;
    return split_sealed(value, kid, dest, &blob64);
}

/* Decrypt a sealed value into out (plain text).  dest: the destination the
 * caller is about to send it to (it must be the one it was sealed for), or
 * NULL for the one it was sealed for (a rotation re-wraps it as it is).
 * v1 values have none and open for any.  The error says which key it needs
 * and why it failed, never what it holds. */
int bp_decrypt_secret(bp_keyring *r, const char *integration, const char *field, const char *dest, const char *value,
                      bp_buf *out, bp_error *err)
{
    char kid[17];
    const char *blob64;
    bp_buf sealed_for;
    bp_buf_init(&sealed_for);
    bp_buf_add(&sealed_for, "", 0);
    if (split_sealed(value, kid, &sealed_for, &blob64) < 0) {
        bp_error_set(err, "the stored secret '%s' of integration %s is not in the bp:enc:v2 form", field, integration);
        bp_buf_free(&sealed_for);
        return -1;
    }
    int v1 = bp_is_encrypted_v1(value);
    if (!v1 && dest && strcmp(dest, sealed_for.data) != 0) {
        bp_error_set(err, "the secret '%s' of integration %s was stored for [%s] but would now be sent to [%s]: it "
                     "is not sent to another destination; enter it again together with the new URL", field,
                     integration, sealed_for.data, dest);
        bp_buf_free(&sealed_for);
        return -1;
    }
    size_t b64len = strlen(blob64);
    unsigned char *blob = bp_malloc(b64len + 1);
    int blen = b64_decode(blob64, b64len, blob, b64len);
    unsigned char key[32];
    int found = 0;
    pthread_mutex_lock(&r->mu);
    int rc = refresh(r, err);
    for (int i = 0; rc == 0 && i < r->n; i++)
        if (!strcmp(r->keys[i].kid, kid)) { memcpy(key, r->keys[i].key, 32); found = 1; }
    pthread_mutex_unlock(&r->mu);
    if (rc == 0 && !found) {
        bp_error_set(err, "the secret '%s' of integration %s was encrypted with master key '%s', which %s does not "
                     "hold: restore that key file (or set BLUEPRINT_MASTER_KEY_FILE to it)", field, integration, kid,
                     r->path);
        rc = -1;
    } else if (rc == 0 && blen < NONCE_LEN + TAG_LEN) {
        bp_error_set(err, "the stored secret '%s' of integration %s is damaged (too short)", field, integration);
        rc = -1;
    }
    if (rc == 0) {
        size_t clen = (size_t)blen - NONCE_LEN - TAG_LEN;
        bp_buf aad;
        bp_buf_init(&aad);
        aad_for(&aad, v1, integration, field, sealed_for.data);
        bp_buf_reserve(out, clen + 1);
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        int n = 0, fin = 0;
        if (!c || EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, NONCE_LEN, NULL) != 1 ||
            EVP_DecryptInit_ex(c, NULL, NULL, key, blob) != 1 ||
            EVP_DecryptUpdate(c, NULL, &n, (const unsigned char *)aad.data, (int)aad.len) != 1 ||
            EVP_DecryptUpdate(c, (unsigned char *)out->data + out->len, &n, blob + NONCE_LEN, (int)clen) != 1 ||
            EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, TAG_LEN, blob + NONCE_LEN + clen) != 1 ||
            EVP_DecryptFinal_ex(c, (unsigned char *)out->data + out->len + n, &fin) != 1) {
            bp_error_set(err, "the secret '%s' of integration %s does not decrypt with master key '%s' of %s: the "
                         "key file is not the one it was written with, or the stored value was altered", field,
                         integration, kid, r->path);
            rc = -1;
        } else {
            out->len += (size_t)(n + fin);
            out->data[out->len] = '\0';
        }
        EVP_CIPHER_CTX_free(c);
        bp_buf_free(&aad);
    }
    OPENSSL_cleanse(key, sizeof key);
    free(blob);
    bp_buf_free(&sealed_for);
    return rc;
}
