// What every view of the page shares: the DOM shorthand and talking to the server.
// With --api-key every data request needs `Authorization: Bearer <key>`; app.js asks for the
// key once and keeps it in this tab (sessionStorage).

export const $ = (selector) => document.querySelector(selector);
export const KEY_STORAGE = "nanovllm-api-key";

export function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The model the page shows (the picker's choice; null: the server's first). Every /ui/api/
// request names it with ?model=, and the playground's requests with "model".
export const chosen = { model: null };

export function forModel(path) {
  return chosen.model === null ? path : `${path}?model=${encodeURIComponent(chosen.model)}`;
}

export class HTTPError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The server answers every failure as {"error": {"message", ...}}; anything else (a proxy's
// HTML page, say) is reported by its status line.
export async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    message = (await response.json()).error.message ?? message;
  } catch { /* not our JSON: keep the status line */ }
  return new HTTPError(response.status, message);
}

export async function api(path, options = {}) {
  const response = await fetch(path, {
    ...options,
    headers: { "Content-Type": "application/json", ...authHeaders(), ...options.headers },
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

// Yields the `data:` payload of each server-sent event as it arrives.
export async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (line.startsWith("data: ")) yield line.slice("data: ".length);
      }
    }
  }
}
