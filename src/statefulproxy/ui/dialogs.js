// Modal dialogs on the native <dialog>: Escape closes them, focus stays inside, and the page behind is inert.

import { button, h, icon } from './dom.js';

function modal(className, children) {
  const dialog = h('dialog', { class: `dialog ${className}` }, ...children);
  document.body.append(dialog);
  dialog.addEventListener('close', () => dialog.remove());
  dialog.showModal();
  return dialog;
}

/** Ask before doing something; resolves true when confirmed. */
export function confirmAction({ title, message, confirm, danger = false }) {
  return new Promise((resolve) => {
    let confirmed = false;
    const yes = button(confirm, null, () => {
      confirmed = true;
      dialog.close();
    }, { kind: danger ? 'danger' : 'primary' });
    const no = button('Cancel', null, () => dialog.close(), { kind: 'secondary' });
    const dialog = modal('dialog-confirm', [
      h('h2', { class: 'dialog-title' }, danger ? icon('alert', 18) : null, h('span', { text: title })),
      h('p', { class: 'dialog-text', text: message }),
      h('div', { class: 'dialog-actions' }, no, yes),
    ]);
    dialog.addEventListener('close', () => resolve(confirmed));
    (danger ? no : yes).focus();
  });
}

/**
 * Edit a session's title and metadata. ``save({title, metadata})`` sends them and may throw; its
 * error is shown in the dialog, which stays open.
 */
export function editSession(session, save) {
  return new Promise((resolve) => {
    let saved = null;
    const title = h('input', { class: 'input', name: 'title', maxlength: '256', value: session.title || '', autocomplete: 'off', placeholder: 'Untitled' });
    const rows = h('div', { class: 'meta-rows' });
    const error = h('p', { class: 'form-error', role: 'alert' });
    const addRow = (key = '', value = '') => {
      const row = h('div', { class: 'meta-row' });
      row.append(
        h('input', { class: 'input input-key', 'aria-label': 'Key', placeholder: 'key', maxlength: '64', value: key }),
        h('input', { class: 'input', 'aria-label': 'Value', placeholder: 'value', maxlength: '512', value }),
        button('Remove', 'close', () => row.remove(), { iconOnly: true }),
      );
      rows.append(row);
      return row;
    };
    for (const [key, value] of Object.entries(session.metadata || {})) addRow(key, value);
    const form = h(
      'form',
      { class: 'dialog-form', method: 'dialog' },
      h('h2', { class: 'dialog-title', text: 'Edit session' }),
      h('label', { class: 'field' }, h('span', { class: 'field-label', text: 'Title' }), title),
      h('div', { class: 'field' }, h('span', { class: 'field-label', text: 'Metadata' }), h('p', { class: 'field-help', text: 'Up to 16 string pairs. Keys up to 64 characters, values up to 512.' }), rows),
      button('Add field', null, () => addRow().querySelector('input').focus(), { kind: 'link' }),
      error,
      h('div', { class: 'dialog-actions' }, button('Cancel', null, () => dialog.close(), { kind: 'secondary' }), button('Save', null, null, { kind: 'primary', type: 'submit' })),
    );
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const metadata = {};
      for (const row of rows.querySelectorAll('.meta-row')) {
        const [key, value] = row.querySelectorAll('input');
        if (key.value.trim()) metadata[key.value.trim()] = value.value;
      }
      error.textContent = '';
      try {
        saved = await save({ title: title.value, metadata });
        dialog.close();
      } catch (exc) {
        error.textContent = exc.message;
      }
    });
    const dialog = modal('dialog-edit', [form]);
    dialog.addEventListener('close', () => resolve(saved));
    title.focus();
    title.select();
  });
}

export function showImage(url) {
  const img = h('img', { class: 'lightbox-img', alt: 'Image from the transcript' });
  img.src = url;
  const dialog = modal('dialog-image', [img, button('Close', 'close', () => dialog.close(), { iconOnly: true, kind: 'secondary' })]);
  dialog.addEventListener('click', (event) => {
    if (event.target === dialog) dialog.close();
  });
}

export function showShortcuts() {
  const rows = [
    ['/', 'Search sessions'],
    ['j / k', 'Next / previous session'],
    ['Enter', 'Open the selected session'],
    ['c', 'Write in the composer'],
    ['Ctrl + Enter', 'Send the message'],
    ['e', 'Edit title and metadata'],
    ['Esc', 'Close a dialog, or go back'],
    ['?', 'This list'],
  ];
  const dialog = modal('dialog-keys', [
    h('h2', { class: 'dialog-title' }, icon('keyboard', 18), h('span', { text: 'Keyboard shortcuts' })),
    h('dl', { class: 'keys' }, rows.flatMap(([key, what]) => [h('dt', {}, h('kbd', { text: key })), h('dd', { text: what })])),
    h('div', { class: 'dialog-actions' }, button('Close', null, () => dialog.close(), { kind: 'secondary' })),
  ]);
}
