// The web UI at /ui in a real browser (Debian's chromium through playwright-core) against the
// real gateway binary running real fixture CLIs: the live list, a live run page that re-attaches
// after a dropped connection, Stop, the start form, hostile output, tokens, a 375 px screen and
// the keyboard. Run by `./test.sh browser` (part of the default ./test.sh).

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { SCREENSHOTS, alive, launchBrowser, openPage, startGateway, startRelay, tabTo, until } from './harness.mjs';

const TOKEN = 'ui-browser-test-token-0123456789';

let browser;
before(async () => {
  browser = await launchBrowser();
  mkdirSync(SCREENSHOTS, { recursive: true });
});
after(async () => {
  await browser?.close();
});

/** Lines of `text` that start with `prefix`. */
const linesOf = (text, prefix) => text.split('\n').filter((l) => l.startsWith(prefix));

/** The page's output text. */
const output = (page) => page.locator('#output').textContent();

/** No CSP violation, no script error, no dialog on this page. */
function assertClean(seen) {
  assert.deepEqual(seen.dialogs, [], 'a dialog was opened');
  assert.deepEqual(seen.pageErrors, [], 'the page threw');
  const csp = seen.consoleErrors.filter((e) => /Content Security Policy/i.test(e));
  assert.deepEqual(csp, [], 'the page broke its Content-Security-Policy');
}

