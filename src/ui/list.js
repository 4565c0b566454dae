// The runs list: newest first, filtered by state and CLI, searched by session id, paged with the
// API's cursor, and polled every second so it stays live without a reload.

import { ApiError, Unauthorized, getJson } from './api.js';
import { bytes, duration, exit, h, setText, sleep, status, time } from './dom.js';

const POLL_MS = 1000;
const PAGE_SIZE = 50;
const STATES = ['queued', 'running', 'finished', 'interrupted'];
const COLUMNS = [
  ['status', 'State'],
  ['cli', 'CLI'],
  ['model', 'Model'],
  ['session', 'Session'],
  ['started', 'Started'],
  ['duration', 'Duration'],
  ['exit', 'Exit'],
  ['bytes', 'Output'],
];

/** Renders the list into `main`; returns a function that stops it. */
export function listView(main, params, catalog) {
  const stop = new AbortController();
  const filters = {
    state: STATES.includes(params.get('state')) ? params.get('state') : '',
    cli: params.get('cli') || '',
    session_id: params.get('session') || '',
  };
  // Cursors of the pages before this one; the current page's cursor is `cursor`.
  let cursors = [];
  let cursor = null;
  let next = null;
  const rows = new Map();

  const state = h(
    'select',
    { id: 'filter-state', name: 'state' },
    h('option', { value: '' }, 'any state'),
    STATES.map((s) => h('option', { value: s, selected: s === filters.state }, s)),
  );
  const cli = h(
    'select',
    { id: 'filter-cli', name: 'cli' },
    h('option', { value: '' }, 'any CLI'),
    catalog.clis.map((c) => h('option', { value: c, selected: c === filters.cli }, c)),
  );
  const session = h('input', {
    id: 'filter-session',
    name: 'session',
    type: 'search',
    placeholder: 'session id',
    value: filters.session_id,
    autocomplete: 'off',
  });
  const form = h(
    'form',
    { class: 'filters', role: 'search' },
    h('label', {}, h('span', {}, 'State'), state),
    h('label', {}, h('span', {}, 'CLI'), cli),
    h('label', { class: 'grow' }, h('span', {}, 'Session'), session),
  );
  const tbody = h('tbody', { id: 'runs-body' });
  const table = h(
    'table',
    { class: 'runs', id: 'runs' },
    h('thead', {}, h('tr', {}, COLUMNS.map(([, label]) => h('th', { scope: 'col' }, label)))),
    tbody,
  );
  const empty = h('p', { class: 'empty', id: 'runs-empty', hidden: true }, 'No runs.');
  const problem = h('p', { class: 'problem', role: 'alert', hidden: true });
  const newer = h('button', { type: 'button', id: 'page-newer', disabled: true }, '← Newer');
  const older = h('button', { type: 'button', id: 'page-older', disabled: true }, 'Older →');
  const pageNo = h('span', { class: 'page-no' });
  main.replaceChildren(
    h('h1', {}, 'Runs'),
    form,
    problem,
    h('div', { class: 'table-wrap' }, table),
    empty,
    h('nav', { class: 'pager', 'aria-label': 'pages' }, newer, pageNo, older),
  );

  const changed = () => {
    filters.state = state.value;
    filters.cli = cli.value;
    filters.session_id = session.value.trim();
    cursors = [];
    cursor = null;
    const q = new URLSearchParams();
    if (filters.state) q.set('state', filters.state);
    if (filters.cli) q.set('cli', filters.cli);
    if (filters.session_id) q.set('session', filters.session_id);
    const hash = q.toString() ? `#/?${q}` : '#/';
    history.replaceState(null, '', hash);
    refresh();
  };
  state.addEventListener('change', changed);
  cli.addEventListener('change', changed);
  let typing;
  session.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(changed, 250);
  });
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    changed();
  });
  older.addEventListener('click', () => {
    if (!next) return;
    cursors.push(cursor);
    cursor = next;
    refresh();
  });
  newer.addEventListener('click', () => {
    if (!cursors.length) return;
    cursor = cursors.pop();
    refresh();
  });

  let generation = 0;
  async function refresh() {
    const mine = ++generation;
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
    if (cursor) q.set('cursor', cursor);
    try {
      const page = await getJson(`/runs?${q}`, { signal: stop.signal });
      if (mine !== generation || stop.signal.aborted) return;
      problem.hidden = true;
      next = page.next_cursor;
      render(page.runs);
    } catch (e) {
      if (stop.signal.aborted || e instanceof Unauthorized) return;
      problem.hidden = false;
      setText(problem, e instanceof ApiError ? `The gateway refused the list: ${e.message}` : 'The gateway does not answer; retrying…');
    }
  }

  function render(runs) {
    const seen = new Set();
    const order = [];
    for (const run of runs) {
      seen.add(run.run_id);
      let row = rows.get(run.run_id);
      if (!row) {
        row = newRow(run);
        rows.set(run.run_id, row);
      }
      update(row, run);
      order.push(row.tr);
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    // Moved only when the order changed, so a focused link keeps its focus.
    const current = Array.from(tbody.children);
    if (current.length !== order.length || current.some((tr, i) => tr !== order[i])) {
      tbody.replaceChildren(...order);
    }
    empty.hidden = runs.length > 0;
    newer.disabled = cursors.length === 0;
    older.disabled = !next;
    setText(pageNo, `page ${cursors.length + 1}`);
  }

  (async () => {
    while (!stop.signal.aborted) {
      await refresh();
      await sleep(POLL_MS, stop.signal);
    }
  })();

  return () => stop.abort();
}

function newRow(run) {
  const cells = {};
  const tr = h('tr', { 'data-run-id': run.run_id });
  for (const [key, label] of COLUMNS) {
    cells[key] = h('td', { 'data-label': label, class: `col-${key}` });
    tr.append(cells[key]);
  }
  cells.link = h('a', { href: `#/runs/${encodeURIComponent(run.run_id)}` });
  cells.session.append(cells.link);
  cells.badge = h('span', { class: 'badge' });
  cells.status.append(cells.badge);
  return { tr, cells };
}

function update(row, run) {
  const c = row.cells;
  const word = status(run);
  setText(c.badge, word);
  c.badge.className = `badge badge-${word}`;
  row.tr.dataset.state = run.state;
  setText(c.cli, run.cli);
  setText(c.model, run.model || '');
  setText(c.link, run.session_id);
  c.link.title = `run ${run.run_id}`;
  setText(c.started, time(run.started_at || run.created_at));
  setText(c.duration, duration(run));
  setText(c.exit, exit(run));
  setText(c.bytes, bytes(run.stdout_bytes + run.stderr_bytes));
}
