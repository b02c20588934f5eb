/*
 * <statefulproxy-chat>: a chat box that talks to one statefulproxy session with a client secret.
 *
 *   <script src="https://proxy.example.com/ui/widget.js" defer></script>
 *   <statefulproxy-chat session-secret="spcs_…" session-id="sess_…"></statefulproxy-chat>
 *
 * Attributes: session-secret (required; minted by your backend with POST /v1/sessions and
 * "client_secret"), base-url (the proxy; default: where this script came from), session-id (shows
 * the history so far), model, heading, placeholder, chat-path (/v1/chat/completions),
 * sessions-path (/v1/sessions). Events: "statefulproxy-reply" {text, sessionId} and
 * "statefulproxy-error" {message, status}. Style it with --sp-accent, --sp-radius, --sp-font and
 * ::part(panel | header | log | message | input | send).
 *
 * A classic script (no imports), so any page can load it; it runs in the page, and its requests
 * go to the proxy cross-origin: the proxy's cors_origins must list the page's origin. Every
 * message is shown as text.
 */
(() => {
  const TAG = 'statefulproxy-chat';
  if (customElements.get(TAG)) return;
  const scriptOrigin = document.currentScript && document.currentScript.src ? new URL(document.currentScript.src).origin : location.origin;

  const CSS = `
:host { --sp-accent: #4f46e5; --sp-radius: 14px; --sp-font: ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  --sp-bg: #fff; --sp-bg-2: #f4f5f7; --sp-text: #16181d; --sp-muted: #6b7080; --sp-border: #e3e5ea;
  display: block; font: 14px/1.5 var(--sp-font); color: var(--sp-text); height: 480px; }
@media (prefers-color-scheme: dark) { :host { --sp-bg: #15171c; --sp-bg-2: #1f2228; --sp-text: #e8eaef; --sp-muted: #8d93a1; --sp-border: #2a2d36; } }
* { box-sizing: border-box; }
.panel { height: 100%; display: flex; flex-direction: column; background: var(--sp-bg); border: 1px solid var(--sp-border);
  border-radius: var(--sp-radius); overflow: hidden; box-shadow: 0 1px 3px rgb(0 0 0 / .06), 0 10px 30px rgb(0 0 0 / .07); }
.header { display: flex; align-items: center; gap: 10px; padding: 12px 16px; border-bottom: 1px solid var(--sp-border); font-weight: 650; }
.dot { width: 8px; height: 8px; border-radius: 50%; background: #22c55e; box-shadow: 0 0 0 3px rgb(34 197 94 / .18); }
.log { flex: 1; overflow-y: auto; padding: 16px; display: flex; flex-direction: column; gap: 10px; }
.hello { margin: auto; text-align: center; color: var(--sp-muted); max-width: 260px; }
.message { max-width: 85%; padding: 9px 13px; border-radius: 16px; white-space: pre-wrap; overflow-wrap: anywhere; }
.user { align-self: flex-end; background: var(--sp-accent); color: #fff; border-bottom-right-radius: 5px; }
.assistant { align-self: flex-start; background: var(--sp-bg-2); border-bottom-left-radius: 5px; }
.assistant.streaming::after { content: ""; display: inline-block; width: 6px; height: 1em; margin-left: 2px; vertical-align: text-bottom;
  background: currentColor; opacity: .5; animation: blink 1s steps(2) infinite; }
@keyframes blink { 50% { opacity: 0; } }
.error { align-self: center; color: #d92d20; font-size: 13px; text-align: center; }
form { display: flex; gap: 8px; align-items: flex-end; padding: 10px; border-top: 1px solid var(--sp-border); }
textarea { flex: 1; resize: none; min-height: 40px; max-height: 120px; padding: 9px 12px; border-radius: 10px; border: 1px solid var(--sp-border);
  background: var(--sp-bg); color: inherit; font: inherit; field-sizing: content; }
textarea:focus { outline: none; border-color: var(--sp-accent); box-shadow: 0 0 0 3px color-mix(in srgb, var(--sp-accent) 20%, transparent); }
button { height: 40px; padding: 0 16px; border: 0; border-radius: 10px; background: var(--sp-accent); color: #fff; font: 600 14px var(--sp-font); cursor: pointer; }
button:disabled { opacity: .5; cursor: default; }
.footer { padding: 0 12px 8px; font-size: 11px; color: var(--sp-muted); text-align: right; }
`;

  function sheet() {
    try {
      const styles = new CSSStyleSheet();
      styles.replaceSync(CSS);
      return styles;
    } catch {
      return null;
    }
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function* events(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
        const data = block.split(/\r?\n/).filter((line) => line.startsWith('data:')).map((line) => line.slice(5).replace(/^ /, '')).join('\n');
        if (data) yield data;
      }
    }
  }

  class StatefulProxyChat extends HTMLElement {
    static get observedAttributes() {
      return ['session-id', 'heading', 'placeholder'];
    }

    connectedCallback() {
      if (this.shadowRoot) return;
      const root = this.attachShadow({ mode: 'open' });
      const styles = sheet();
      if (styles) root.adoptedStyleSheets = [styles];
      else root.append(el('style', null, CSS));
      this.heading = el('span', null, this.getAttribute('heading') || 'Chat');
      const header = el('div', 'header');
      header.part = 'header';
      header.append(el('span', 'dot'), this.heading);
      this.log = el('div', 'log');
      this.log.part = 'log';
      this.log.setAttribute('role', 'log');
      this.log.setAttribute('aria-live', 'polite');
      this.hello = el('p', 'hello', 'Ask anything. The conversation is kept for you.');
      this.log.append(this.hello);
      this.input = el('textarea');
      this.input.part = 'input';
      this.input.rows = 1;
      this.input.placeholder = this.getAttribute('placeholder') || 'Write a message…';
      this.input.setAttribute('aria-label', 'Message');
      this.sendButton = el('button', null, 'Send');
      this.sendButton.part = 'send';
      this.sendButton.type = 'submit';
      const form = el('form');
      form.append(this.input, this.sendButton);
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        this.send(this.input.value);
      });
      this.input.addEventListener('keydown', (event) => {
        if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          this.send(this.input.value);
        }
      });
      const panel = el('div', 'panel');
      panel.part = 'panel';
      panel.append(header, this.log, form, el('div', 'footer', 'Powered by statefulproxy'));
      root.append(panel);
      this.history();
    }

    attributeChangedCallback(name, _old, value) {
      if (!this.shadowRoot) return;
      if (name === 'heading') this.heading.textContent = value || 'Chat';
      if (name === 'placeholder') this.input.placeholder = value || 'Write a message…';
      if (name === 'session-id' && value && value !== this.sessionId) this.history();
    }

    get baseUrl() {
      return (this.getAttribute('base-url') || scriptOrigin).replace(/\/+$/, '');
    }

    get secret() {
      return this.getAttribute('session-secret') || '';
    }

    headers(json) {
      const headers = { authorization: `Bearer ${this.secret}` };
      if (json) headers['content-type'] = 'application/json';
      return headers;
    }

    /** Show the session's messages so far (user and assistant text), when the session id is known. */
    async history() {
      const id = this.getAttribute('session-id');
      if (!id || !this.secret) return;
      this.sessionId = id;
      const path = this.getAttribute('sessions-path') || '/v1/sessions';
      try {
        const response = await fetch(`${this.baseUrl}${path}/${encodeURIComponent(id)}/messages?limit=100&order=desc`, { headers: this.headers(false) });
        if (!response.ok) return;
        const page = await response.json();
        for (const message of page.data.reverse()) {
          const text = typeof message.content === 'string' ? message.content : '';
          if ((message.role === 'user' || message.role === 'assistant') && text) this.bubble(message.role, text);
        }
      } catch {
        // the history is a nicety: chatting still works
      }
    }

    bubble(role, text) {
      if (this.hello) {
        this.hello.remove();
        this.hello = null;
      }
      const bubble = el('div', `message ${role}`, text);
      bubble.part = 'message';
      this.log.append(bubble);
      this.log.scrollTop = this.log.scrollHeight;
      return bubble;
    }

    fail(message, status) {
      this.log.append(el('div', 'error', message));
      this.log.scrollTop = this.log.scrollHeight;
      this.dispatchEvent(new CustomEvent('statefulproxy-error', { detail: { message, status }, bubbles: true, composed: true }));
    }

    /** Send ``text`` as the user's next message; the reply streams into the log. */
    async send(text) {
      const message = String(text || '').trim();
      if (!message || this.busy) return;
      if (!this.secret) return this.fail('No session-secret attribute: the page must be given one by its backend.');
      this.busy = true;
      this.sendButton.disabled = true;
      this.input.value = '';
      this.bubble('user', message);
      const reply = this.bubble('assistant', '');
      reply.classList.add('streaming');
      const body = { messages: [{ role: 'user', content: message }], stream: true };
      const model = this.getAttribute('model');
      if (model) body.model = model;
      let answer = '';
      try {
        const response = await fetch(this.baseUrl + (this.getAttribute('chat-path') || '/v1/chat/completions'), {
          method: 'POST',
          headers: this.headers(true),
          body: JSON.stringify(body),
        });
        if (!response.ok) {
          let problem = `The chat failed (${response.status}).`;
          try {
            const error = (await response.json()).error;
            if (error && error.message) problem = error.message;
          } catch {
            // not JSON
          }
          reply.remove();
          return this.fail(problem, response.status);
        }
        this.sessionId = response.headers.get('x-session-id') || this.sessionId;
        for await (const data of events(response)) {
          if (data === '[DONE]') break;
          let chunk;
          try {
            chunk = JSON.parse(data);
          } catch {
            continue;
          }
          if (chunk.error) throw new Error(chunk.error.message || 'The reply failed.');
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            answer += delta.content;
            reply.textContent = answer;
            this.log.scrollTop = this.log.scrollHeight;
          }
        }
        this.dispatchEvent(new CustomEvent('statefulproxy-reply', { detail: { text: answer, sessionId: this.sessionId }, bubbles: true, composed: true }));
      } catch (exc) {
        if (!answer) reply.remove();
        this.fail(exc && exc.message ? exc.message : 'The connection failed.');
      } finally {
        reply.classList.remove('streaming');
        this.busy = false;
        this.sendButton.disabled = false;
        this.input.focus();
      }
    }
  }

  customElements.define(TAG, StatefulProxyChat);
})();