describe('without tokens', () => {
  let gw;
  let relay;
  before(async () => {
    gw = await startGateway({ CODEX_STEP: '0.15' });
    relay = await startRelay(gw.port);
  });
  after(async () => {
    await relay?.close();
    await gw?.stop();
  });

  test('a run started through the API appears in the list within 2 s and turns finished with its exit code', async () => {
    const { page, context, seen } = await openPage(browser);
    await page.goto(`${gw.url}/ui`);
    await page.locator('#runs').waitFor();
    const started = await gw.api('/runs', {
      method: 'POST',
      body: { cli: 'sh', args: ['-c', 'echo working; sleep 1.5; echo done; exit 3'], session_id: 'list-exit-3' },
    });
    assert.equal(started.status, 202, started.text);
    const t0 = Date.now();
    const row = page.locator(`tr[data-run-id="${started.json.run_id}"]`);
    await row.waitFor({ timeout: 2000 });
    assert.ok(Date.now() - t0 <= 2000, 'in the list within 2 s');
    assert.equal(await row.getAttribute('data-state'), 'running');
    assert.equal(await row.locator('.col-session a').textContent(), 'list-exit-3');
    // It finishes on its own; the row follows without a reload.
    await until('the row says finished', async () => (await row.getAttribute('data-state')) === 'finished', 10000);
    assert.equal(await row.locator('.col-exit').textContent(), '3');
    assert.equal(await row.locator('.badge').textContent(), 'exited');
    assert.equal(await row.locator('.col-cli').textContent(), 'sh');
    // Filters: by state and CLI, and the session search.
    await page.selectOption('#filter-state', 'running');
    await until('a finished run is filtered out', async () => (await row.count()) === 0);
    await page.selectOption('#filter-state', '');
    await row.waitFor();
    await page.fill('#filter-session', 'no-such-session');
    await until('the search leaves nothing', async () => page.locator('#runs-empty').isVisible());
    await page.fill('#filter-session', 'list-exit-3');
    await row.waitFor();
    assert.equal(await page.locator('#runs-body tr').count(), 1);
    assertClean(seen);
    await context.close();
  });

  test('the list pages through many runs, newest first', async () => {
    const ids = [];
    for (let i = 0; i < 55; i++) {
      const r = await gw.api('/runs', { method: 'POST', body: { cli: 'exit-code', args: ['0'], session_id: `page-${String(i).padStart(2, '0')}` } });
      assert.equal(r.status, 202, r.text);
      ids.push(r.json.run_id);
    }
    const { page, context, seen } = await openPage(browser);
    await page.goto(`${gw.url}/ui#/?cli=exit-code`);
    await until('the first page is full', async () => (await page.locator('#runs-body tr').count()) === 50);
    assert.equal(await page.locator('#runs-body tr').first().getAttribute('data-run-id'), ids[54], 'newest first');
    await page.click('#page-older');
    await until('the second page has the oldest runs', async () => (await page.locator('#runs-body tr').count()) === 5);
    assert.equal(await page.locator('#runs-body tr').last().getAttribute('data-run-id'), ids[0]);
    assert.ok(await page.locator('#page-older').isDisabled());
    await page.click('#page-newer');
    await until('back on the first page', async () => (await page.locator('#runs-body tr').count()) === 50);
    assertClean(seen);
    await context.close();
  });

  test('a run page shows a slow CLI line by line, and all lines once after the connection drops', async () => {
    const script = 'for i in $(seq 1 14); do echo "line $i"; sleep 0.25; done; echo "warning" >&2';
    const started = await gw.api('/runs', { method: 'POST', body: { cli: 'sh', args: ['-c', script], session_id: 'slow-lines' } });
    assert.equal(started.status, 202, started.text);
    const id = started.json.run_id;
    const { page, context, seen } = await openPage(browser);
    // Through the relay, whose connections the test cuts.
    await page.goto(`${relay.url}/ui#/runs/${id}`);
    await until('line 3 is shown', async () => (await output(page)).includes('line 3\n'));
    const early = linesOf(await output(page), 'line ');
    const record = await gw.api(`/runs/${id}`);
    assert.equal(record.json.state, 'running', 'the run still runs while its lines appear');
    assert.ok(early.length < 14, `not all lines yet: ${early}`);
    assert.deepEqual(early, early.map((_, i) => `line ${i + 1}`), 'in order');
    // Drop every connection (the stream's among them): the page re-attaches from its offset.
    assert.ok(relay.cut() > 0, 'connections were open');
    await until('the run has ended on the page', async () => (await page.locator('#connection').textContent()).startsWith('ended'), 15000);
    const text = await output(page);
    assert.deepEqual(linesOf(text, 'line '), Array.from({ length: 14 }, (_, i) => `line ${i + 1}`), 'every line once, in order');
    assert.ok(Number(await page.locator('#output').getAttribute('data-attached')) >= 2, 'it re-attached');
    const streams = seen.requests.filter((u) => u.includes(`/runs/${id}/stream`));
    assert.ok(streams.length >= 2, streams.join('\n'));
    assert.ok(streams.slice(1).every((u) => !u.endsWith('offset=0')), `re-attached from its offset: ${streams}`);
    // stderr is told apart from stdout.
    assert.equal(await page.locator('#output .stderr').textContent(), 'warning\n');
    assert.equal(await page.locator('#output .stdout').count(), 14);
    await until('the badge says exited', async () => (await page.locator('#run-status').textContent()) === 'exited');
    assertClean(seen);
    await context.close();
  });

  test('Stop, reached with the keyboard, ends the process and the page says stopped', async () => {
    const started = await gw.api('/runs', {
      method: 'POST',
      body: { cli: 'sh', args: ['-c', 'echo "pid $$"; while :; do sleep 0.2; done'], session_id: 'to-be-stopped' },
    });
    assert.equal(started.status, 202, started.text);
    const { page, context, seen } = await openPage(browser);
    await page.goto(`${gw.url}/ui#/runs/${started.json.run_id}`);
    const pid = Number(
      await until('the pid is shown', async () => (await output(page)).match(/pid (\d+)/)?.[1], 10000),
    );
    assert.ok(alive(pid), `process ${pid} runs`);
    await until('Stop is enabled', async () => page.locator('#stop').isEnabled());
    await tabTo(page, 'stop');
    await page.keyboard.press('Enter');
    await until('the badge says stopped', async () => (await page.locator('#run-status').textContent()) === 'stopped', 10000);
    await until(`process ${pid} is gone`, async () => !alive(pid), 10000);
    assert.ok(await page.locator('#stop').isDisabled(), 'nothing left to stop');
    const record = await gw.api(`/runs/${started.json.run_id}`);
    assert.equal(record.json.reason, 'stopped');
    assert.equal(record.json.exit_code, 143);
    assertClean(seen);
    await context.close();
  });

  test('the start form, used by keyboard, runs a CLI and lands on its page with its output', async () => {
    const { page, context, seen } = await openPage(browser);
    await page.goto(`${gw.url}/ui#/new`);
    await page.selectOption('#start-cli', 'codex');
    await page.selectOption('#start-model', 'gpt-test');
    await page.fill('#start-args', 'exec\n--skip-git-repo-check');
    await page.fill('#start-prompt', 'Review change 1234 <b>now</b>');
    await tabTo(page, 'start-submit');
    await page.keyboard.press('Enter');
    await until('on the run page', async () => /#\/runs\/[0-9a-f]+$/.test(page.url()));
    const id = page.url().split('/').pop();
    await until('the output is shown', async () => (await output(page)).includes('re-attach must start'), 15000);
    const text = await output(page);
    assert.ok(text.includes('prompt: Review change 1234 <b>now</b>\n'), text);
    assert.ok(text.includes('args: --model gpt-test exec --skip-git-repo-check'), text);
    const record = await gw.api(`/runs/${id}`);
    assert.deepEqual(record.json.args, ['--model', 'gpt-test', 'exec', '--skip-git-repo-check']);
    assert.equal(record.json.model, 'gpt-test');
    // ANSI colours are rendered, not printed: no escape character is left.
    assert.ok(!text.includes('\x1b') && !text.includes('[0m'), JSON.stringify(text));
    const green = page.locator('#output span', { hasText: '✔' }).last();
    assert.equal(await green.evaluate((e) => getComputedStyle(e).color), 'rgb(0, 187, 0)');
    assert.equal(await green.evaluate((e) => getComputedStyle(e).fontWeight), '700');
    await until('exited', async () => (await page.locator('#run-status').textContent()) === 'exited', 10000);
    // The record tab.
    await page.click('#tab-record');
    assert.ok((await page.locator('#record').textContent()).includes('gpt-test'));
    await page.click('#tab-output');
    await page.screenshot({ path: path.join(SCREENSHOTS, 'run.png') });
    // A refused start stays on the form and says why.
    await page.goto(`${gw.url}/ui#/new`);
    await page.selectOption('#start-cli', 'sh');
    await page.fill('#start-session', 'a/b');
    await page.click('#start-submit');
    await until('the refusal is shown', async () => page.locator('#start-problem').isVisible());
    assert.match(await page.locator('#start-problem').textContent(), /^Refused \(400\): session_id/);
    assert.ok(page.url().endsWith('#/new'));
    assertClean(seen);
    await context.close();
  });

  test('the events tab shows the JSON events of a --json run', async () => {
    const started = await gw.api('/runs', { method: 'POST', body: { cli: 'codex', args: ['exec', '--json'], stdin: 'check it' } });
    assert.equal(started.status, 202, started.text);
    const { page, context, seen } = await openPage(browser);
    await page.goto(`${gw.url}/ui#/runs/${started.json.run_id}`);
    await page.click('#tab-events');
    await until('four events', async () => (await page.locator('#events-list li').count()) === 4, 10000);
    const types = await page.locator('#events-list .event-type').allTextContents();
    assert.deepEqual(types, ['thread.started', 'turn.started', 'item.completed', 'turn.completed']);
    assert.ok((await page.locator('#events-list').textContent()).includes('"text": "Reviewed: check it"'));
    assertClean(seen);
    await context.close();
  });

  test('hostile output and session ids are shown as text and run no script', async () => {
    const hostile = [
      '<script>window.__xss = 1; alert(1)</script>',
      '<img src=x onerror="window.__xss = 2; alert(2)">',
      '<svg onload=alert(3)></svg><iframe src="javascript:alert(4)"></iframe>',
      "\x1b]8;;javascript:alert(5)\x07link\x1b]8;;\x07 \x1b[2K\x1b[?25l\x1b[31mred\x1b[0m",
    ];
    const session = '<img src=x onerror=alert(6)>';
    const started = await gw.api('/runs', {
      method: 'POST',
      body: { cli: 'sh', args: ['-c', 'printf "%s\\n" "$@"; printf "%s\\n" "$1" >&2', 'sh', ...hostile], session_id: session },
    });
    assert.equal(started.status, 202, started.text);
    const { page, context, seen } = await openPage(browser);
    await page.goto(`${gw.url}/ui#/runs/${started.json.run_id}`);
    await until('the run has ended on the page', async () => (await page.locator('#connection').textContent()).startsWith('ended'));
    const text = await output(page);
    for (const line of hostile.slice(0, 3)) assert.ok(text.includes(`${line}\n`), `${line} shown as text in ${text}`);
    assert.ok(text.includes('link red\n'), JSON.stringify(text));
    assert.equal(await page.locator('#output img, #output script, #output svg, #output iframe, #output a').count(), 0);
    assert.equal(await page.locator('#output span', { hasText: /^red$/ }).evaluate((e) => getComputedStyle(e).color), 'rgb(187, 0, 0)');
    assert.equal(await page.locator('#run-title').textContent(), session);
    await page.click('#tab-record');
    await page.goto(`${gw.url}/ui#/`);
    const row = page.locator(`tr[data-run-id="${started.json.run_id}"]`);
    await row.waitFor();
    assert.equal(await row.locator('.col-session a').textContent(), session);
    assert.equal(await page.locator('main img').count(), 0);
    await page.waitForTimeout(300);
    assert.equal(await page.evaluate(() => window.__xss), undefined, 'no script ran');
    assertClean(seen);
    await context.close();
  });

  test('at 375 px wide nothing overflows the page, and the list screenshot is saved', async () => {
    const started = await gw.api('/runs', { method: 'POST', body: { cli: 'codex', args: ['exec', '--model', 'gpt-test'], stdin: 'narrow', session_id: 'change-1234-ps2' } });
    assert.equal(started.status, 202, started.text);
    const { page, context, seen } = await openPage(browser, { width: 375, height: 740 });
    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await page.goto(`${gw.url}/ui#/`);
    await until('rows are shown', async () => (await page.locator('#runs-body tr').count()) > 3);
    assert.ok((await overflow()) <= 0, `the list overflows by ${await overflow()} px`);
    await page.goto(`${gw.url}/ui#/runs/${started.json.run_id}`);
    await until('output is shown', async () => (await output(page)).includes('prompt: narrow'), 10000);
    assert.ok((await overflow()) <= 0, `the run page overflows by ${await overflow()} px`);
    await page.click('#tab-record');
    assert.ok((await overflow()) <= 0, `the record overflows by ${await overflow()} px`);
    await page.goto(`${gw.url}/ui#/new`);
    await page.locator('#start-form').waitFor();
    assert.ok((await overflow()) <= 0, `the form overflows by ${await overflow()} px`);
    await page.screenshot({ path: path.join(SCREENSHOTS, 'narrow-run-form.png') });
    assertClean(seen);
    await context.close();
    // The wide list, for the README.
    const wide = await openPage(browser, { width: 1280, height: 720 });
    await wide.page.goto(`${gw.url}/ui#/`);
    await until('rows are shown', async () => (await wide.page.locator('#runs-body tr').count()) > 3);
    await until('nothing runs', async () => (await wide.page.locator('#runs-body tr[data-state=running]').count()) === 0, 10000);
    await wide.page.screenshot({ path: path.join(SCREENSHOTS, 'runs.png') });
    await wide.context.close();
  });
});

describe('with AUTH_TOKENS', () => {
  let gw;
  before(async () => {
    gw = await startGateway({ AUTH_TOKENS: `operator:${TOKEN}` });
  });
  after(async () => {
    await gw?.stop();
  });

  test('no data without the token, a wrong one is refused, the right one works, a 401 asks again', async () => {
    const started = await gw.api('/runs', { method: 'POST', body: { cli: 'args', args: ['secret-output-42'], session_id: 'private-session' }, token: TOKEN });
    assert.equal(started.status, 202, started.text);
    assert.equal((await gw.api('/runs')).status, 401);
    const { page, context, seen } = await openPage(browser);
    await page.goto(`${gw.url}/ui#/runs/${started.json.run_id}`);
    await page.locator('#token-form').waitFor();
    assert.ok(await page.locator('#token').evaluate((e) => e === document.activeElement), 'the token field has the focus');
    let body = await page.locator('body').textContent();
    assert.ok(!body.includes('private-session') && !body.includes('secret-output-42'), 'no data without a token');
    // A wrong token.
    await page.fill('#token', 'wrong-token-0123456789abcdef');
    await page.keyboard.press('Enter');
    await until('refused', async () => (await page.locator('#token-message').textContent()).includes('refused'));
    assert.equal(await page.evaluate(() => sessionStorage.getItem('cligate.token')), null, 'a refused token is not kept');
    body = await page.locator('body').textContent();
    assert.ok(!body.includes('private-session'));
    // The right one: the page it was asked for opens.
    await page.fill('#token', TOKEN);
    await page.keyboard.press('Enter');
    await until('the output is shown', async () => (await page.locator('#output').textContent()).includes('[secret-output-42]'), 10000);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('cligate.token')), TOKEN);
    assert.equal(await page.evaluate(() => localStorage.length), 0, 'nothing in localStorage');
    // The raw log downloads with the token in a header.
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
    const file = readFileSync(await download.path(), 'utf8');
    const log = await gw.api(`/runs/${started.json.run_id}/log?offset=0&max_bytes=4194304`, { token: TOKEN });
    assert.equal(file, log.json.content);
    assert.match(download.suggestedFilename(), /^cligate-run-[0-9a-f]+\.ndjson$/);
    // The list.
    await page.goto(`${gw.url}/ui#/`);
    await page.locator(`tr[data-run-id="${started.json.run_id}"]`).waitFor();
    // The token goes in a header, never in a URL.
    assert.ok(seen.requests.length > 5);
    for (const u of seen.requests) assert.ok(!u.includes(TOKEN), `token in ${u}`);
    // Another tab has its own session storage: asked again.
    const other = await openPage(browser);
    await other.page.goto(`${gw.url}/ui`);
    await other.page.locator('#token-form').waitFor();
    await other.context.close();
    // A token that stops working (revoked, or changed) is asked for again at the next poll.
    await page.evaluate(() => sessionStorage.setItem('cligate.token', 'revoked-token-0123456789abcdef'));
    await page.locator('#token-form').waitFor({ timeout: 5000 });
    assert.ok((await page.locator('#token-message').textContent()).includes('refused'));
    assert.equal(await page.locator('#runs').count(), 0, 'the list is gone');
    assertClean(seen);
    await context.close();
  });
});

