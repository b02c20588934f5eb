// Ask this site's backend for a chat session, then load the widget from the proxy and show it.
const box = document.getElementById('chat');
try {
  const response = await fetch('/chat-session', { method: 'POST' });
  if (!response.ok) throw new Error((await response.json()).error);
  const { proxy, session_id: sessionId, client_secret: secret } = await response.json();

  const script = document.createElement('script');
  script.src = `${proxy}/ui/widget.js`;
  document.head.append(script);

  const chat = document.createElement('statefulproxy-chat');
  chat.setAttribute('base-url', proxy);
  chat.setAttribute('session-secret', secret);
  chat.setAttribute('session-id', sessionId);
  chat.setAttribute('heading', 'Ask Acme');
  chat.setAttribute('placeholder', 'Ask about your order…');
  box.replaceChildren(chat);
} catch (error) {
  box.textContent = `The chat is unavailable: ${error.message}`;
}
