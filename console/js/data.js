// Shared look-ups with a short cache: the catalog changes only when a
// blueprint does, integrations when someone installs or deletes one.
import { get, enc } from './api.js';
import { titleCase } from './dom.js';

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
