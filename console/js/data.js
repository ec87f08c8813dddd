// Shared look-ups with a short cache: the catalog changes only when a
// blueprint does, integrations when someone installs or deletes one.
import { get, enc } from './api.js';
import { titleCase, badge } from './dom.js';

let catalog = null;
let catalogAt = 0;

export async function getCatalog(force = false) {
  if (!force && catalog && Date.now() - catalogAt < 30000) return catalog;
  const r = await get('/v1/admin/integration-catalog');
  catalog = r.integrations || r.catalog || [];
  catalogAt = Date.now();
  return catalog;
}

export function getVendor(vendor) {
  return get('/v1/admin/integration-catalog/' + enc(vendor));
}

export async function listIntegrations() {
  const r = await get('/v1/admin/integrations');
  return (r.integrations || []).filter((i) => !i.deleted);
}

export function getIntegration(id) {
  return get('/v1/admin/integrations/' + enc(id));
}

const CATEGORY_NAMES = { marketing_automation: 'Marketing Automation', crm: 'CRM', webhooks: 'Webhooks' };
export function categoryName(c) {
  return CATEGORY_NAMES[c] || titleCase(c || 'Other');
}

// "ActiveCampaign" -> "AC", "Webhook" -> "WE": a monogram for the vendor tile
export function monogram(name) {
  const s = String(name || '?');
  const caps = s.replace(/[^A-Z]/g, '');
  return (caps.length >= 2 ? caps.slice(0, 2) : s.slice(0, 2)).toUpperCase();
}

// A stable colour (one of 8 CSS classes) per vendor, for its tile.
export function tileClass(name) {
  let x = 0;
  for (const ch of String(name)) x = (x * 31 + ch.charCodeAt(0)) % 9973;
  return 'tile tile-' + (x % 8);
}

// The label an outcome line goes by: what happened to the event.
export function outcomeOf(item) {
  const o = item.outcome || item;
  if (item.state === 'retrying' || o.outcome === 'retrying') return 'retrying';
  if (item.state === 'pending' || item.state === 'queued') return item.state;
  return o.outcome || item.state || 'pending';
}

// "Order Completed" for a track event, the type otherwise
export function eventName(o, ev) {
  if (o && o.event) return o.event;
  if (ev && ev.event) return ev.event;
  if (ev && ev.type === 'page' && ev.name) return 'page · ' + ev.name;
  return (o && o.type) || (ev && ev.type) || '?';
}

// An integration's health (the API's "health": delivering, idle, paused,
// backing_off, blueprint_error) as a badge label and kind; "stopped" when
// the server does not deliver it at all (delivery.running false).
const HEALTH = {
  delivering: ['delivering', 'ok'], idle: ['idle', 'muted'], backing_off: ['backing off', 'warn'],
  paused: ['paused', 'err'], blueprint_error: ['blueprint error', 'err'], stopped: ['stopped', 'muted'],
};
export function healthOf(it) {
  const hl = it.health || {};
  let state = hl.state || 'delivering';
  if ((it.delivery || {}).running === false && state !== 'blueprint_error') state = 'stopped';
  const [label, kind] = HEALTH[state] || [state, 'muted'];
  return { state, label, kind, reason: hl.reason || '', since: hl.since, until: hl.until,
    vendorStatus: hl.vendor_status, vendorAnswer: hl.vendor_answer || '' };
}

// The health badge of an integration (its reason as the tooltip).
export function healthBadge(it, id) {
  const x = healthOf(it);
  const b = badge(x.label, x.kind);
  if (id) b.id = id;
  b.dataset.health = x.state;
  if (x.reason) b.title = x.reason;
  return b;
}

// A drop reason as the console shows it: the engine's reasons about a
// disabled or not enabled event end with the advice for a config file
// ("add to the config: events: {…}"); here the fix is the Events tab, so
// that advice is left out and `enable` names the event to switch on there
// (the CLI keeps the file's wording).  customEvent: a track event that no
// config mentions yet (offered by name in the Events tab).
const DROPS = [
  [/^custom event not enabled: '(.+)' \(to send it, add to the config: .*\)$/, (n) => `custom event not enabled: '${n}'`, true],
  [/^custom event '(.+)' is disabled in the config$/, (n) => `custom event '${n}' is disabled`, false],
  [/^event '(.+)' is disabled in (?:the config \(events: enabled: false\)|blueprint\.yaml \(enable it in the config's events: table\))$/,
    (n) => `event '${n}' is disabled`, false],
];
export function consoleReason(reason) {
  const r = String(reason || '');
  for (const [re, text, custom] of DROPS) {
    const m = re.exec(r);
    if (m) return { text: text(m[1]), enable: m[1], customEvent: custom ? m[1] : null };
  }
  return { text: r, enable: null, customEvent: null };
}
