// What the browser tests stand on: the real gateway binary started with the fixture CLIs, a TCP
// relay in front of it whose connections a test can cut (a dropped network), Debian's chromium
// driven by playwright-core, and small helpers to call the API and wait.

import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const SCREENSHOTS = process.env.UI_SCREENSHOTS_DIR || path.join(ROOT, 'target/ui-screenshots');
export const CLIS = 'codex,sh,args,echo-stdin,exit-code,sleep';

/** The gateway binary, started with exactly `vars` over the test defaults; `stop()` ends it. */
export async function startGateway(vars = {}) {
  const bin = process.env.CLIGATE_BIN || path.join(ROOT, 'target/debug/cligate');
  mkdirSync(path.join(ROOT, 'target/ui-tests'), { recursive: true });
  const data = mkdtempSync(path.join(ROOT, 'target/ui-tests/data-'));
  const env = {
    PATH: `${path.join(ROOT, 'tests/ui/bin')}:${path.join(ROOT, 'tests/fixtures/bin')}:${process.env.PATH}`,
    HOME: data,
    CLI_LIST: CLIS,
    MODEL_LIST: 'auto,gpt-test',
    LISTEN_ADDR: '127.0.0.1:0',
    LOG_FORMAT: 'json',
    DATA_DIR: data,
    DATA_DIR_MIN_FREE_BYTES: '0',
    KILL_GRACE_SECONDS: '1',
    SHUTDOWN_GRACE_SECONDS: '1',
    ...vars,
  };
  const child = spawn(bin, [], { env, stdio: ['ignore', 'ignore', 'pipe'] });
  const log = [];
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${bin} did not listen within 20 s:\n${log.join('\n')}`)), 20000);
    child.on('error', (e) => reject(new Error(`${bin} does not start (${e.message}); build it with cargo build`)));
    child.on('exit', (code) => reject(new Error(`${bin} exited with ${code}:\n${log.join('\n')}`)));
    createInterface({ input: child.stderr }).on('line', (line) => {
      log.push(line);
      if (log.length > 200) log.shift();
      try {
        const entry = JSON.parse(line);
        if (line.includes('"listening"') && entry.addr) {
          clearTimeout(timer);
          resolve(entry.addr);
        }
      } catch {
        // not a JSON line
      }
    });
  });
  const url = `http://${addr}`;
  return {
    url,
    port: Number(addr.split(':').pop()),
    log,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(data, { recursive: true, force: true });
    },
    /** A JSON API call; `token` sets the bearer header. */
    async api(route, { method = 'GET', body, token } = {}) {
      const headers = {};
      if (token) headers.authorization = `Bearer ${token}`;
      if (body !== undefined) headers['content-type'] = 'application/json';
      const r = await fetch(url + route, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      const text = await r.text();
      let json = null;
      try {
        json = JSON.parse(text);
      } catch {
        // not JSON
      }
      return { status: r.status, json, text };
    },
  };
}

/** A TCP relay to `port` on loopback; `cut()` closes every open connection at once. */
export async function startRelay(port) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    /** Closes every connection (with a reset), as a network drop would. */
    cut() {
      const n = sockets.size;
      for (const s of sockets) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy();
      return n;
    },
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(resolve);
    }),
  };
}

/** Debian's chromium, headless; fails (never skips) when it cannot start. */
export async function launchBrowser() {
  try {
    return await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
        '--disable-quic',
      ],
    });
  } catch (e) {
    throw new Error(`chromium does not start from ${CHROMIUM} (install Debian's chromium; .ci/run does): ${e.message}`);
  }
}

/**
 * A fresh page (its own context: its own sessionStorage) that records what a test must check:
 * every request URL, console errors (a CSP violation is one), dialogs (alert() from output
 * would be one), and page errors.
 */
export async function openPage(browser, { width = 1280, height = 800 } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, acceptDownloads: true });
  const page = await context.newPage();
  const seen = { requests: [], consoleErrors: [], dialogs: [], pageErrors: [] };
  page.on('request', (r) => seen.requests.push(r.url()));
  page.on('console', (m) => {
    if (m.type() === 'error') seen.consoleErrors.push(m.text());
  });
  page.on('dialog', async (d) => {
    seen.dialogs.push(d.message());
    await d.dismiss();
  });
  page.on('pageerror', (e) => seen.pageErrors.push(String(e)));
  return { page, context, seen };
}

/** Polls `fn` until it returns a truthy value; fails after `ms`. */
export async function until(what, fn, ms = 10000) {
  const start = Date.now();
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() - start > ms) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Whether a process exists and is not a zombie. */
export function alive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Tabs forward from the start of the page until the element with `id` has the focus. */
export async function tabTo(page, id, max = 40) {
  await page.evaluate(() => {
    document.activeElement?.blur();
    window.getSelection()?.removeAllRanges();
  });
  for (let i = 0; i < max; i++) {
    await page.keyboard.press('Tab');
    if ((await page.evaluate(() => document.activeElement?.id)) === id) return i + 1;
  }
  throw new Error(`#${id} not reached with ${max} presses of Tab`);
}