describe('with one run slot', () => {
  let gw;
  before(async () => {
    gw = await startGateway({ MAX_CONCURRENT_RUNS: '1' });
  });
  after(async () => {
    await gw?.stop();
  });

  test('a queued run\'s page waits, then follows the run once it starts', async () => {
    const holder = await gw.api('/runs', { method: 'POST', body: { cli: 'sh', args: ['-c', 'echo holding; sleep 30'], session_id: 'slot-holder' } });
    assert.equal(holder.status, 202, holder.text);
    const queued = await gw.api('/runs', { method: 'POST', body: { cli: 'sh', args: ['-c', 'echo "queued run ran"'], session_id: 'waiting' } });
    assert.equal(queued.status, 202, queued.text);
    assert.equal(queued.json.state, 'queued');
    const { page, context, seen } = await openPage(browser);
    await page.goto(`${gw.url}/ui#/runs/${queued.json.run_id}`);
    await until('the badge says queued', async () => (await page.locator('#run-status').textContent()) === 'queued');
    assert.ok(await page.locator('#stop').isEnabled(), 'a queued run can be stopped');
    assert.equal((await gw.api(`/runs/${holder.json.run_id}/stop`, { method: 'POST' })).status, 200);
    await until('its output is shown', async () => (await output(page)).includes('queued run ran\n'), 15000);
    await until('the badge says exited', async () => (await page.locator('#run-status').textContent()) === 'exited', 10000);
    assert.equal(await page.locator('.problem:visible').count(), 0, 'no error shown');
    assertClean(seen);
    await context.close();
  });
});
