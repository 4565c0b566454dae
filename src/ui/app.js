// The page's entry point: asks for a token when the gateway wants one, then shows the view the
// location's hash names: `#/` (runs list, filters after `?`), `#/runs/{id}`, `#/new`.

import { Unauthorized, getJson, setToken, token } from './api.js';
import { h, setText } from './dom.js';
import { listView } from './list.js';
import { runView } from './run.js';
import { startView } from './start.js';

const main = document.getElementById('main');
const forget = document.getElementById('forget');
let dispose = () => {};
let catalog = null;
let asking = false;

function parse(hash) {
  const [path, query = ''] = hash.replace(/^#/, '').split('?');
  return { path: path || '/', params: new URLSearchParams(query) };
}

async function loadCatalog() {
  const [clis, models] = await Promise.all([getJson('/clis'), getJson('/models')]);
  catalog = { clis: clis.clis, models: models.models };
}

async function show() {
  if (asking) return;
  dispose();
  dispose = () => {};
  try {
    if (!catalog) await loadCatalog();
  } catch (e) {
    if (!(e instanceof Unauthorized)) {
      main.replaceChildren(h('h1', {}, 'cligate'), h('p', { class: 'problem', role: 'alert' }, `The gateway does not answer: ${e.message}`));
    }
    return;
  }
  forget.hidden = !token();
  const { path, params } = parse(location.hash);
  const run = path.match(/^\/runs\/([^/]+)$/);
  for (const a of document.querySelectorAll('header nav a')) {
    a.toggleAttribute('aria-current', a.getAttribute('href') === (run ? '#/' : path === '/new' ? '#/new' : '#/'));
  }
  if (run) {
    document.title = 'cligate · run';
    dispose = runView(main, decodeURIComponent(run[1]));
  } else if (path === '/new') {
    document.title = 'cligate · start a run';
    dispose = startView(main, catalog);
  } else {
    document.title = 'cligate · runs';
    dispose = listView(main, params, catalog);
  }
}

/** The token form; `refused` when the last token was not accepted. */
function ask(refused) {
  if (asking) return;
  asking = true;
  dispose();
  dispose = () => {};
  catalog = null;
  forget.hidden = true;
  const input = h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const message = h('p', { class: refused ? 'problem' : 'muted', id: 'token-message', role: 'alert' });
  setText(message, refused ? 'That token was refused. Try another.' : 'This gateway needs a bearer token. It is kept for this tab only.');
  const form = h(
    'form',
    { class: 'login', id: 'token-form' },
    h('h1', {}, 'Token'),
    message,
    h('label', {}, h('span', {}, 'Bearer token'), input),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'token-submit' }, 'Continue')),
  );
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    setToken(input.value.trim());
    try {
      await loadCatalog();
    } catch (err) {
      if (err instanceof Unauthorized) {
        setToken('');
        asking = false;
        ask(true);
      } else {
        setText(message, `The gateway does not answer: ${err.message}`);
      }
      return;
    }
    asking = false;
    show();
  });
  main.replaceChildren(form);
  input.focus();
}

window.addEventListener('cligate:unauthorized', () => {
  const had = token() !== '';
  setToken('');
  ask(had);
});
window.addEventListener('hashchange', show);
forget.addEventListener('click', () => {
  setToken('');
  ask(false);
});
show();
