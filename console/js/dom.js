// DOM helpers.  Every piece of data reaches the page through textContent or
// a text node: event data is attacker-controlled, so nothing here ever
// assigns innerHTML, and attributes that could run code are refused.

const PROPS = new Set(['value', 'checked', 'disabled', 'readOnly', 'selected', 'hidden', 'required',
  'multiple', 'open', 'indeterminate', 'spellcheck', 'autofocus']);

function safeHref(v) {
  const s = String(v);
  // same-origin paths and fragments only: no javascript:, data: or other origins
  if (/^(#|\/(?!\/))/.test(s)) return s;
  throw new Error('refused href ' + s.slice(0, 40));
}

// h('div', {class: 'x', onclick: fn, text: 'shown as text'}, child, 'text', [more])
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
      else if (k === 'text') el.textContent = String(v);
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k.startsWith('on') || k === 'style' || k === 'srcdoc') throw new Error('refused attribute ' + k);
      else if (PROPS.has(k)) el[k] = v;
      else if (k === 'href' || k === 'src' || k === 'action') el.setAttribute(k, safeHref(v));
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  clear(el);
  return append(el, children);
}

// ---- formatting ---------------------------------------------------------------------------

// JSON parsed without losing digits: a number whose text would not survive
// a round trip through a double (a 19-digit order id, 1.0) keeps its source
// text and is written back as it came (JSON.rawJSON), so what the page shows
// and what it sends is the event's exact JSON.
export function parseJSON(text) {
  const raw = typeof JSON.rawJSON === 'function';
  return JSON.parse(text, function (key, value, ctx) {
    if (raw && typeof value === 'number' && ctx && typeof ctx.source === 'string' && String(value) !== ctx.source) {
      return JSON.rawJSON(ctx.source);
    }
    return value;
  });
}

export function pretty(v) {
  if (v === undefined) return '';
  try { return JSON.stringify(v, null, 2); } catch (e) { return String(v); }
}

export function compact(v) {
  try { return JSON.stringify(v); } catch (e) { return String(v); }
}

export function isRaw(v) {
  return typeof JSON.isRawJSON === 'function' && JSON.isRawJSON(v);
}

export function fmtTime(ms) {
  if (ms == null) return '';
  const d = new Date(Number(ms) < 1e12 ? Number(ms) * 1000 : Number(ms));
  if (isNaN(d)) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtClock(ms) {
  const s = fmtTime(ms);
  return s ? s.slice(11) : '';
}

export function fmtAgo(ms) {
  if (ms == null) return '';
  const t = Number(ms) < 1e12 ? Number(ms) * 1000 : Number(ms);
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 0) return 'in ' + fmtDuration(-s * 1000);
  if (s < 5) return 'just now';
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ago';
  return Math.floor(s / 86400) + ' d ago';
}

// "8 s ago" that stays true: every element made by ago() is rewritten by
// one page-wide timer while it is in the document.
export function ago(ms, props = {}) {
  return h('span', Object.assign({ class: 'ago', title: fmtTime(ms), dataset: { ago: String(ms) }, text: fmtAgo(ms) }, props));
}
let agoTimer = null;
function tickAgo() {
  const els = document.querySelectorAll('[data-ago]');
  for (const el of els) {
    const t = fmtAgo(Number(el.dataset.ago));
    if (el.textContent !== t) el.textContent = t;
  }
}
if (typeof window !== 'undefined' && !agoTimer) agoTimer = setInterval(tickAgo, 1000);

export function fmtDuration(ms) {
  if (ms == null) return '';
  const n = Number(ms);
  if (n < 1000) return Math.round(n) + ' ms';
  if (n < 60000) return (n / 1000).toFixed(n < 10000 ? 1 : 0) + ' s';
  return Math.round(n / 60000) + ' min';
}

export function titleCase(s) {
  return String(s || '').split(/[_\s-]+/).filter(Boolean)
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(' ');
}

// ---- small components ---------------------------------------------------------------------

const OUTCOME_CLASS = {
  delivered: 'ok', deliver: 'ok', drop: 'muted', dropped: 'muted', error: 'err', dead_letter: 'err',
  dead: 'err', held: 'warn', retrying: 'warn', pending: 'info', duplicate: 'muted', queued: 'info',
};

export function badge(label, kind) {
  const cls = kind || OUTCOME_CLASS[label] || 'muted';
  return h('span', { class: 'badge badge-' + cls, text: String(label).replace(/_/g, ' ') });
}

export function statusCode(code) {
  if (code == null) return h('span', { class: 'muted', text: '—' });
  const n = Number(code);
  const cls = n >= 200 && n < 300 ? 'ok' : n === 429 || n >= 500 ? 'warn' : 'err';
  return h('span', { class: 'code code-' + cls, text: String(code) });
}

export function spinner() {
  return h('span', { class: 'spinner', 'aria-hidden': 'true' });
}

export function icon(name) {
  return h('span', { class: 'icon icon-' + name, 'aria-hidden': 'true' });
}

