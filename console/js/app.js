// The console shell: sign-in, the sidebar, and a hash router that mounts one
// view at a time (each view returns a cleanup function: streams and timers
// stop when the operator leaves the page).
import { h, clear, replace, button, errorBox, toast } from './dom.js';
import { setUnauthorizedHandler, ApiError } from './api.js';
import * as session from './session.js';
import * as integrations from './views/integrations.js';
import * as integration from './views/integration.js';
import * as live from './views/live.js';
import * as editor from './views/editor.js';
import * as audit from './views/audit.js';

const app = document.getElementById('app');
const ctx = {
  session: null,
  navigate(hash) { if (location.hash === hash) route(); else location.hash = hash; },
  signOut,
};

const NAV = [
  { id: 'integrations', label: 'Integrations', href: '#/integrations', icon: 'grid' },
  { id: 'live', label: 'Live Events', href: '#/live', icon: 'pulse' },
  { id: 'blueprints', label: 'Blueprints', href: '#/blueprints', icon: 'code' },
  { id: 'audit', label: 'Audit Log', href: '#/audit', icon: 'list' },
];

const ROUTES = [
  [/^\/?$/, 'integrations', () => integrations.render, () => ({ tab: 'installed' })],
  [/^\/integrations$/, 'integrations', () => integrations.render, () => ({ tab: 'installed' })],
  [/^\/integrations\/library$/, 'integrations', () => integrations.render, () => ({ tab: 'library' })],
  [/^\/install\/([^/]+)$/, 'integrations', () => integrations.renderInstall, (m) => ({ vendor: m[1] })],
  [/^\/integration\/([^/]+)(?:\/([a-z-]+))?$/, 'integrations', () => integration.render, (m) => ({ id: m[1], tab: m[2] || 'overview' })],
  [/^\/live(?:\/([^/]+))?$/, 'live', () => live.renderPage, (m) => ({ id: m[1] || null })],
  [/^\/blueprints$/, 'blueprints', () => editor.renderList, () => ({})],
  [/^\/editor\/([^/]+)(?:\/([^/]+))?$/, 'blueprints', () => editor.render, (m) => ({ vendor: m[1], file: m[2] || null })],
  [/^\/audit$/, 'audit', () => audit.render, () => ({})],
];

let main = null;
let navLinks = {};
let cleanup = null;
let routeSeq = 0;

function layout() {
  const s = ctx.session;
  const nav = h('nav', { class: 'nav', 'aria-label': 'Main' },
    NAV.map((n) => {
      const a = h('a', { href: n.href, class: 'nav-link', id: 'nav-' + n.id, dataset: { nav: n.id }, title: n.label },
        h('span', { class: 'nav-icon nav-icon-' + n.icon, 'aria-hidden': 'true' }), h('span', { text: n.label }));
      navLinks[n.id] = a;
      a.addEventListener('click', () => app.classList.remove('nav-open'));
      return a;
    }));
  const user = h('div', { class: 'sidebar-user' },
    h('div', { class: 'user-line' },
      h('span', { class: 'user-name', id: 'user-subject', text: s.subject || 'signed in' }),
      h('span', { class: 'role role-' + s.role, id: 'user-role', text: s.role })),
    s.role === 'viewer' ? h('p', { class: 'user-note', text: 'Read-only: viewers can look, not change.' }) : null,
    button('Sign out', signOut, { kind: 'ghost', small: true, id: 'sign-out' }));
  const menu = h('button', { type: 'button', class: 'menu-btn', 'aria-label': 'Menu', 'aria-expanded': 'false', id: 'menu-toggle' },
    h('span', { class: 'menu-bars', 'aria-hidden': 'true' }));
  menu.addEventListener('click', () => {
    // the drawer slides only when asked to, not when the window is resized
    app.classList.add('nav-anim');
    clearTimeout(menu.animTimer);
    menu.animTimer = setTimeout(() => app.classList.remove('nav-anim'), 300);
    const open = app.classList.toggle('nav-open');
    menu.setAttribute('aria-expanded', String(open));
  });
  main = h('main', { class: 'main', id: 'main', tabindex: '-1' });
  app.className = 'app';
  replace(app,
    h('header', { class: 'topbar' }, menu, brand()),
    h('aside', { class: 'sidebar', id: 'sidebar' }, brand(), nav, user),
    h('div', { class: 'scrim', onclick: () => app.classList.remove('nav-open') }),
    main);
}

function brand() {
  return h('a', { class: 'brand', href: '#/integrations' },
    h('span', { class: 'brand-mark', 'aria-hidden': 'true' }),
    h('span', { class: 'brand-text' }, h('strong', { text: 'Signal' }), ' Blueprints'));
}

