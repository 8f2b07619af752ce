// The manager's HTTP API, as the pages use it: the same routes as the CLI, with the
// token from the login (kept in this browser tab's sessionStorage, as the issue asks:
// closing the tab forgets it). Errors come back as ApiError with the manager's Message.

const TOKEN_KEY = "cube.token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const found = { ...extra };
  const secret = token();
  if (secret) found.Authorization = `Bearer ${secret}`;
  return found;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.Message) message = body.Message;
  } catch {
    // not JSON: the status line says enough
  }
  return new ApiError(response.status, message);
}

// One request; the answer's JSON (null for a 204), and its X-Cube-Index if any.
export async function call(method, path, body, { signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `the manager does not answer (${error.message})`);
  }
  if (!response.ok) throw await failure(response);
  const index = Number(response.headers.get("X-Cube-Index") || 0);
  const data = response.status === 204 ? null : await response.json();
  return { data, index };
}

export const get = async (path, options) => (await call("GET", path, undefined, options)).data;
export const post = async (path, body) => (await call("POST", path, body)).data;
export const del = async (path) => (await call("DELETE", path)).data;

// Read a newline-delimited JSON answer (GET /events, GET /tasks/{id}/logs) as it
// arrives, calling onItem for each non-empty object; empty lines and `{}` are the
// server's heartbeats. Resolves when the answer ends; abort with `signal`.
export async function stream(path, onItem, { signal } = {}) {
  let response;
  try {
    response = await fetch(path, { headers: headers(), signal });
  } catch (error) {
    if (error.name === "AbortError") return;
    throw new ApiError(0, `the manager does not answer (${error.message})`);
  }
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, cut).trim();
        buffered = buffered.slice(cut + 1);
        if (!line) continue;
        const item = JSON.parse(line);
        if (Object.keys(item).length) onItem(item);
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") throw error;
  }
}
