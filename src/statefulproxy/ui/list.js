// The session list: newest first, more pages as it scrolls (the API's cursors), a status filter
// and a search over titles (`q`) and metadata (`key:value`).

import { listSessions } from './api.js';
import { clear, h, icon } from './dom.js';
import { compact, plural, relative, totalTokens } from './format.js';

const STATUSES = [
  ['', 'All'],
  ['active', 'Active'],
  ['ended', 'Ended'],
  ['expired', 'Expired'],
];

/** "refund team:blue" -> {q: "refund", metadata: {team: "blue"}} */
export function parseSearch(text) {
  const metadata = {};
  const words = [];
  for (const word of text.trim().split(/\s+/).filter(Boolean)) {
    const at = word.indexOf(':');
    if (at > 0 && at < word.length - 1) metadata[word.slice(0, at)] = word.slice(at + 1);
    else words.push(word);
  }
  return { q: words.join(' '), metadata };
}

/** The same filter as the API's, for a proxy that does not filter yet: a session passes both or neither. */
function matches(session, { q, metadata }) {
  if (q && !(session.title || '').toLowerCase().includes(q.toLowerCase())) return false;
  return Object.entries(metadata).every(([key, value]) => (session.metadata || {})[key] === value);
}

export class SessionList {
  constructor({ onError }) {
    this.onError = onError;
    this.status = '';
    this.search = { q: '', metadata: {} };
    this.items = new Map();
    this.selected = null;
    this.generation = 0;

    this.input = h('input', {
      class: 'input search-input',
      type: 'search',
      placeholder: 'Search titles, or key:value',
      'aria-label': 'Search sessions',
      'aria-keyshortcuts': '/',
      autocomplete: 'off',
      spellcheck: 'false',
    });
    let timer = null;
    this.input.addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.setSearch(this.input.value), 200);
    });
    this.input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') {
        clearTimeout(timer);
        this.setSearch(this.input.value);
      } else if (event.key === 'ArrowDown') {
        event.preventDefault();
        this.move(1);
      }
    });
    this.filters = h(
      'div',
      { class: 'segmented', role: 'group', 'aria-label': 'Status' },
      STATUSES.map(([value, label]) =>
        h('button', { type: 'button', class: 'segment', 'aria-pressed': String(value === this.status), dataset: { status: value }, text: label, onclick: () => this.setStatus(value) }),
      ),
    );
    this.summary = h('div', { class: 'list-summary', 'aria-live': 'polite' });
    this.rows = h('nav', { class: 'rows', 'aria-label': 'Sessions' });
    this.sentinel = h('div', { class: 'sentinel' });
    this.scroller = h('div', { class: 'list-scroll' }, this.rows, this.sentinel);
    this.el = h(
      'div',
      { class: 'list' },
      h('div', { class: 'list-tools' }, h('div', { class: 'search' }, icon('search'), this.input), this.filters),
      this.summary,
      this.scroller,
    );
    this.observer = new IntersectionObserver((entries) => {
      // an entry may tell of a layout before the last page's rows pushed the end out of view
      if (entries.some((entry) => entry.isIntersecting) && this.sentinelInView()) this.more();
    }, { root: this.scroller, rootMargin: '200px' });
    this.observer.observe(this.sentinel);
  }

  setSearch(text) {
    const next = parseSearch(text);
    if (JSON.stringify(next) === JSON.stringify(this.search)) return;
    this.search = next;
    this.reload();
  }

  setStatus(status) {
    this.status = status;
    for (const button of this.filters.children) button.setAttribute('aria-pressed', String(button.dataset.status === status));
    this.reload();
  }

  async reload() {
    this.generation += 1;
    this.items.clear();
    clear(this.rows);
    this.cursor = undefined;
    this.hasMore = true;
    this.loading = false;
    this.scroller.scrollTop = 0;
    await this.more();
  }

  /** The next page, and more while the end of the list is in view (a search may leave a page empty). */
  async more() {
    if (this.loading || !this.hasMore) return;
    const generation = this.generation;
    this.loading = true;
    this.sentinel.replaceChildren(h('div', { class: 'spinner', 'aria-label': 'Loading' }));
    try {
      const page = await listSessions({ after: this.cursor, status: this.status || undefined, q: this.search.q || undefined, metadata: this.search.metadata });
      if (generation !== this.generation) return;
      this.cursor = page.last_id || this.cursor;
      this.hasMore = page.has_more && page.data.length > 0;
      for (const session of page.data) if (matches(session, this.search)) this.add(session);
    } catch (exc) {
      if (generation !== this.generation) return;
      this.hasMore = false;
      this.onError(exc);
    } finally {
      if (generation === this.generation) {
        this.loading = false;
        this.sentinel.replaceChildren();
        this.summarize();
      }
    }
    if (this.hasMore && this.sentinelInView()) await this.more();
  }

  sentinelInView() {
    const box = this.sentinel.getBoundingClientRect();
    const view = this.scroller.getBoundingClientRect();
    return box.top <= view.bottom + 200;
  }

  summarize() {
    const count = this.items.size;
    const filtered = this.status || this.search.q || Object.keys(this.search.metadata).length;
    if (count === 0) {
      this.summary.textContent = '';
      this.rows.replaceChildren(
        h(
          'div',
          { class: 'empty' },
          icon('chat', 28),
          h('p', { class: 'empty-title', text: filtered ? 'No sessions match' : 'No sessions yet' }),
          h('p', { class: 'empty-text', text: filtered ? 'Try another search or status.' : 'Sessions appear here once a chat request names one (a session-id header, or store: true) with this key.' }),
        ),
      );
      return;
    }
    this.summary.textContent = `${plural(count, 'session')}${this.hasMore ? ' loaded' : ''}`;
  }

  /** List a session, last (``where``: 'append') or first ('prepend'); a listed one is refreshed in place. */
  add(session, where = 'append') {
    if (this.items.has(session.id)) return this.put(session);
    const row = this.row(session);
    this.items.set(session.id, { session, row });
    const empty = this.rows.querySelector('.empty');
    if (empty) empty.remove();
    this.rows[where](row);
    if (session.id === this.selected) row.setAttribute('aria-current', 'true');
  }

  /** Refresh a listed session's row in place (a session not listed yet stays out of order: not added). */
  put(session) {
    const old = this.items.get(session.id);
    if (!old) return;
    const row = this.row(session);
    this.items.set(session.id, { session, row });
    old.row.replaceWith(row);
    if (session.id === this.selected) row.setAttribute('aria-current', 'true');
  }

  prepend(session) {
    this.add(session, 'prepend');
    this.summarize();
  }

  remove(id) {
    const item = this.items.get(id);
    if (!item) return;
    item.row.remove();
    this.items.delete(id);
    this.summarize();
  }

  select(id) {
    this.selected = id;
    for (const { session, row } of this.items.values()) row.setAttribute('aria-current', String(session.id === id));
    const item = this.items.get(id);
    if (item) item.row.scrollIntoView({ block: 'nearest' });
  }

  /** Move the keyboard focus down (1) or up (-1) the list. */
  move(step) {
    const rows = [...this.rows.querySelectorAll('.row')];
    if (!rows.length) return;
    const at = rows.indexOf(document.activeElement);
    const start = at >= 0 ? at : rows.findIndex((row) => row.getAttribute('aria-current') === 'true');
    const next = rows[Math.min(rows.length - 1, Math.max(0, start + step))];
    next.focus();
    next.scrollIntoView({ block: 'nearest' });
  }

  row(session) {
    const title = session.title || 'Untitled session';
    const tokens = totalTokens(session.usage);
    const meta = Object.entries(session.metadata || {}).slice(0, 3);
    return h(
      'a',
      { class: 'row', href: `#/s/${encodeURIComponent(session.id)}`, 'aria-current': 'false', dataset: { id: session.id } },
      h(
        'div',
        { class: 'row-top' },
        h('span', { class: `row-title${session.title ? '' : ' untitled'}`, text: title }),
        h('time', { class: 'row-time', title: 'Last active', text: relative(session.last_active_at) }),
      ),
      h(
        'div',
        { class: 'row-meta' },
        session.status !== 'active' ? h('span', { class: `pill pill-${session.status}`, text: session.status }) : null,
        h('span', { text: plural(session.message_count, 'message') }),
        tokens ? h('span', { class: 'dot', text: `${compact(tokens)} tokens` }) : null,
        meta.map(([key, value]) => h('span', { class: 'chip chip-small', title: `${key}: ${value}`, text: `${key}: ${value}` })),
      ),
    );
  }
}
