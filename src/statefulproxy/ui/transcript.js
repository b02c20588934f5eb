// A session's messages as a transcript: roles and times, tool calls paired with their results,
// reasoning folded away, images as thumbnails, and what the store knows of each turn.

import { button, h, icon } from './dom.js';
import { clock, dayLabel, fullTime, pretty, usageText } from './format.js';

const ROLES = { system: 'System', developer: 'Developer', user: 'User', assistant: 'Assistant', tool: 'Tool result' };
const LONG_SYSTEM = 320;

export class Transcript {
  /** ``onFork(message)`` forks the session at a message; ``onImage(url)`` shows an image large. */
  constructor({ onFork, onImage }) {
    this.el = h('div', { class: 'transcript-list', role: 'list' });
    this.onFork = onFork;
    this.onImage = onImage;
    this.calls = new Map(); // tool_call_id -> the call's block, waiting for its result
    this.lastDay = null;
    this.count = 0;
    this.lastId = null;
    this.lastModel = null;
  }

  add(messages) {
    for (const message of messages) this.addOne(message);
  }

  addOne(message) {
    this.count += 1;
    this.lastId = message.id;
    if (message.role === 'assistant' && message.model) this.lastModel = message.model;
    const call = message.role === 'tool' ? this.calls.get(message.tool_call_id) : undefined;
    if (call) {
      call.resolve(message);
      this.calls.delete(message.tool_call_id);
      return;
    }
    this.separate(message.created_at);
    this.el.append(this.render(message));
  }

  separate(createdAt) {
    if (!createdAt) return;
    const day = dayLabel(createdAt);
    if (day !== this.lastDay) {
      this.lastDay = day;
      this.el.append(h('div', { class: 'day', role: 'separator' }, h('span', { text: day })));
    }
  }

  render(message) {
    const role = message.role in ROLES ? message.role : 'other';
    const article = h('article', {
      class: `msg msg-${role}`,
      id: `m-${message.id}`,
      role: 'listitem',
      tabindex: '-1',
      dataset: { id: message.id, role: message.role },
    });
    article.append(this.head(message), this.body(message));
    return article;
  }

  head(message) {
    const label = ROLES[message.role] || String(message.role);
    const tags = h('span', { class: 'tags' });
    if (message.name) tags.append(h('span', { class: 'tag', text: message.name }));
    if (message.dialect) tags.append(h('span', { class: 'tag tag-dialect', title: 'The dialect that recorded this turn', text: message.dialect }));
    if (message.model) tags.append(h('span', { class: 'tag', title: 'Model', text: message.model }));
    if (message.finish_reason && !['stop', 'tool_calls', 'end_turn'].includes(message.finish_reason)) {
      tags.append(h('span', { class: 'tag tag-warn', title: 'Finish reason', text: message.finish_reason }));
    }
    const usage = usageText(message.usage);
    return h(
      'header',
      { class: 'msg-head' },
      h('span', { class: `role role-${message.role}`, text: message.role === 'tool' ? 'Tool' : label }),
      message.created_at ? h('time', { datetime: new Date(message.created_at * 1000).toISOString(), title: fullTime(message.created_at), text: clock(message.created_at) }) : null,
      tags,
      usage ? h('span', { class: 'usage', title: 'Tokens this turn', text: usage }) : null,
      h('span', { class: 'msg-actions' }, this.forkButton(message)),
    );
  }

  forkButton(message, label = 'Fork from here') {
    return button(label, 'fork', () => this.onFork(message), { iconOnly: true, title: `${label}: a new session with the history up to this message` });
  }

  body(message) {
    const body = h('div', { class: 'msg-body' });
    if (message.reasoning) body.append(reasoning(message.reasoning));
    if (message.refusal) body.append(h('div', { class: 'refusal' }, icon('alert'), h('span', { text: message.refusal })));
    const content = this.content(message);
    if (content) body.append(content);
    for (const call of message.tool_calls || []) body.append(this.toolCall(call));
    if (message.metadata && typeof message.metadata === 'object' && Object.keys(message.metadata).length) {
      body.append(fields(message.metadata));
    }
    if (!body.childElementCount) body.append(h('div', { class: 'muted empty-content', text: '(empty)' }));
    return body;
  }

  content(message) {
    const value = message.content;
    if (value === null || value === undefined || value === '') return null;
    if (typeof value === 'string') {
      const text = h('div', { class: 'content', text: value });
      if ((message.role === 'system' || message.role === 'developer') && value.length > LONG_SYSTEM) {
        return h('details', { class: 'fold' }, h('summary', { text: `${value.slice(0, 120).replace(/\s+/g, ' ')}…` }), text);
      }
      return text;
    }
    if (Array.isArray(value)) return h('div', { class: 'parts' }, value.map((part) => this.part(part)));
    return h('pre', { class: 'json', text: pretty(value) });
  }

  part(part) {
    if (!part || typeof part !== 'object') return h('div', { class: 'content', text: String(part) });
    if (part.type === 'text' && typeof part.text === 'string') return h('div', { class: 'content', text: part.text });
    if (part.type === 'image_url') {
      const url = typeof part.image_url === 'string' ? part.image_url : part.image_url && part.image_url.url;
      return this.image(typeof url === 'string' ? url : '');
    }
    if (part.type === 'input_audio') return h('span', { class: 'chip' }, icon('chat'), h('span', { text: `audio (${(part.input_audio && part.input_audio.format) || 'clip'})` }));
    if (part.type === 'file') return h('span', { class: 'chip', text: `file ${(part.file && (part.file.filename || part.file.file_id)) || ''}`.trim() });
    return h('pre', { class: 'json', text: pretty(part) });
  }

