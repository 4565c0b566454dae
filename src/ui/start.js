// Start a run: a CLI of /clis, a model of /models, arguments and a prompt, sent as a detached
// run (POST /runs); the answer's run id opens its page.

import { ApiError, Unauthorized, postJson } from './api.js';
import { h, setText } from './dom.js';

export function startView(main, catalog) {
  const stop = new AbortController();
  const cli = h('select', { id: 'start-cli', name: 'cli', required: true }, catalog.clis.map((c) => h('option', { value: c }, c)));
  const models = catalog.models.filter((m) => m);
  const model = h(
    'select',
    { id: 'start-model', name: 'model' },
    h('option', { value: '' }, '(none: not passed)'),
    models.map((m) => h('option', { value: m }, m)),
  );
  const args = h('textarea', { id: 'start-args', name: 'args', rows: '3', spellcheck: 'false', placeholder: 'exec\n--json' });
  const prompt = h('textarea', { id: 'start-prompt', name: 'prompt', rows: '6', placeholder: 'Review this change …' });
  const session = h('input', { id: 'start-session', name: 'session', type: 'text', autocomplete: 'off', placeholder: 'optional; a UUID is made' });
  const submit = h('button', { type: 'submit', id: 'start-submit', class: 'primary' }, 'Start');
  const problem = h('p', { class: 'problem', role: 'alert', id: 'start-problem', hidden: true });
  const form = h(
    'form',
    { class: 'start', id: 'start-form' },
    h('label', {}, h('span', {}, 'CLI'), cli),
    h('label', {}, h('span', {}, 'Model'), model, h('small', {}, 'passed as --model before the arguments')),
    h('label', {}, h('span', {}, 'Arguments'), args, h('small', {}, 'one per line, passed as they are (no shell)')),
    h('label', {}, h('span', {}, 'Prompt'), prompt, h('small', {}, 'written to the CLI’s standard input')),
    h('label', {}, h('span', {}, 'Session id'), session),
    problem,
    h('div', { class: 'actions' }, submit),
  );
  main.replaceChildren(h('h1', {}, 'Start a run'), form);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    problem.hidden = true;
    const body = { cli: cli.value, args: args.value.split('\n').map((a) => a.replace(/\r$/, '')).filter((a) => a !== '') };
    if (model.value) body.args = ['--model', model.value, ...body.args];
    if (prompt.value) body.stdin = prompt.value;
    if (session.value.trim()) body.session_id = session.value.trim();
    submit.disabled = true;
    try {
      const started = await postJson('/runs', body, { signal: stop.signal });
      location.hash = `#/runs/${encodeURIComponent(started.run_id)}`;
    } catch (err) {
      if (stop.signal.aborted || err instanceof Unauthorized) return;
      problem.hidden = false;
      setText(problem, err instanceof ApiError ? `Refused (${err.status}): ${err.message}` : `The gateway does not answer: ${err.message}`);
      submit.disabled = false;
    }
  });

  return () => stop.abort();
}
