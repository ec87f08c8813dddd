// The Management API client: one fetch wrapper that adds the session's
// bearer token and turns {"error":{code,message,field,file,line}} answers into
// ApiError.  The live-events stream is read with fetch() too, since
// EventSource cannot send an Authorization header.
import { parseJSON } from './dom.js';

let token = null;
let onUnauthorized = null;

export function setToken(t) { token = t; }
export function getToken() { return token; }
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export class ApiError extends Error {
  constructor(status, body, fallback) {
    const e = body && body.error ? body.error : {};
    super(e.message || fallback || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || (status === 0 ? 'NETWORK' : 'HTTP_' + status);
    this.field = e.field || null;
    this.file = e.file || null;
    this.line = e.line || null;
    this.body = body;
  }
}

export async function api(method, path, body, opts = {}) {
  const headers = { Accept: 'application/json' };
  const auth = opts.token !== undefined ? opts.token : token;
  if (auth) headers.Authorization = 'Bearer ' + auth;
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = opts.contentType || 'application/json';
    payload = typeof body === 'string' ? body : JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload, signal: opts.signal, cache: 'no-store', credentials: 'omit' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, null, 'cannot reach the server: ' + e.message);
  }
  const text = res.status === 204 ? '' : await res.text();
  let data = null;
  if (text) {
    try { data = parseJSON(text); } catch (e) { data = null; }
  }
  if (!res.ok) {
    const err = new ApiError(res.status, data, text && !data ? text.slice(0, 200) : null);
    if (res.status === 401 && !opts.noAuthRedirect && onUnauthorized) onUnauthorized(err);
    throw err;
  }
  return data;
}

export const get = (p, o) => api('GET', p, undefined, o);
export const post = (p, b, o) => api('POST', p, b === undefined ? {} : b, o);
export const put = (p, b, o) => api('PUT', p, b, o);
export const patch = (p, b, o) => api('PATCH', p, b, o);
export const del = (p, o) => api('DELETE', p, undefined, o);

export const enc = encodeURIComponent;

// Server-Sent Events over fetch.  onEvent(name, data) for each event;
// onState('open'|'closed'|'error', detail).  Reconnects with backoff until
// the returned stop() is called.
export function stream(path, { onEvent, onState }) {
  let stopped = false;
  let ctrl = null;
  let delay = 1000;
  let timer = null;

  async function connect() {
    if (stopped) return;
    ctrl = new AbortController();
    try {
      const res = await fetch(path, {
        headers: { Authorization: 'Bearer ' + token, Accept: 'text/event-stream' },
        signal: ctrl.signal, cache: 'no-store', credentials: 'omit',
      });
      if (!res.ok) {
        let data = null;
        try { data = parseJSON(await res.text()); } catch (e) { /* not JSON */ }
        const err = new ApiError(res.status, data);
        if (res.status === 401 && onUnauthorized) { onUnauthorized(err); stopped = true; }
        throw err;
      }
      onState && onState('open');
      delay = 1000;
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      let name = 'message';
      let data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf[nl] === '\r' && buf[nl + 1] === '\n' ? 2 : 1));
          if (line === '') {
            if (data.length) {
              const text = data.join('\n');
              let parsed = text;
              try { parsed = parseJSON(text); } catch (e) { /* plain text event */ }
              try { onEvent(name, parsed); } catch (e) { console.error(e); }
            }
            name = 'message';
            data = [];
          } else if (line.startsWith(':')) {
            // comment / keep-alive
          } else {
            const i = line.indexOf(':');
            const field = i < 0 ? line : line.slice(0, i);
            let val = i < 0 ? '' : line.slice(i + 1);
            if (val.startsWith(' ')) val = val.slice(1);
            if (field === 'event') name = val;
            else if (field === 'data') data.push(val);
          }
        }
      }
      if (!stopped) onState && onState('closed');
    } catch (e) {
      if (stopped || e.name === 'AbortError') return;
      onState && onState('error', e);
    }
    if (!stopped) {
      timer = setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    }
  }
  connect();
  return function stop() {
    stopped = true;
    clearTimeout(timer);
    if (ctrl) ctrl.abort();
  };
}