  image(url) {
    if (/^data:image\//i.test(url)) {
      const img = h('img', { class: 'thumb-img', alt: 'Image sent in this message', loading: 'lazy', decoding: 'async' });
      img.src = url;
      return h('button', { type: 'button', class: 'thumb', title: 'Show full size', onclick: () => this.onImage(url) }, img);
    }
    // a remote image is not fetched by the page (its host would learn who reads the session): a link instead
    const link = h('a', { class: 'chip chip-link', href: url, target: '_blank', rel: 'noopener noreferrer' }, icon('image'), h('span', { text: remoteLabel(url) }));
    return link;
  }

  toolCall(call) {
    const fn = (call && call.function) || {};
    const args = typeof fn.arguments === 'string' ? fn.arguments : JSON.stringify(fn.arguments ?? '');
    const status = h('span', { class: 'tool-status pending', text: 'no result' });
    const result = h('div', { class: 'tool-section tool-pending' }, h('div', { class: 'muted', text: 'No result recorded for this call yet.' }));
    const block = h(
      'details',
      { class: 'tool', dataset: { callId: call.id || '' } },
      h(
        'summary',
        {},
        h('span', { class: 'tool-icon' }, icon('tool')),
        h('span', { class: 'tool-name', text: fn.name || 'tool' }),
        h('span', { class: 'tool-preview', text: oneLine(args) }),
        status,
      ),
      h('div', { class: 'tool-section' }, h('div', { class: 'label' }, h('span', { text: 'Arguments' }), h('code', { class: 'call-id', text: call.id || '' })), h('pre', { class: 'json', text: pretty(args) })),
      result,
    );
    if (call.id) {
      this.calls.set(call.id, {
        resolve: (message) => {
          status.className = 'tool-status done';
          status.textContent = 'result';
          const content = toolText(message.content);
          result.className = 'tool-section';
          result.dataset.id = message.id;
          result.id = `m-${message.id}`;
          result.replaceChildren(
            h(
              'div',
              { class: 'label' },
              h('span', { text: 'Result' }),
              message.created_at ? h('time', { title: fullTime(message.created_at), text: clock(message.created_at) }) : null,
              h('span', { class: 'msg-actions' }, this.forkButton(message, 'Fork after this result')),
            ),
            h('pre', { class: 'json', text: pretty(content) }),
          );
        },
      });
    }
    return block;
  }
}

/** The assistant's reply while it streams in: text as it comes, reasoning folded, tool calls named. */
export class LiveReply {
  constructor() {
    this.text = h('div', { class: 'content' });
    this.cursor = h('span', { class: 'caret', 'aria-hidden': 'true' });
    this.thinking = null;
    this.tools = h('div', { class: 'live-tools' });
    this.usage = h('span', { class: 'usage' });
    this.body = h('div', { class: 'msg-body' }, this.text, this.tools);
    this.text.append(this.cursor);
    this.el = h(
      'article',
      { class: 'msg msg-assistant msg-live', role: 'listitem', 'aria-live': 'polite', 'aria-busy': 'true' },
      h('header', { class: 'msg-head' }, h('span', { class: 'role role-assistant', text: 'Assistant' }), h('span', { class: 'tag tag-live', text: 'streaming' }), this.usage),
      this.body,
    );
    this.names = new Map();
  }

  push(delta) {
    if (delta.reasoning) {
      if (!this.thinking) {
        this.thinking = h('pre', { class: 'reasoning-text' });
        this.body.prepend(h('details', { class: 'reasoning' }, h('summary', {}, icon('thought'), h('span', { text: 'Thinking…' })), this.thinking));
      }
      this.thinking.append(delta.reasoning);
    }
    if (delta.content) this.cursor.before(delta.content);
    for (const call of delta.toolCalls || []) {
      const name = call.function && call.function.name;
      if (name && !this.names.has(call.index)) {
        const chip = h('span', { class: 'chip' }, icon('tool'), h('span', { text: `calling ${name}` }));
        this.names.set(call.index, chip);
        this.tools.append(chip);
      }
    }
    if (delta.usage) this.usage.textContent = usageText(delta.usage);
  }

  fail(message) {
    this.cursor.remove();
    this.el.setAttribute('aria-busy', 'false');
    this.body.append(h('div', { class: 'refusal' }, icon('alert'), h('span', { text: message })));
  }

  finish() {
    this.cursor.remove();
    this.el.setAttribute('aria-busy', 'false');
  }
}

function reasoning(text) {
  return h(
    'details',
    { class: 'reasoning' },
    h('summary', {}, icon('thought'), h('span', { text: 'Reasoning' }), h('span', { class: 'muted', text: `${text.length.toLocaleString()} characters` })),
    h('pre', { class: 'reasoning-text', text }),
  );
}

function fields(metadata) {
  return h(
    'dl',
    { class: 'fields' },
    Object.entries(metadata).flatMap(([key, value]) => [h('dt', { text: key }), h('dd', { text: typeof value === 'string' ? value : JSON.stringify(value) })]),
  );
}

function toolText(content) {
  if (Array.isArray(content)) return content.map((part) => (part && typeof part.text === 'string' ? part.text : JSON.stringify(part))).join('\n');
  return content ?? '';
}

function oneLine(text) {
  const line = String(text).replace(/\s+/g, ' ').trim();
  return line.length > 80 ? `${line.slice(0, 80)}…` : line;
}

function remoteLabel(url) {
  try {
    const parsed = new URL(url);
    return `image at ${parsed.host}${parsed.pathname.length > 24 ? `${parsed.pathname.slice(0, 24)}…` : parsed.pathname}`;
  } catch {
    return 'image';
  }
}
