// Line diffs for the page: revisions of an integration, a blueprint's
// unified diffs, dry-run output against the saved version.
import { h } from './dom.js';

// Longest common subsequence over lines: [{op:' '|'-'|'+', text}]
export function lineDiff(a, b) {
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start++;
  let ea = a.length, eb = b.length;
  while (ea > start && eb > start && a[ea - 1] === b[eb - 1]) { ea--; eb--; }
  const A = a.slice(start, ea), B = b.slice(start, eb);
  const out = a.slice(0, start).map((t) => ({ op: ' ', text: t }));
  if (A.length * B.length > 4e6) {
    A.forEach((t) => out.push({ op: '-', text: t }));
    B.forEach((t) => out.push({ op: '+', text: t }));
  } else {
    const n = A.length, m = B.length;
    const L = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
    for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) {
      L[i][j] = A[i] === B[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
    }
    let i = 0, j = 0;
    while (i < n && j < m) {
      if (A[i] === B[j]) { out.push({ op: ' ', text: A[i] }); i++; j++; }
      else if (L[i + 1][j] >= L[i][j + 1]) out.push({ op: '-', text: A[i++] });
      else out.push({ op: '+', text: B[j++] });
    }
    while (i < n) out.push({ op: '-', text: A[i++] });
    while (j < m) out.push({ op: '+', text: B[j++] });
  }
  a.slice(ea).forEach((t) => out.push({ op: ' ', text: t }));
  return out;
}

// Keep `context` unchanged lines around each change; elide the rest.
export function hunks(diff, context = 3) {
  const keep = new Array(diff.length).fill(false);
  diff.forEach((d, i) => {
    if (d.op !== ' ') for (let k = Math.max(0, i - context); k <= Math.min(diff.length - 1, i + context); k++) keep[k] = true;
  });
  const out = [];
  let skipped = 0;
  diff.forEach((d, i) => {
    if (keep[i]) {
      if (skipped) out.push({ op: '…', text: `${skipped} unchanged line${skipped > 1 ? 's' : ''}` });
      skipped = 0;
      out.push(d);
    } else skipped++;
  });
  if (skipped && out.length) out.push({ op: '…', text: `${skipped} unchanged line${skipped > 1 ? 's' : ''}` });
  return out;
}

export function renderDiff(lines, opts = {}) {
  const cls = { '+': 'diff-add', '-': 'diff-del', ' ': 'diff-ctx', '…': 'diff-skip', '@': 'diff-hunk', 'h': 'diff-file' };
  return h('pre', { class: ['diff', opts.class] }, lines.map((d) => h('span', { class: 'diff-line ' + (cls[d.op] || 'diff-ctx') },
    h('span', { class: 'diff-op', 'aria-hidden': 'true', text: d.op === '…' ? '' : d.op === 'h' ? '' : d.op }),
    h('span', { class: 'diff-text', text: d.text }))));
}

// A unified diff as the server writes it ("--- a/page.lua", "@@ …", "+x")
export function renderUnified(text) {
  const lines = String(text || '').replace(/\n$/, '').split('\n').map((l) => {
    if (l.startsWith('+++') || l.startsWith('---') || l.startsWith('diff ') || l.startsWith('index ')) return { op: 'h', text: l };
    if (l.startsWith('@@')) return { op: '@', text: l };
    if (l.startsWith('+')) return { op: '+', text: l.slice(1) };
    if (l.startsWith('-')) return { op: '-', text: l.slice(1) };
    if (l.startsWith('\\')) return { op: '…', text: l };
    return { op: ' ', text: l.slice(1) };
  });
  return renderDiff(lines, { class: 'diff-unified' });
}

// {"config":{"api_url":"x"}} -> ["config.api_url = \"x\""], sorted: a readable
// diff of two JSON documents that does not depend on key order
export function flatten(v, prefix = '', out = []) {
  if (v && typeof v === 'object' && !Array.isArray(v) && !(typeof JSON.isRawJSON === 'function' && JSON.isRawJSON(v))) {
    const keys = Object.keys(v).sort();
    if (!keys.length && prefix) out.push(prefix + ' = {}');
    for (const k of keys) flatten(v[k], prefix ? prefix + '.' + k : k, out);
  } else {
    out.push(prefix + ' = ' + JSON.stringify(v));
  }
  return out;
}
