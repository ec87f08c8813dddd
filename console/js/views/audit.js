// The audit log: who changed what, newest first, paged with next_cursor.
import { h, replace, button, empty, spinner, fmtTime, fmtAgo } from '../dom.js';
import { get, enc } from '../api.js';

export async function render(main, params, ctx) {
  const action = h('select', { class: 'input input-inline', id: 'audit-action', 'aria-label': 'Action' },
    h('option', { value: '', text: 'All actions' }),
    ['integration.install', 'integration.update', 'integration.delete', 'dead_letters.replay', 'blueprint.reload', 'blueprint.save', 'blueprint.rollback']
      .map((a) => h('option', { value: a, text: a })));
  const actor = h('input', { type: 'search', class: 'input input-inline', id: 'audit-actor', placeholder: 'Actor', 'aria-label': 'Actor', autocomplete: 'off' });
  const tbody = h('tbody', {});
  const more = button('Load more', () => load(false), { small: true, id: 'audit-more' });
  let cursor = null;
  replace(main, h('div', { class: 'page' },
    h('div', { class: 'page-head' }, h('div', {}, h('h1', { text: 'Audit Log' }),
      h('p', { class: 'page-sub', text: 'Every change and who made it: installs, config and event changes, replays, blueprint saves and reloads.' }))),
    h('div', { class: 'toolbar' }, action, actor),
    h('div', { class: 'card card-flush' }, h('table', { class: 'table table-stack', id: 'audit-table' },
      h('thead', {}, h('tr', {}, h('th', { text: 'When' }), h('th', { text: 'Actor' }), h('th', { text: 'Action' }),
        h('th', { class: 'hide-narrow', text: 'Integration' }), h('th', { class: 'hide-narrow', text: 'Revision' }), h('th', { text: 'Detail' }))),
      tbody)),
    h('div', { class: 'form-actions' }, more)));

  async function load(reset) {
    if (reset) { cursor = null; replace(tbody, h('tr', {}, h('td', { colspan: '6' }, spinner(), 'Loading…'))); }
    let q = '?limit=100';
    if (action.value) q += '&action=' + enc(action.value);
    if (actor.value.trim()) q += '&actor=' + enc(actor.value.trim());
    if (cursor) q += '&cursor=' + enc(cursor);
    const r = await get('/v1/admin/audit-log' + q);
    if (reset) replace(tbody);
    const rows = r.entries || [];
    if (reset && !rows.length) tbody.appendChild(h('tr', {}, h('td', { colspan: '6' }, empty('Nothing recorded yet', ''))));
    for (const e of rows) {
      tbody.appendChild(h('tr', {},
        h('td', { class: 'nowrap', title: fmtTime(e.at), text: fmtAgo(e.at) }),
        h('td', {}, h('span', { text: e.actor || '' }), e.role ? h('span', { class: 'role role-' + e.role, text: e.role }) : null),
        h('td', {}, h('code', { text: e.action || '' })),
        h('td', { class: 'hide-narrow' }, e.integration_id ? h('a', { href: '#/integration/' + enc(e.integration_id), class: 'mono', text: e.integration_id }) : ''),
        h('td', { class: 'hide-narrow mono', text: e.revision_after != null ? `${e.revision_before ?? '–'} → ${e.revision_after}` : '' }),
        h('td', { class: 'cell-detail', text: e.detail || '' })));
    }
    cursor = r.next_cursor || null;
    more.hidden = !cursor;
  }
  action.addEventListener('change', () => load(true));
  let t = null;
  actor.addEventListener('input', () => { clearTimeout(t); t = setTimeout(() => load(true), 300); });
  await load(true);
  return () => clearTimeout(t);
}
