// The ActiveCampaign default mapping as JavaScript-based peers run it:
// Node.js with JSON.parse and URLSearchParams, one event per line in, one
// outcome line per event out.  Used by `make bench` as a point of comparison.
// Implements the frozen copy scripts/bench/blueprint/, not the live
// blueprints/activecampaign/; change the three together (scripts/bench/README.md).
//   node scripts/bench/ac_node.js CONFIG.json < events.ndjson > outcomes.ndjson
'use strict';
const fs = require('fs');
const readline = require('readline');
const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const api = cfg.api_url.replace(/\/+$/, '');
const trackUrl = cfg.event_tracking_url || 'https://trackcmp.net/event';
const enabled = {};
for (const [k, v] of Object.entries(cfg.events || {})) enabled[k] = v.enabled;
const allow = (cfg.consent || {}).default_policy === 'allow';
const GRANTED = new Set(['granted', 'true', 'yes', 'allow', 'allowed', 'accepted', 'opt_in', 'opt-in', 'opted_in', '1', 'on']);

const get = (o, ...path) => {
  for (const k of path) { if (o === null || typeof o !== 'object') return undefined; o = o[k]; }
  return o === null ? undefined : o;
};
function consentState(ev) {
  const c = get(ev, 'context', 'consent');
  for (const v of [get(c, 'canonical', 'marketing'), get(c, 'categories', 'marketing'), get(c, 'marketing')]) {
    if (v === undefined) continue;
    if (v === true || v === 1) return 'granted';
    if (typeof v === 'string' && GRANTED.has(v.toLowerCase())) return 'granted';
    return 'denied';
  }
  return undefined;
}
function normEmail(s) {
  if (typeof s !== 'string') return undefined;
  s = s.trim().toLowerCase();
  const at = s.indexOf('@');
  if (at <= 0 || at === s.length - 1 || s.indexOf('@', at + 1) >= 0 || /\s/.test(s)) return undefined;
  return s;
}
const emailOf = (ev) => normEmail(get(ev, 'traits', 'email')) || normEmail(get(ev, 'context', 'traits', 'email'))
  || normEmail(get(ev, 'properties', 'email'));
const sync = (email, contact) => ({ method: 'POST', url: api + '/api/3/contact/sync',
  headers: { 'Api-Token': '[redacted]', 'Content-Type': 'application/json' },
  body: JSON.stringify({ contact: contact || { email } }) });
function slug(name) {
  let s = name.replace(/([a-z])([A-Z])/g, '$1_$2').toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_+|_+$/g, '');
  s = s.slice(0, 32).replace(/_+$/, '');
  return s || undefined;
}
function track(email, name, data, state) {
  if (!cfg.event_tracking_account_id || !cfg.event_tracking_key) return undefined;
  data.consent = state;
  for (const k of Object.keys(data)) if (data[k] === undefined) delete data[k];
  const p = new URLSearchParams();
  p.append('actid', cfg.event_tracking_account_id);
  p.append('event', name);
  p.append('eventdata', JSON.stringify(data));
  p.append('key', 'KEYPLACEHOLDER');
  p.append('visit', JSON.stringify({ email }));
  return [sync(email), { method: 'POST', url: trackUrl,
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: p.toString().replace('KEYPLACEHOLDER', '[redacted]') }];
}
function map(ev) {
  const t = ev.type;
  let name;
  if (t === 'track') {
    name = ev.event;
    if (typeof name !== 'string' || !name) return ['error'];
    if (name !== 'Product Viewed' && name !== 'Order Completed' && !enabled[name]) return ['drop', 'custom event not enabled'];
  } else if (t !== 'page' && t !== 'identify') return ['drop', 'not mapped'];
  let state = consentState(ev);
  if (state === 'denied' || (state === undefined && !allow)) return ['drop', 'consent'];
  state = state || 'unknown';
  const email = emailOf(ev);
  if (!email) return ['drop', 'no email'];
  const p = ev.properties || {};
  if (t === 'identify') {
    const tr = ev.traits || {};
    const c = { email, firstName: get(tr, 'first_name') ?? get(tr, 'firstName'),
      lastName: get(tr, 'last_name') ?? get(tr, 'lastName'), phone: get(tr, 'phone') };
    for (const k of Object.keys(c)) if (c[k] === undefined || c[k] === '') delete c[k];
    return ['deliver', [sync(email, c)]];
  }
  let r;
  if (t === 'page') r = track(email, 'page_view', { url: get(ev, 'context', 'page', 'url') ?? get(p, 'url'),
    title: get(ev, 'context', 'page', 'title') ?? get(p, 'title'), name: ev.name }, state);
  else if (name === 'Product Viewed') r = track(email, 'product_viewed', { product_id: get(p, 'product_id') ?? get(p, 'id'),
    name: get(p, 'name'), price: get(p, 'price'), currency: get(p, 'currency') }, state);
  else if (name === 'Order Completed') r = track(email, 'purchase', { order_id: get(p, 'order_id'),
    revenue: get(p, 'revenue') ?? get(p, 'total'), currency: get(p, 'currency') }, state);
  else {
    const s = slug(name);
    if (!s) return ['drop', 'no usable name'];
    r = track(email, s, { ...p }, state);
  }
  return r ? ['deliver', r] : ['drop', 'Event Tracking is not configured'];
}
const out = [];
let index = 0;
const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on('line', (line) => {
  let rec;
  try {
    const ev = JSON.parse(line);
    const [outcome, res] = (ev && typeof ev === 'object' && !Array.isArray(ev)) ? map(ev) : ['error'];
    rec = outcome === 'deliver' ? { index, outcome, requests: res } : { index, outcome, reason: res };
  } catch (e) { rec = { index, outcome: 'error', reason: 'malformed event' }; }
  out.push(JSON.stringify(rec));
  index++;
  if (out.length === 512) { process.stdout.write(out.join('\n') + '\n'); out.length = 0; }
});
rl.on('close', () => { if (out.length) process.stdout.write(out.join('\n') + '\n'); });
