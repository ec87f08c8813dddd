/*
 * console_api.c — the web console's routes: its files (console.c finds
 * them), sign-in (a one-time sign-in token exchanged for an 8-hour session
 * token), sign-out and "who am I", and the blueprint editor's calls
 * (editor.c does the work; the dry-runs, fixture runs and saves reach it
 * through server.c's editor pool, never on an HTTP thread).
 */
#include "server.h"

#include <stdio.h>
#include <string.h>

#define SESSION_TTL (8 * 3600)     /* the console's session token, seconds */
#define CODEMIRROR_DIR "/usr/share/javascript/codemirror"   /* Debian's libjs-codemirror */

static void console_send(call *k, const char *root, const char *rel)
{
    const char *ctype;
    bp_error err;
    k->r->console = 1;
    if (bp_console_file(root, rel, &k->r->body, &ctype, &err) != 200) {
        bp_reply_error(k->r, 404, "NOT_FOUND", "%s: %s", err.msg, rel);
        return;
    }
    k->r->ctype = ctype;
}

void bp_api_console_index(call *k) { console_send(k, k->s->console_dir, "index.html"); }
void bp_api_console_asset(call *k) { console_send(k, k->s->console_dir, k->rest); }
void bp_api_console_codemirror(call *k) { console_send(k, CODEMIRROR_DIR, k->rest); }

/* The sign-in token's claims when it may open a session: signed here, of
 * use "signin", at most 15 minutes long, and never taken before.  Else
 * why not (and 401). */
static const char *sign_in_refused(server *s, const char *token, bp_claims *who, bp_error *err, int *status)
{
    *status = 401;
    if (bp_jwt_verify(s->secret, token, (int64_t)(bp_wall_ms() / 1000), &s->expect, who, err) < 0) return err->msg;
    if (strcmp(who->use, BP_JWT_USE_SIGNIN) != 0)
        return "not a sign-in token (an API token is used as it is, in the Authorization header)";
    if (!who->jti[0] || !who->iat || who->exp - who->iat > BP_SIGNIN_MAX_TTL)
        return "a sign-in token has a jti and lives at most 15 minutes (blueprint token --sign-in)";
    if (!is_reader(who->role)) return "the token's role is not owner, admin, editor or viewer";
    int taken = bp_registry_spend_jti(s->reg, who->jti, who->exp);
    if (taken < 0) { *status = 503; return "could not record the sign-in in the state store (or the cluster); try again"; }
    return taken ? "this sign-in link was used already: mint a new one (blueprint token --sign-in)" : NULL;
}

/* POST /v1/console/session {"token":SIGN-IN TOKEN}: an ordinary API token of
 * the same role and subject, good for 8 hours. */
void bp_api_console_session(call *k)
{
    bp_doc d;
    bp_doc_init(&d);
    if (bp_parse_body(k->cn, &d, k->r) < 0) { bp_doc_free(&d); return; }
    uint32_t t = bp_jget(&d, 0, "token");
    if (t == BP_NONE || d.nodes[t].type != BP_JSTRING) {
        bp_reply_error(k->r, 400, "BAD_REQUEST", "give {\"token\":\"<the sign-in token of the link's #signin=…>\"}");
        bp_doc_free(&d);
        return;
    }
    bp_claims who;
    bp_error err;
    int status;
    const char *why = sign_in_refused(k->s, bp_jtext(&d, t), &who, &err, &status);
    bp_doc_free(&d);
    if (why) {
        bp_reply_error(k->r, status, status == 401 ? "INVALID_TOKEN" : "STORE_UNAVAILABLE", "%s", why);
        return;
    }
    int64_t now = (int64_t)(bp_wall_ms() / 1000);
    bp_buf token;
    bp_buf_init(&token);
    bp_jwt_sign_session(k->s->secret, who.role, who.sub, k->s->expect.issuer, k->s->expect.audience, now,
                        now + SESSION_TTL, &token);
    bp_buf *b = &k->r->body;
    bp_buf_addc(b, '{');
    bp_write_str(b, "token", token.data, 0);
    bp_write_str(b, "role", who.role, 1);
    bp_write_str(b, "subject", who.sub, 1);
    bp_buf_printf(b, ",\"expires_at\":%lld}", (long long)(now + SESSION_TTL));
    bp_registry_audit(k->s->reg, &who, "console.sign_in", NULL, "a sign-in link was exchanged for an 8-hour session");
    bp_buf_free(&token);
}

