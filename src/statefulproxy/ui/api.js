// The proxy's management API and chat path, called with the signed-in key as the bearer.
// The key lives in sessionStorage only (this tab, until it closes) and never in a URL.

const KEY_NAME = 'statefulproxy.key';
const PAGE = 100;

let config = { sessions_prefix: '/v1/sessions', chat_path: '/v1/chat/completions', session_header: 'session-id', version: '' };

export async function loadConfig() {
  try {
    const response = await fetch('config.json', { cache: 'no-cache' });
    if (response.ok) config = { ...config, ...(await response.json()) };
  } catch {
    // the defaults match a proxy with default settings
  }
  return config;
}

export const auth = {
  get key() {
    return sessionStorage.getItem(KEY_NAME);
  },
  set(key) {
    sessionStorage.setItem(KEY_NAME, key);
  },
  clear() {
    sessionStorage.removeItem(KEY_NAME);
  },
  /** What the page shows of the key: never more than its last four characters. */
  get hint() {
    const key = this.key || '';
    return key.length > 8 ? `••••${key.slice(-4)}` : '••••';
  },
};

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra) {
  const out = { ...extra };
  if (auth.key) out.authorization = `Bearer ${auth.key}`;
  return out;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    const error = body && body.error;
    if (error && typeof error.message === 'string') message = error.message;
    else if (typeof error === 'string') message = error;
    if (error && error.code) code = error.code;
  } catch {
    // not JSON: the status says it
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent('statefulproxy:unauthorized', { detail: message }));
  return new ApiError(response.status, message, code);
}

async function call(method, path, { query, body, signal } = {}) {
  let url = config.sessions_prefix + path;
  if (query) {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) if (value !== undefined && value !== null && value !== '') params.append(key, value);
    const text = params.toString();
    if (text) url += `?${text}`;
  }
  const init = { method, headers: headers(body ? { 'content-type': 'application/json' } : {}), signal, cache: 'no-store' };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(url, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

const path = (id) => `/${encodeURIComponent(id)}`;

/** One page of sessions, newest first. ``q`` filters titles; ``metadata`` is {key: value}. */
export function listSessions({ after, status, q, metadata, limit = 30, signal } = {}) {
  const query = { limit, after, status, q };
  for (const [key, value] of Object.entries(metadata || {})) query[`metadata[${key}]`] = value;
  return call('GET', '', { query, signal });
}

export const getSession = (id) => call('GET', path(id));
export const updateSession = (id, changes) => call('POST', path(id), { body: changes });
export const endSession = (id) => call('POST', `${path(id)}/end`);
export const clearSession = (id) => call('DELETE', `${path(id)}/messages`);
export const deleteSession = (id) => call('DELETE', path(id));
export const forkSession = (id, upTo) => call('POST', `${path(id)}/fork`, { body: upTo ? { up_to_message_id: upTo } : {} });

export function listMessages(id, { after, limit = PAGE, signal } = {}) {
  return call('GET', `${path(id)}/messages`, { query: { limit, after, order: 'asc', include: 'reply_details' }, signal });
}

/** The whole history, page after page (for export). */
export async function allMessages(id) {
  const messages = [];
  let after;
  for (;;) {
    const page = await listMessages(id, { after });
    messages.push(...page.data);
    if (!page.has_more || !page.data.length) return messages;
    after = page.last_id;
  }
}

/**
 * A new turn on the session through the proxy's chat path, streamed: yields each chunk's delta
 * ({content, reasoning, tool_calls}) as it arrives.
 */
export async function* chat(sessionId, text, { model, signal } = {}) {
  const body = { messages: [{ role: 'user', content: text }], stream: true, stream_options: { include_usage: true } };
  if (model) body.model = model;
  const response = await fetch(config.chat_path, {
    method: 'POST',
    headers: headers({ 'content-type': 'application/json', [config.session_header]: sessionId }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  for await (const data of serverSentEvents(response)) {
    if (data === '[DONE]') return;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      continue;
    }
    if (chunk.error) throw new ApiError(response.status, chunk.error.message || 'The upstream sent an error.', chunk.error.code);
    const choice = chunk.choices && chunk.choices[0];
    if (choice && choice.delta) {
      const delta = choice.delta;
      yield {
        content: delta.content || '',
        reasoning: delta.reasoning_content || delta.reasoning || '',
        toolCalls: delta.tool_calls || null,
        finish: choice.finish_reason || null,
      };
    }
    if (chunk.usage) yield { usage: chunk.usage, content: '', reasoning: '' };
  }
}

/** The data of each event of an SSE response body, as it arrives. */
export async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).replace(/^ /, ''))
        .join('\n');
      if (data) yield data;
    }
  }
}
