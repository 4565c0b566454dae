// One run: its output followed live through /runs/{id}/stream (re-attached from the last whole
// frame when the connection drops), its JSON events, its record, Stop, and the raw log.

import { ApiError, Unauthorized, getJson, headers, postJson, request, runPath, unauthorized } from './api.js';
import { bytes, duration, exit, h, setText, sleep, status, time } from './dom.js';
import { Terminal } from './terminal.js';

const RETRY_MS = 1000;
const RECORD_POLL_MS = 1000;
/** A longer log is shown from this many bytes before its end (the download has all of it). */
const TAIL_BYTES = 2 * 1024 * 1024;
const NEWLINE = 10;

export function runView(main, id) {
  const stop = new AbortController();
  let record = null;
  let ended = false;
  // Bytes of the log read as whole frames: where a new connection starts.
  let offset = 0;

  const badge = h('span', { class: 'badge', id: 'run-status' }, '…');
  const stopButton = h('button', { type: 'button', id: 'stop', class: 'danger', disabled: true }, 'Stop');
  const download = h('button', { type: 'button', id: 'download' }, 'Download log');
  const connection = h('span', { class: 'connection', id: 'connection', role: 'status' });
  const summary = h('p', { class: 'summary', id: 'run-summary' });
  const notice = h('p', { class: 'problem', role: 'alert', hidden: true });
  const pre = h('pre', { class: 'terminal', id: 'output', tabindex: '0', 'aria-label': 'output' });
  const terminal = new Terminal(pre);
  const events = h('ol', { class: 'events', id: 'events-list' });
  const eventsNote = h('p', { class: 'muted', id: 'events-note' }, 'Loading events…');
  const fields = h('dl', { class: 'record', id: 'record' });

  const panels = {
    output: h('section', { id: 'panel-output', role: 'tabpanel', 'aria-labelledby': 'tab-output' }, pre),
    events: h('section', { id: 'panel-events', role: 'tabpanel', 'aria-labelledby': 'tab-events', hidden: true }, eventsNote, events),
    record: h('section', { id: 'panel-record', role: 'tabpanel', 'aria-labelledby': 'tab-record', hidden: true }, fields),
  };
  const tabs = {};
  for (const [key, label] of [['output', 'Output'], ['events', 'Events'], ['record', 'Record']]) {
    tabs[key] = h(
      'button',
      { type: 'button', role: 'tab', id: `tab-${key}`, 'aria-controls': `panel-${key}`, 'aria-selected': String(key === 'output') },
      label,
    );
    tabs[key].addEventListener('click', () => select(key));
  }
  const select = (key) => {
    for (const k of Object.keys(panels)) {
      panels[k].hidden = k !== key;
      tabs[k].setAttribute('aria-selected', String(k === key));
    }
    if (key === 'events') loadEvents();
  };

  main.replaceChildren(
    h('p', { class: 'back' }, h('a', { href: '#/' }, '← All runs')),
    h('div', { class: 'run-head' }, h('h1', { id: 'run-title' }, 'Run'), badge, h('span', { class: 'actions' }, stopButton, download)),
    summary,
    notice,
    h('div', { class: 'tabs', role: 'tablist' }, tabs.output, tabs.events, tabs.record, connection),
    panels.output,
    panels.events,
    panels.record,
  );

  const problem = (text) => {
    notice.hidden = !text;
    setText(notice, text || '');
  };

  stopButton.addEventListener('click', async () => {
    stopButton.disabled = true;
    try {
      await postJson(runPath(id, '/stop'), undefined, { signal: stop.signal });
      setText(connection, 'stopping…');
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) problem('The run had already ended.');
      else if (!(e instanceof Unauthorized)) problem(`Stop failed: ${e.message}`);
    }
    refreshRecord();
  });

  download.addEventListener('click', async () => {
    download.disabled = true;
    try {
      const parts = [];
      let at = 0;
      for (;;) {
        const page = await getJson(runPath(id, `/log?offset=${at}&max_bytes=4194304`), { signal: stop.signal });
        if (page.content) parts.push(page.content);
        if (page.eof || !page.content) break;
        at = page.next_offset;
      }
      const url = URL.createObjectURL(new Blob(parts, { type: 'application/x-ndjson' }));
      const a = h('a', { href: url, download: `cligate-run-${id}.ndjson`, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (e) {
      if (!(e instanceof Unauthorized)) problem(`Download failed: ${e.message}`);
    } finally {
      download.disabled = false;
    }
  });

  function showRecord(r) {
    record = r;
    setText(document.getElementById('run-title'), r.session_id);
    const word = status(r);
    setText(badge, word);
    badge.className = `badge badge-${word}`;
    stopButton.disabled = !(r.state === 'queued' || r.state === 'running');
    const parts = [r.cli, r.model && `model ${r.model}`, `started ${time(r.started_at || r.created_at)}`, duration(r)];
    if (r.exit_code !== null) parts.push(`exit ${exit(r)}`);
    parts.push(`${bytes(r.stdout_bytes)} stdout, ${bytes(r.stderr_bytes)} stderr`);
    setText(summary, parts.filter(Boolean).join(' · '));
    const rows = [
      ['run_id', r.run_id],
      ['session_id', r.session_id],
      ['cli', r.cli],
      ['args', JSON.stringify(r.args)],
      ['env_keys', r.env_keys.join(', ')],
      ['model', r.model],
      ['mode', r.mode],
      ['owner', r.owner],
      ['instance', r.instance],
      ['state', r.state],
      ['exit_code', r.exit_code],
      ['reason', r.reason],
      ['created_at', r.created_at],
      ['started_at', r.started_at],
      ['finished_at', r.finished_at],
      ['stdout_bytes', r.stdout_bytes],
      ['stderr_bytes', r.stderr_bytes],
      ['log_bytes', r.log_bytes],
      ['detached', r.detached],
      ['callback_url', r.callback_url],
      ['callback', r.callback ? JSON.stringify(r.callback, null, 2) : null],
    ];
    fields.replaceChildren(...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v === null || v === undefined ? '—' : String(v))]));
  }

  let recordFailed = false;
  async function refreshRecord() {
    try {
      showRecord(await getJson(runPath(id), { signal: stop.signal }));
      if (recordFailed) problem('');
      recordFailed = false;
      return true;
    } catch (e) {
      if (stop.signal.aborted || e instanceof Unauthorized) return false;
      recordFailed = true;
      problem(e instanceof ApiError && e.status === 404 ? 'No such run (or not yours).' : `The record cannot be read: ${e.message}`);
      return false;
    }
  }

  // Events: read page by page from where the last read ended; again while the run goes on.
  let eventsAt = 0;
  let eventsBusy = false;
  let eventsCount = 0;
  async function loadEvents() {
    if (eventsBusy) return;
    eventsBusy = true;
    try {
      for (;;) {
        const page = await getJson(runPath(id, `/events?offset=${eventsAt}&max_bytes=1048576`), { signal: stop.signal });
        for (const { offset: at, event } of page.events) {
          eventsCount += 1;
          const kind = typeof event.type === 'string' ? event.type : 'event';
          events.append(
            h('li', {}, h('div', { class: 'event-head' }, h('span', { class: 'event-type' }, kind), h('span', { class: 'muted' }, ` at byte ${at}`)), h('pre', {}, JSON.stringify(event, null, 2))),
          );
        }
        const moved = page.next_offset !== eventsAt;
        eventsAt = page.next_offset;
        setText(eventsNote, eventsCount ? `${eventsCount} JSON events printed on stdout` : 'No JSON events (lines of stdout that are JSON objects, e.g. codex exec --json).');
        if (page.eof || !moved || page.next_offset >= page.size) break;
      }
    } catch (e) {
      if (!stop.signal.aborted && !(e instanceof Unauthorized)) setText(eventsNote, `Events cannot be read: ${e.message}`);
    } finally {
      eventsBusy = false;
    }
  }

  function frame(f) {
    switch (f.type) {
      case 'stdout':
      case 'stderr':
        terminal.write(f.type, f.data);
        break;
      case 'exit':
        ended = true;
        setText(connection, `ended: exit ${f.code} (${f.reason})`);
        break;
      default:
        // session and any frame type added later: nothing to show
        break;
    }
  }

  // One connection: reads whole lines, advances `offset` past each, returns at its end.
  async function attach() {
    const response = await fetch(runPath(id, `/stream?offset=${offset}`), {
      headers: headers(),
      signal: stop.signal,
      cache: 'no-store',
    });
    if (response.status === 401) throw unauthorized();
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    setText(connection, 'live');
    pre.dataset.attached = String(Number(pre.dataset.attached || 0) + 1);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = new Uint8Array(0);
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      let buf = pending.length ? concat(pending, value) : value;
      let start = 0;
      for (let i = buf.indexOf(NEWLINE); i >= 0; i = buf.indexOf(NEWLINE, start)) {
        const line = buf.subarray(start, i);
        start = i + 1;
        offset += line.length + 1;
        if (skipPartial) {
          // The first line after a mid-log start is the tail of a frame: not shown.
          skipPartial = false;
          continue;
        }
        try {
          frame(JSON.parse(decoder.decode(line)));
        } catch {
          // not a frame: ignored
        }
      }
      pending = buf.slice(start);
    }
  }

  const final = () => record && (record.state === 'finished' || record.state === 'interrupted');
  let skipPartial = false;
  (async () => {
    if (!(await refreshRecord())) return;
    if (record.log_bytes > TAIL_BYTES) {
      offset = record.log_bytes - TAIL_BYTES;
      skipPartial = true;
      const note = h('span', { class: 'frame note' }, `[the first ${bytes(offset)} are not shown: download the log for all of it]\n`);
      pre.append(note);
    }
    // The record is refreshed beside the stream while the run goes on.
    (async () => {
      while (!stop.signal.aborted && !final()) {
        await sleep(RECORD_POLL_MS, stop.signal);
        if (stop.signal.aborted) return;
        await refreshRecord();
        if (!panels.events.hidden) loadEvents();
      }
    })();
    while (!ended && !stop.signal.aborted) {
      try {
        await attach();
        // The stream ends without an exit frame only when the log was closed without one (a
        // run its gateway lost): then the record says it is over.
        if (!ended && (await refreshRecord()) && final()) ended = true;
      } catch (e) {
        if (stop.signal.aborted || e instanceof Unauthorized) return;
        // A queued run may have no log to follow yet: wait for it to start.
        if (e instanceof ApiError && e.status < 500 && !((await refreshRecord()) && record.state === 'queued')) {
          problem(`The output cannot be followed: ${e.message}`);
          return;
        }
      }
      if (ended || stop.signal.aborted) break;
      setText(connection, 'connection lost; re-attaching…');
      await sleep(RETRY_MS, stop.signal);
    }
    await refreshRecord();
  })();

  return () => stop.abort();
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}
