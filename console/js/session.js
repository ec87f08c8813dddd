// The console session: a sign-in link's one-time token (#signin=…) is
// exchanged for a session token (POST /v1/console/session) and the fragment
// is removed from the address bar at once; a pasted API token works too.
// The session token lives in sessionStorage (this tab only).
import { api, ApiError, setToken } from './api.js';

const KEY = 'bp.console.session';
const WRITERS = new Set(['owner', 'admin', 'editor']);

export function decodeClaims(tok) {
  try {
    const p = String(tok).split('.')[1];
    const b64 = p.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (p.length % 4)) % 4);
    const bin = atob(b64);
    const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    return null;
  }
}

function canFor(role) {
  const w = WRITERS.has(role);
  return { install: w, edit: w, replay: w };
}

export function load() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY) || 'null');
    if (!s || !s.token) return null;
    if (s.expires_at && Number(s.expires_at) * 1000 < Date.now()) { clear(); return null; }
    return s;
  } catch (e) {
    return null;
  }
}

function save(s) {
  sessionStorage.setItem(KEY, JSON.stringify(s));
  setToken(s.token);
  return s;
}

export function clear() {
  sessionStorage.removeItem(KEY);
  setToken(null);
}

// Sign-out ends a console session on the server too (DELETE
// /v1/console/session revokes its token, so a copy of it stops working); a
// pasted API token has no session there.  Forgotten here whatever the server
// answers: an unreachable server must not keep anyone signed in.
export async function signOut() {
  const s = load();
  const claims = s ? decodeClaims(s.token) : null;
  if (claims && claims.jti) {
    try {
      await api('DELETE', '/v1/console/session', undefined, { token: s.token, noAuthRedirect: true });
    } catch (e) { /* already expired or revoked, or the server is away */ }
  }
  clear();
}

// The sign-in link's token, taken out of the URL before anything else runs.
export function takeSigninFragment() {
  const m = /^#signin=([^&]+)/.exec(location.hash);
  if (!m) return null;
  history.replaceState(null, '', location.pathname + location.search + '#/integrations');
  try { return decodeURIComponent(m[1]); } catch (e) { return m[1]; }
}

export async function exchange(signinToken) {
  const r = await api('POST', '/v1/console/session', { token: signinToken }, { token: null, noAuthRedirect: true });
  return save({ token: r.token, role: r.role, subject: r.subject, expires_at: r.expires_at, can: canFor(r.role) });
}

// Who the token is: GET /v1/console/me (role, subject, what the UI may offer).
export async function whoami(tok) {
  try {
    const me = await api('GET', '/v1/console/me', undefined, { token: tok, noAuthRedirect: true });
    return { role: me.role, subject: me.subject, can: Object.assign(canFor(me.role), me.can || {}) };
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 404) throw e;
    // a server without the console endpoint: read the claims, and let the
    // API be the judge of what they allow
    const c = decodeClaims(tok) || {};
    await api('GET', '/v1/admin/integrations', undefined, { token: tok, noAuthRedirect: true });
    return { role: c.role || 'viewer', subject: c.sub || '', can: canFor(c.role) };
  }
}

// A pasted token: a sign-in token is exchanged, an API token used as it is.
export async function signInWith(tok) {
  tok = tok.trim().replace(/^Bearer\s+/i, '');
  const claims = decodeClaims(tok);
  if (!claims) throw new ApiError(401, { error: { code: 'INVALID_TOKEN', message: 'that is not a token (expected three base64url parts separated by dots)' } });
  if (claims.use === 'signin') return exchange(tok);
  const me = await whoami(tok);
  return save({ token: tok, role: me.role, subject: me.subject, expires_at: claims.exp || null, can: me.can });
}

export async function refresh(s) {
  setToken(s.token);
  const me = await whoami(s.token);
  return save(Object.assign({}, s, me));
}
