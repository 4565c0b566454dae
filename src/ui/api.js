// The JSON API, called with the tab's bearer token. The token lives in sessionStorage (this tab
// only) and goes in the Authorization header, never in a URL. A 401 anywhere asks for it again.

const KEY = 'cligate.token';

export function token() {
  return sessionStorage.getItem(KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

/** Thrown on 401; the app shows the token form. */
export class Unauthorized extends Error {
  constructor() {
    super('a valid bearer token is required');
  }
}

/** A refused request: its status and the gateway's error body. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body?.detail || body?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export function headers(extra = {}) {
  const h = { ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

/** Tells the app that the token is missing or refused. */
export function unauthorized() {
  window.dispatchEvent(new CustomEvent('cligate:unauthorized'));
  return new Unauthorized();
}

/** fetch with the token; refusals become ApiError / Unauthorized. */
export async function request(path, { method = 'GET', body, signal } = {}) {
  const init = { method, signal, cache: 'no-store', headers: headers() };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw unauthorized();
  if (!response.ok) {
    const text = await response.text();
    let parsed = null;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = { detail: text.slice(0, 200) };
    }
    throw new ApiError(response.status, parsed);
  }
  return response;
}

export async function getJson(path, options) {
  return (await request(path, options)).json();
}

export function postJson(path, body, options = {}) {
  return request(path, { ...options, method: 'POST', body }).then((r) => r.json());
}

/** `/runs/{id}` and below, with the id encoded. */
export function runPath(id, rest = '') {
  return `/runs/${encodeURIComponent(id)}${rest}`;
}