async function route() {
  if (!ctx.session || !main) return;
  const seq = ++routeSeq;
  const path = location.hash.replace(/^#/, '') || '/';
  if (cleanup) { try { cleanup(); } catch (e) { console.error(e); } cleanup = null; }
  let found = null;
  for (const [re, nav, view, params] of ROUTES) {
    const m = re.exec(path);
    if (m) { found = { nav, view: view(), params: params(m.map((x) => (x == null ? x : decodeURIComponent(x)))) }; break; }
  }
  app.classList.toggle('rail', !!found && found.view === editor.render);
  for (const [id, a] of Object.entries(navLinks)) {
    if (found && found.nav === id) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  clear(main);
  main.scrollTop = 0;
  if (!found) {
    main.appendChild(h('div', { class: 'page' }, h('h1', { text: 'Not found' }),
      h('p', {}, 'No page at this address. ', h('a', { href: '#/integrations', text: 'Back to Integrations' }))));
    return;
  }
  const isCurrent = () => seq === routeSeq;
  try {
    const c = await found.view(main, found.params, Object.assign({ isCurrent }, ctx));
    if (isCurrent()) cleanup = typeof c === 'function' ? c : null;
    else if (typeof c === 'function') c();
  } catch (e) {
    if (!isCurrent() || e.name === 'AbortError') return;
    console.error(e);
    if (e instanceof ApiError && e.status === 401) return;
    replace(main, h('div', { class: 'page' }, errorBox(e, e.status === 404 ? 'Not found' : 'Could not load this page')));
  }
}

function signInScreen(message) {
  if (cleanup) { try { cleanup(); } catch (e) { /* gone */ } cleanup = null; }
  ctx.session = null;
  main = null;
  navLinks = {};
  const input = h('textarea', { class: 'input mono', id: 'signin-token', rows: '4', spellcheck: false, autocomplete: 'off',
    placeholder: 'eyJhbGciOiJIUzI1NiIs…', 'aria-describedby': 'signin-help' });
  const err = h('div', { class: 'signin-error', id: 'signin-error', role: 'alert' });
  if (message) err.appendChild(h('div', { class: 'alert alert-err' }, h('span', { text: message })));
  const submit = button('Sign in', null, { kind: 'primary', type: 'submit', id: 'signin-submit' });
  const form = h('form', { class: 'signin-form', novalidate: true },
    h('label', { for: 'signin-token', class: 'field-label', text: 'API or sign-in token' }),
    input,
    h('p', { class: 'field-help', id: 'signin-help' },
      'Open the sign-in link that ', h('code', { text: 'make run' }), ' prints, or paste a token from ',
      h('code', { text: 'blueprint token --role viewer|editor|admin' }), '.'),
    err, submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    if (!input.value.trim()) { input.focus(); return; }
    submit.disabled = true;
    clear(err);
    try {
      const s = await session.signInWith(input.value);
      start(s);
    } catch (ex) {
      err.appendChild(errorBox(ex, 'Sign-in failed'));
      submit.disabled = false;
    }
  });
  app.className = 'signin';
  replace(app, h('div', { class: 'signin-card' },
    h('div', { class: 'signin-brand' }, h('span', { class: 'brand-mark', 'aria-hidden': 'true' }),
      h('span', { class: 'brand-text' }, h('strong', { text: 'Signal' }), ' Blueprints')),
    h('h1', { text: 'Sign in to the console' }),
    form));
  input.focus();
}

function start(s) {
  ctx.session = s;
  layout();
  if (!location.hash || location.hash === '#' || location.hash.startsWith('#signin')) {
    history.replaceState(null, '', location.pathname + location.search + '#/integrations');
  }
  route();
}

async function signOut() {
  await session.signOut();
  history.replaceState(null, '', location.pathname + location.search);
  signInScreen();
}

setUnauthorizedHandler(() => {
  if (!ctx.session) return;
  session.clear();
  signInScreen('Your session has ended (expired or revoked). Sign in again.');
});

window.addEventListener('hashchange', () => {
  if (location.hash.startsWith('#signin=')) { boot(); return; }
  route();
});

async function boot() {
  const signin = session.takeSigninFragment();
  if (signin) {
    try {
      start(await session.exchange(signin));
      toast('Signed in');
    } catch (e) {
      signInScreen(e.status === 401
        ? 'This sign-in link has expired or was already used. Run `make run` again for a fresh one, or paste a token.'
        : 'Sign-in failed: ' + e.message);
    }
    return;
  }
  const s = session.load();
  if (!s) { signInScreen(); return; }
  try {
    start(await session.refresh(s));
  } catch (e) {
    session.clear();
    signInScreen(e.status === 401 ? 'Your session has ended. Sign in again.' : 'Could not reach the server: ' + e.message);
  }
}

boot();
