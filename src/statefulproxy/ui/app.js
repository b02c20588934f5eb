// The session browser: sign in with a key, then the list beside the open session.
// Routes live in the fragment (#/s/<id>), so no session id or key ever reaches a server log.

import * as api from './api.js';
import { showShortcuts } from './dialogs.js';
import { button, h, icon } from './dom.js';
import { SessionList } from './list.js';
import { SessionView } from './session.js';

const root = document.getElementById('app');
const toasts = document.getElementById('toasts');
let config = null;
let shell = null;

function toast(message, kind = 'info') {
  const el = h('div', { class: `toast toast-${kind}` }, icon(kind === 'error' ? 'alert' : 'check'), h('span', { text: message }));
  toasts.append(el);
  setTimeout(() => el.classList.add('toast-out'), 3200);
  setTimeout(() => el.remove(), 3600);
}

function signIn(problem) {
  shell = null;
  const input = h('input', {
    class: 'input input-lg',
    type: 'password',
    name: 'api-key',
    placeholder: 'sk-…',
    autocomplete: 'off',
    spellcheck: 'false',
    'aria-label': 'API key',
    required: true,
  });
  const error = h('p', { class: 'form-error', role: 'alert', text: problem || '' });
  const submit = button('Sign in', 'key', null, { kind: 'primary', type: 'submit' });
  const form = h(
    'form',
    { class: 'signin-card' },
    h('div', { class: 'brand brand-lg' }, h('span', { class: 'brand-mark' }, icon('logo', 22)), h('span', { class: 'brand-name', text: 'statefulproxy' })),
    h('h1', { class: 'signin-title', text: 'Session browser' }),
    h('p', { class: 'signin-text', text: 'Paste the API key your clients send. You will see the sessions that belong to it, and nothing else.' }),
    h('label', { class: 'field' }, h('span', { class: 'field-label', text: 'API key' }), input),
    error,
    submit,
    h('p', { class: 'fine-print' }, icon('key', 14), h('span', { text: 'Kept in this tab only (sessionStorage) and sent to this proxy as a bearer token. Never stored on the server, never put in a URL.' })),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    submit.disabled = true;
    error.textContent = '';
    api.auth.set(key);
    try {
      await api.listSessions({ limit: 1 });
      start();
    } catch (exc) {
      api.auth.clear();
      error.textContent = exc.status === 401 ? 'The proxy refused this key.' : exc.message;
      submit.disabled = false;
      input.focus();
    }
  });
  root.replaceChildren(h('main', { class: 'signin' }, form, config.version ? h('p', { class: 'version', text: `statefulproxy ${config.version}` }) : null));
  root.setAttribute('aria-busy', 'false');
  input.focus();
}

function start() {
  const list = new SessionList({ onError: fail });
  const detail = h('section', { class: 'detail' });
  const main = h('main', { class: 'shell', dataset: { view: 'list' } }, h('aside', { class: 'sidebar' }, list.el), detail);
  const topbar = h(
    'header',
    { class: 'topbar' },
    h('a', { class: 'brand', href: '#/' }, h('span', { class: 'brand-mark' }, icon('logo', 18)), h('span', { class: 'brand-name', text: 'statefulproxy' }), h('span', { class: 'brand-sub', text: 'Sessions' })),
    h('span', { class: 'spacer' }),
    button('Refresh', 'refresh', () => list.reload(), { iconOnly: true }),
    button('Keyboard shortcuts', 'keyboard', showShortcuts, { iconOnly: true, shortcut: '?' }),
    h('span', { class: 'key-chip', title: 'Signed in with this key' }, icon('key', 14), h('span', { text: api.auth.hint })),
    button('Sign out', 'logout', signOut, { kind: 'secondary' }),
  );
  shell = { list, detail, main, view: null, navigate, toast, fail };
  root.replaceChildren(topbar, main);
  root.setAttribute('aria-busy', 'false');
  list.reload();
  route();
}

function signOut() {
  api.auth.clear();
  if (shell && shell.view) shell.view.destroy();
  history.replaceState(null, '', '#/');
  signIn();
}

function fail(exc) {
  if (exc && exc.status === 401) return;
  toast(exc && exc.message ? exc.message : String(exc), 'error');
}

function navigate(id) {
  location.hash = id ? `#/s/${encodeURIComponent(id)}` : '#/';
}

function placeholder() {
  return h(
    'div',
    { class: 'empty empty-detail' },
    icon('chat', 32),
    h('p', { class: 'empty-title', text: 'Pick a session' }),
    h('p', { class: 'empty-text', text: 'Read its transcript, fork it at any message, or continue it from here.' }),
    h('p', { class: 'empty-keys' }, h('kbd', { text: '/' }), h('span', { text: ' search · ' }), h('kbd', { text: 'j' }), h('kbd', { text: 'k' }), h('span', { text: ' move · ' }), h('kbd', { text: '?' }), h('span', { text: ' all shortcuts' })),
  );
}

function route() {
  if (!shell) return;
  const match = /^#\/s\/(.+)$/.exec(location.hash);
  const id = match ? decodeURIComponent(match[1]) : null;
  if (shell.view && shell.view.id === id) return;
  if (shell.view) shell.view.destroy();
  shell.view = null;
  shell.list.select(id);
  shell.main.dataset.view = id ? 'session' : 'list';
  if (!id) {
    shell.detail.replaceChildren(placeholder());
    document.title = 'Sessions · statefulproxy';
    return;
  }
  const view = new SessionView(id, shell);
  shell.view = view;
  shell.detail.replaceChildren(view.el);
  view.load().then(() => {
    if (shell && shell.view === view && view.session) document.title = `${view.session.title || view.session.id} · statefulproxy`;
  });
}

function typing(target) {
  return target instanceof HTMLElement && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName));
}

document.addEventListener('keydown', (event) => {
  if (!shell || event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
  if (document.querySelector('dialog[open]')) return;
  if (event.key === 'Escape') {
    if (typing(event.target)) event.target.blur();
    else if (shell.view) navigate(null);
    return;
  }
  if (typing(event.target)) return;
  const actions = {
    '/': () => shell.list.input.focus(),
    j: () => shell.list.move(1),
    k: () => shell.list.move(-1),
    c: () => shell.view && shell.view.session && shell.view.focusComposer(),
    e: () => shell.view && shell.view.session && shell.view.edit(),
    '?': showShortcuts,
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
});

window.addEventListener('hashchange', route);
window.addEventListener('statefulproxy:unauthorized', () => {
  api.auth.clear();
  if (shell && shell.view) shell.view.destroy();
  signIn('The proxy no longer accepts this key. Sign in again.');
});

config = await api.loadConfig();
if (api.auth.key) start();
else signIn();