/* DELETE /v1/console/session: sign-out.  The session token's jti is spent
 * until the token expires, so a copy of it (another tab, a stolen one) is
 * refused from now on, on every node. */
void bp_api_console_sign_out(call *k)
{
    if (!k->who.jti[0]) {
        bp_reply_error(k->r, 400, "BAD_REQUEST", "not a console session token: an API token from `blueprint token` has no "
                       "session to sign out of; it ends at its exp (mint short-lived ones)");
        return;
    }
    if (bp_registry_spend_jti(k->s->reg, k->who.jti, k->who.exp) < 0) {
        bp_reply_error(k->r, 503, "STORE_UNAVAILABLE", "could not record the sign-out in the state store (or the cluster); "
                       "try again");
        return;
    }
    bp_registry_audit(k->s->reg, &k->who, "console.sign_out", NULL, "the session was signed out (its token revoked)");
    /* its open Live Events streams end now: each one, woken, finds its jti spent */
    bp_streams_end_session(k->s, k->who.jti);
    k->r->status = 204;
}

/* GET /v1/console/me: who the token speaks for and what the console may offer. */
void bp_api_console_me(call *k)
{
    bp_buf *b = &k->r->body;
    bp_buf_addc(b, '{');
    bp_write_str(b, "role", k->who.role, 0);
    bp_write_str(b, "subject", k->who.sub, 1);
    const char *w = is_writer(k->who.role) ? "true" : "false";
    bp_buf_printf(b, ",\"can\":{\"install\":%s,\"edit\":%s,\"replay\":%s}}", w, w, w);
}

/* An editor call's result into the reply: its JSON, or its error with the
 * file and line of an edit that does not load. */
static void editor_reply(call *k, bp_api_result *res)
{
    if (res->status < 400) { k->r->status = res->status; return; }
    bp_buf extra;
    bp_buf_init(&extra);
    if (res->file[0] || (res->code && !strcmp(res->code, "INVALID_BLUEPRINT"))) {   /* null when not known */
        bp_buf_adds(&extra, ",\"file\":");
        if (res->file[0]) bp_json_write_text(&extra, res->file, strlen(res->file)); else bp_buf_adds(&extra, "null");
        if (res->line) bp_buf_printf(&extra, ",\"line\":%d", res->line); else bp_buf_adds(&extra, ",\"line\":null");
    }
    bp_reply_error_with(k->r, res->status, res->code ? res->code : "INTERNAL", res->err.msg, extra.data);
    bp_buf_free(&extra);
}

static void editor_call(call *k, bp_editor_fn *fn)
{
    bp_api_result res = { 200, NULL, { "" }, "", 0, &k->r->body };
    fn(k->s->reg, k->vendor, k->cn->body.data, k->cn->body.len, &k->who, &res);
    editor_reply(k, &res);
}

void bp_api_blueprint_files(call *k) { editor_call(k, bp_editor_files); }
void bp_api_blueprint_dry_run(call *k) { editor_call(k, bp_editor_dry_run); }
void bp_api_blueprint_test(call *k) { editor_call(k, bp_editor_test); }
void bp_api_blueprint_save(call *k) { editor_call(k, bp_editor_save); }
void bp_api_blueprint_revisions(call *k) { editor_call(k, bp_editor_revisions); }
void bp_api_blueprint_rollback(call *k) { editor_call(k, bp_editor_rollback); }