export function button(label, onclick, opts = {}) {
  return h('button', {
    type: opts.type || 'button',
    class: ['btn', opts.kind ? 'btn-' + opts.kind : '', opts.small ? 'btn-sm' : '', opts.class],
    onclick, disabled: opts.disabled, title: opts.title, id: opts.id, dataset: opts.dataset,
    'aria-label': opts.ariaLabel,
  }, opts.icon ? icon(opts.icon) : null, label);
}

// An on/off switch: a checkbox styled as a toggle, labelled for screen readers.
export function toggle(checked, label, onchange, opts = {}) {
  const input = h('input', { type: 'checkbox', class: 'switch-input', checked, disabled: opts.disabled,
    'aria-label': label, dataset: opts.dataset });
  if (onchange) input.addEventListener('change', () => onchange(input.checked, input));
  return h('label', { class: ['switch', opts.disabled ? 'switch-disabled' : ''], title: opts.title },
    input, h('span', { class: 'switch-track', 'aria-hidden': 'true' }, h('span', { class: 'switch-knob' })));
}

export function empty(title, detail, ...actions) {
  return h('div', { class: 'empty' }, h('p', { class: 'empty-title', text: title }),
    detail ? h('p', { class: 'empty-detail', text: detail }) : null,
    actions.length ? h('div', { class: 'empty-actions' }, actions) : null);
}

export function errorBox(err, title) {
  const msg = err && err.message ? err.message : String(err);
  return h('div', { class: 'alert alert-err', role: 'alert' },
    h('strong', { text: title || 'Something went wrong' }), ' ',
    h('span', { text: msg }),
    err && err.code ? h('code', { class: 'alert-code', text: err.code }) : null);
}

export function kv(rows) {
  return h('dl', { class: 'kv' }, rows.filter(Boolean).map(([k, v]) => [
    h('dt', { text: k }), h('dd', {}, v == null || v === '' ? h('span', { class: 'muted', text: '—' }) : v),
  ]));
}

export function codeBlock(text, cls) {
  return h('pre', { class: ['code-block', cls] }, h('code', { text: text == null ? '' : String(text) }));
}

let toastSeq = 0;
export function toast(message, kind = 'ok') {
  const box = document.getElementById('toasts');
  if (!box) return;
  const t = h('div', { class: 'toast toast-' + kind, dataset: { seq: String(++toastSeq) } }, h('span', { text: message }));
  box.appendChild(t);
  while (box.children.length > 3) box.firstChild.remove();
  setTimeout(() => t.classList.add('toast-out'), kind === 'err' ? 7000 : 3500);
  setTimeout(() => t.remove(), kind === 'err' ? 7600 : 4100);
}

// A modal confirmation built on <dialog>.  Resolves true when confirmed.
// With opts.typeToConfirm the confirm button stays disabled until that text is typed.
export function confirmDialog({ title, body, confirmLabel = 'Confirm', danger = false, typeToConfirm = null }) {
  return new Promise((resolve) => {
    const input = typeToConfirm != null
      ? h('input', { type: 'text', class: 'input', autocomplete: 'off', spellcheck: false, id: 'confirm-input',
        'aria-label': 'Type ' + typeToConfirm + ' to confirm' })
      : null;
    const ok = button(confirmLabel, null, { kind: danger ? 'danger' : 'primary', id: 'confirm-ok', disabled: !!input });
    const cancel = button('Cancel', null, { id: 'confirm-cancel' });
    const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': 'dlg-title' },
      h('h2', { id: 'dlg-title', text: title }),
      body ? (body instanceof Node ? body : h('p', { text: body })) : null,
      input ? h('p', { class: 'field-help' }, 'Type ', h('code', { text: typeToConfirm }), ' to confirm.') : null,
      input,
      h('div', { class: 'dialog-actions' }, cancel, ok));
    let done = false;
    const finish = (v) => { if (done) return; done = true; dlg.close(); dlg.remove(); resolve(v); };
    if (input) input.addEventListener('input', () => { ok.disabled = input.value !== typeToConfirm; });
    ok.addEventListener('click', () => finish(true));
    cancel.addEventListener('click', () => finish(false));
    dlg.addEventListener('cancel', (e) => { e.preventDefault(); finish(false); });
    document.body.appendChild(dlg);
    dlg.showModal();
    (input || ok).focus();
  });
}

export function debounce(fn, ms) {
  let t = null;
  const d = (...args) => { clearTimeout(t); t = setTimeout(() => { t = null; fn(...args); }, ms); };
  d.cancel = () => { clearTimeout(t); t = null; };
  d.flush = (...args) => { clearTimeout(t); t = null; fn(...args); };
  return d;
}

export function copyButton(text, label = 'Copy') {
  return button(label, async (e) => {
    const b = e.currentTarget;
    try { await navigator.clipboard.writeText(text); b.textContent = 'Copied'; } catch (err) { b.textContent = 'Copy failed'; }
    setTimeout(() => { b.textContent = label; }, 1500);
  }, { small: true, kind: 'ghost' });
}
