// The /v1 API as the page uses it: the key, JSON calls, and a send's server-sent events.

const KEY = "chatd.key";

export class ApiError extends Error {
  constructor(status, type, message, retryAfter) {
    super(message);
    this.status = status;
    this.type = type;
    this.retryAfter = retryAfter; // seconds, or null
  }
}

// Seconds to wait, from Retry-After, else the rate limit's reset; null when neither says.
function waitOf(response) {
  for (const name of ["retry-after", "ratelimit-reset"]) {
    const value = Number.parseInt(response.headers.get(name) ?? "", 10);
    if (Number.isFinite(value) && value >= 0) return value;
  }
  return null;
}

async function errorOf(response) {
  let type = "http_" + response.status;
  let message = `the server answered ${response.status}`;
  try {
    const body = await response.json();
    const error = body.error ?? body;
    if (typeof error.type === "string") type = error.type;
    if (typeof error.message === "string") message = error.message;
    else if (typeof error.detail === "string") message = error.detail;
  } catch {
    // Not JSON: the status says enough.
  }
  return new ApiError(response.status, type, message, waitOf(response));
}

export class Api {
  constructor() {
    this.key = sessionStorage.getItem(KEY);
  }

  signIn(key) {
    this.key = key;
    sessionStorage.setItem(KEY, key);
  }

  signOut() {
    this.key = null;
    sessionStorage.removeItem(KEY);
  }

  headers(extra = {}) {
    const headers = { Accept: "application/json", ...extra };
    if (this.key) headers.Authorization = "Bearer " + this.key;
    return headers;
  }

  async call(method, path, body, signal) {
    const init = { method, headers: this.headers(), signal, credentials: "omit" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "network", "the server cannot be reached", null);
    }
    if (!response.ok) throw await errorOf(response);
    if (response.status === 204) return null;
    return response.json();
  }

  sessions(cursor) {
    const query = new URLSearchParams({ limit: "30", order: "recent" });
    if (cursor) query.set("cursor", cursor);
    return this.call("GET", "../v1/sessions?" + query);
  }

  session(id) {
    return this.call("GET", `../v1/sessions/${encodeURIComponent(id)}`);
  }

  createSession(settings) {
    return this.call("POST", "../v1/sessions", settings);
  }

  updateSession(id, settings) {
    return this.call("PATCH", `../v1/sessions/${encodeURIComponent(id)}`, settings);
  }

  deleteSession(id) {
    return this.call("DELETE", `../v1/sessions/${encodeURIComponent(id)}`);
  }

  resetSession(id) {
    return this.call("POST", `../v1/sessions/${encodeURIComponent(id)}/reset`);
  }

  stop(id) {
    return this.call("POST", `../v1/sessions/${encodeURIComponent(id)}/stop`);
  }

  // The session's turns after seq `after` (all of them by default), oldest first.
  async turns(id, after = 0) {
    const turns = [];
    let cursor = after ? String(after) : null;
    // A long conversation comes a page at a time; a bound keeps a huge one from hanging the tab.
    for (let page = 0; page < 50; page++) {
      const query = new URLSearchParams({ limit: "200" });
      if (cursor) query.set("cursor", cursor);
      const body = await this.call("GET", `../v1/sessions/${encodeURIComponent(id)}/messages?${query}`);
      turns.push(...body.data);
      cursor = body.next_cursor;
      if (!cursor) break;
    }
    return turns;
  }

  async models() {
    const body = await this.call("GET", "../v1/models");
    return body.data.map((m) => m.id);
  }

  // POST a send, regenerate or continue with stream on; call onEvent(name, data) per event.
  async stream(id, action, body, onEvent, signal) {
    const path = `../v1/sessions/${encodeURIComponent(id)}/${action}`;
    let response;
    try {
      response = await fetch(path, {
        method: "POST",
        headers: this.headers({ Accept: "text/event-stream", "Content-Type": "application/json" }),
        body: JSON.stringify({ ...body, stream: true }),
        signal,
        credentials: "omit",
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "network", "the server cannot be reached", null);
    }
    if (!response.ok) throw await errorOf(response);
    await readEvents(response.body, onEvent);
  }
}

// Parse a text/event-stream body: `event:` and `data:` lines, a blank line ends an event.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let name = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      if (line === "") {
        if (data.length) onEvent(name, JSON.parse(data.join("\n")));
        name = "message";
        data = [];
      } else if (line.startsWith("event:")) {
        name = line.slice(6).trim();
      } else if (line.startsWith("data:")) {
        data.push(line.slice(5).replace(/^ /, ""));
      }
      // `id:` and `:` keep-alive lines need nothing here.
    }
  }
}
