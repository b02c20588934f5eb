// One session: its facts, its actions (edit, fork, export, end, clear, delete), its transcript,
// and a composer that sends a new turn on it through the proxy, the reply streamed as it comes.

import * as api from './api.js';
import { confirmAction, editSession, showImage } from './dialogs.js';
import { button, copyText, h, icon } from './dom.js';
import { compact, fullTime, number, plural, relative, totalTokens } from './format.js';
import { LiveReply, Transcript } from './transcript.js';

const MODEL_KEY = 'statefulproxy.model';

export class SessionView {
  /** ``app``: {list, navigate, toast, fail} of the page around it. */
  constructor(id, app) {
    this.id = id;
    this.app = app;
    this.session = null;
    this.sending = null; // the AbortController of a turn in flight
    this.el = h('section', { class: 'session', 'aria-label': 'Session' }, h('div', { class: 'loading-state' }, h('div', { class: 'spinner' })));
  }

  async load() {
    try {
      this.session = await api.getSession(this.id);
    } catch (exc) {
      if (exc.status === 404) return this.notFound();
      this.el.replaceChildren(h('div', { class: 'empty' }, icon('alert', 28), h('p', { class: 'empty-title', text: 'Could not load the session' }), h('p', { class: 'empty-text', text: exc.message })));
      return;
    }
    this.transcript = new Transcript({ onFork: (message) => this.fork(message), onImage: showImage });
    this.sentinel = h('div', { class: 'sentinel' });
    this.scroller = h('div', { class: 'transcript', tabindex: '0', 'aria-label': 'Transcript' }, this.transcript.el, this.sentinel);
    this.head = h('header', { class: 'session-head' });
    this.facts = h('div', { class: 'facts' });
    this.composer = this.makeComposer();
    this.el.replaceChildren(this.head, this.facts, this.scroller, this.composer);
    this.render();
    this.observer = new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) this.moreMessages();
    }, { root: this.scroller, rootMargin: '400px' });
    await this.moreMessages();
    this.observer.observe(this.sentinel);
  }

  notFound() {
    this.el.replaceChildren(
      h(
        'div',
        { class: 'empty' },
        icon('search', 28),
        h('p', { class: 'empty-title', text: 'Session not found' }),
        h('p', { class: 'empty-text', text: 'It may have expired or been deleted, or it belongs to another key.' }),
        h('a', { class: 'btn btn-secondary', href: '#/', text: 'All sessions' }),
      ),
    );
  }

  render() {
    const session = this.session;
    const active = session.status === 'active';
    const idCode = h('code', { class: 'session-id', text: session.id });
    this.head.replaceChildren(
      h('a', { class: 'btn btn-ghost btn-icon back', href: '#/', 'aria-label': 'All sessions', title: 'All sessions' }, icon('back')),
      h(
        'div',
        { class: 'head-main' },
        h('h1', { class: `session-title${session.title ? '' : ' untitled'}`, text: session.title || 'Untitled session' }),
        h(
          'div',
          { class: 'head-sub' },
          h('span', { class: `pill pill-${session.status}`, text: session.status }),
          idCode,
          button('Copy id', 'copy', async () => this.app.toast((await copyText(session.id)) ? 'Session id copied' : 'Could not copy'), { iconOnly: true }),
        ),
      ),
      h(
        'div',
        { class: 'head-actions', role: 'toolbar', 'aria-label': 'Session actions' },
        button('Edit', 'edit', () => this.edit(), { shortcut: 'e' }),
        button('Fork', 'fork', () => this.fork(null)),
        button('Export', 'download', () => this.exportJson()),
        h('span', { class: 'divider', 'aria-hidden': 'true' }),
        active ? button('End', 'end', () => this.end()) : null,
        active ? button('Clear', 'clear', () => this.clearHistory()) : null,
        button('Delete', 'trash', () => this.remove(), { kind: 'ghost-danger' }),
      ),
    );
    const usage = session.usage || {};
    const tokens = totalTokens(usage);
    const fact = (label, value, title) => h('div', { class: 'fact', title }, h('dt', { text: label }), h('dd', { text: value }));
    const facts = [
      fact('Messages', number(session.message_count)),
      fact('Requests', number(session.request_count || 0)),
      fact('Tokens', tokens ? compact(tokens) : '—', tokens ? `${number(usage.prompt_tokens)} prompt · ${number(usage.completion_tokens)} completion` : null),
      fact('Created', relative(session.created_at), fullTime(session.created_at)),
      fact('Last active', relative(session.last_active_at), fullTime(session.last_active_at)),
    ];
    if (session.expires_at) facts.push(fact(session.status === 'expired' ? 'Expired' : 'Expires', relative(session.expires_at), fullTime(session.expires_at)));
    if (session.namespace) facts.push(fact('Namespace', session.namespace));
    const metadata = Object.entries(session.metadata || {});
    this.facts.replaceChildren(h('dl', { class: 'fact-list' }, facts));
    if (metadata.length) {
      this.facts.append(h('div', { class: 'chips', 'aria-label': 'Metadata' }, metadata.map(([key, value]) => h('span', { class: 'chip' }, h('span', { class: 'chip-key', text: key }), h('span', { text: value })))));
    }
    this.syncComposer();
  }

  async moreMessages() {
    if (this.loadingMessages || this.messagesDone) return;
    this.loadingMessages = true;
    this.sentinel.replaceChildren(h('div', { class: 'spinner' }));
    try {
      const page = await api.listMessages(this.id, { after: this.transcript.lastId || undefined });
      this.transcript.add(page.data);
      this.messagesDone = !page.has_more || !page.data.length;
    } catch (exc) {
      this.messagesDone = true;
      this.app.fail(exc);
    } finally {
      this.loadingMessages = false;
      this.sentinel.replaceChildren();
      if (this.messagesDone && !this.transcript.count) {
        this.sentinel.replaceChildren(h('div', { class: 'empty empty-inline' }, h('p', { class: 'empty-title', text: 'No messages' }), h('p', { class: 'empty-text', text: 'Send the first one below.' })));
      }
    }
  }

  async allMessages() {
    while (!this.messagesDone) {
      this.loadingMessages = false;
      await this.moreMessages();
    }
  }

  makeComposer() {
    this.input = h('textarea', { class: 'composer-input', rows: '1', placeholder: 'Send a message on this session…', 'aria-label': 'Message', 'aria-keyshortcuts': 'c' });
    this.model = h('input', { class: 'input model-input', 'aria-label': 'Model', placeholder: 'model', value: localStorage.getItem(MODEL_KEY) || '', spellcheck: 'false', autocomplete: 'off' });
    this.sendButton = button('Send', 'send', null, { kind: 'primary', type: 'submit', title: 'Send (Ctrl+Enter)' });
    this.composerNote = h('div', { class: 'composer-note' });
    const form = h(
      'form',
      { class: 'composer', 'aria-label': 'Continue the session' },
      this.composerNote,
      h('div', { class: 'composer-box' }, this.input, h('div', { class: 'composer-bar' }, h('label', { class: 'model-field' }, h('span', { text: 'Model' }), this.model), h('span', { class: 'composer-hint', text: 'Ctrl+Enter to send' }), this.sendButton)),
    );
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      if (this.sending) this.sending.abort();
      else this.send();
    });
    this.input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        form.requestSubmit();
      }
    });
    return form;
  }

  syncComposer() {
    const active = this.session.status === 'active';
    this.input.disabled = !active;
    this.model.disabled = !active;
    this.sendButton.disabled = !active;
    this.composerNote.replaceChildren();
    if (!active) {
      this.composerNote.append(icon('alert'), h('span', { text: `This session is ${this.session.status} and read-only. Fork it to continue.` }));
    }
    this.composer.classList.toggle('composer-disabled', !active);
  }

  focusComposer() {
    if (!this.input.disabled) this.input.focus();
  }

  async send() {
    const text = this.input.value.trim();
    if (!text) return;
    await this.allMessages();
    const model = this.model.value.trim() || this.transcript.lastModel || '';
    if (this.model.value.trim()) localStorage.setItem(MODEL_KEY, this.model.value.trim());
    const pending = [
      h('article', { class: 'msg msg-user msg-pending', role: 'listitem' }, h('header', { class: 'msg-head' }, h('span', { class: 'role role-user', text: 'User' }), h('span', { class: 'tag', text: 'sending' })), h('div', { class: 'msg-body' }, h('div', { class: 'content', text }))),
    ];
    const live = new LiveReply();
    pending.push(live.el);
    this.sentinel.replaceChildren();
    this.transcript.el.append(...pending);
    this.input.value = '';
    this.sending = new AbortController();
    this.sendButton.replaceChildren(icon('stop'), h('span', { text: 'Stop' }));
    this.sendButton.classList.add('btn-stop');
    const follow = () => {
      this.scroller.scrollTop = this.scroller.scrollHeight;
    };
    follow();
    let failed = false;
    try {
      for await (const delta of api.chat(this.id, text, { model, signal: this.sending.signal })) {
        const atBottom = this.scroller.scrollHeight - this.scroller.scrollTop - this.scroller.clientHeight < 80;
        live.push(delta);
        if (atBottom) follow();
      }
      live.finish();
    } catch (exc) {
      failed = true;
      pending[0].querySelector('.tag').textContent = 'not recorded';
      live.fail(exc.name === 'AbortError' ? 'Stopped. A reply cut short is not recorded.' : exc.message);
      if (exc.name !== 'AbortError' && !this.input.value) this.input.value = text;
    } finally {
      this.sending = null;
      this.sendButton.replaceChildren(icon('send'), h('span', { text: 'Send' }));
      this.sendButton.classList.remove('btn-stop');
    }
    // the recorded turn replaces the live one: its ids (to fork at), usage and times come from the store
    await this.refresh(failed ? [] : pending);
    follow();
  }

  /** Read the session again and append the messages recorded since the last one shown. */
  async refresh(replacing = []) {
    try {
      this.session = await api.getSession(this.id);
      this.app.list.put(this.session);
      this.render();
      this.messagesDone = false;
      for (const el of replacing) el.remove();
      await this.allMessages();
    } catch (exc) {
      this.app.fail(exc);
    }
  }

  async edit() {
    const saved = await editSession(this.session, (changes) => api.updateSession(this.id, changes));
    if (!saved) return;
    this.session = saved;
    this.app.list.put(saved);
    this.render();
    this.app.toast('Session updated');
  }

  async fork(message) {
    try {
      const forked = await api.forkSession(this.id, message ? message.id : null);
      this.app.list.prepend(forked);
      this.app.toast(message ? `Forked at this message: ${plural(forked.message_count, 'message')}` : 'Forked the whole session');
      this.app.navigate(forked.id);
    } catch (exc) {
      this.app.fail(exc);
    }
  }

  async exportJson() {
    try {
      const [session, messages] = await Promise.all([api.getSession(this.id), api.allMessages(this.id)]);
      const blob = new Blob([JSON.stringify({ ...session, messages }, null, 2)], { type: 'application/json' });
      const url = URL.createObjectURL(blob);
      const link = h('a', { download: `${this.id}.json` });
      link.href = url;
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      this.app.toast(`Exported ${plural(messages.length, 'message')}`);
    } catch (exc) {
      this.app.fail(exc);
    }
  }

  async end() {
    const ok = await confirmAction({ title: 'End this session?', message: 'It becomes read-only: new turns are refused. It stays listed and readable, and can still be forked.', confirm: 'End session' });
    if (!ok) return;
    await this.act(() => api.endSession(this.id), 'Session ended');
  }

  async clearHistory() {
    const ok = await confirmAction({ title: 'Clear the history?', message: `All ${plural(this.session.message_count, 'message')} are removed. The session, its title, metadata and usage stay.`, confirm: 'Clear history', danger: true });
    if (!ok) return;
    if (await this.act(() => api.clearSession(this.id), 'History cleared')) {
      this.transcript = new Transcript({ onFork: (message) => this.fork(message), onImage: showImage });
      this.scroller.replaceChildren(this.transcript.el, this.sentinel);
      this.messagesDone = false;
      await this.moreMessages();
    }
  }

  async remove() {
    const ok = await confirmAction({ title: 'Delete this session?', message: 'The session and all its messages are deleted now. This cannot be undone.', confirm: 'Delete session', danger: true });
    if (!ok) return;
    try {
      await api.deleteSession(this.id);
      this.app.list.remove(this.id);
      this.app.toast('Session deleted');
      this.app.navigate(null);
    } catch (exc) {
      this.app.fail(exc);
    }
  }

  async act(action, done) {
    try {
      this.session = await action();
      this.app.list.put(this.session);
      this.render();
      this.app.toast(done);
      return true;
    } catch (exc) {
      this.app.fail(exc);
      return false;
    }
  }

  destroy() {
    if (this.sending) this.sending.abort();
    if (this.observer) this.observer.disconnect();
  }
}
