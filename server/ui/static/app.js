// nanovllm's web page. Plain JavaScript, no framework, no build step: read it top to bottom.
// This file starts the page (the model picker, model info, API key, tabs) and runs the
// playground; the engine
// view is engine.js, the attention view attention.js, the forward-pass view trace.js, and
// api.js what they all share.
//
// The playground is an ordinary client of POST /v1/completions: it streams server-sent
// events with fetch() and a ReadableStream, asks for `logprobs` and draws every token
// coloured by its probability. The page's own data comes from /ui/api/*. With --api-key
// both need `Authorization: Bearer <key>`; the key is asked for once and kept in this tab.

import { $, api, chosen, forModel, HTTPError, KEY_STORAGE, sseData } from "./api.js";
import { createAttentionView } from "./attention.js";
import { createEngineView } from "./engine.js";
import { createStepView } from "./stepview.js";
import { createTraceView } from "./trace.js";

// ---- start-up: the models, model info, the random-weights notice, the API key -----------

let started = false; // the first tab is chosen once

async function connect() {
  try {
    await listModels();
    showInfo(await (await api(forModel("/ui/api/info"))).json());
  } catch (err) {
    if (err instanceof HTTPError && err.status === 401) return askForKey(err.message);
    $("#model").textContent = `cannot reach the server: ${err.message}`;
  }
}

// The picker: every model GET /v1/models lists, with its state (loaded, loading, unloaded).
// Looking at a model does not load it; a playground request for it does.
async function listModels() {
  const models = (await (await api("/v1/models")).json()).data;
  chosen.model ??= models[0]?.id ?? null;
  const picker = $("#model-pick");
  picker.replaceChildren(...models.map((m) => new Option(`${m.id} (${m.state})`, m.id)));
  picker.value = chosen.model;
  picker.hidden = models.length < 2;
}

$("#model-pick").addEventListener("change", (event) => {
  chosen.model = event.target.value;
  engineView.reset();
  connect();
});

function showInfo(info) {
  $("#key-form").hidden = true;
  $("#forget-key").hidden = !sessionStorage.getItem(KEY_STORAGE);
  const loaded = info.state === "loaded";
  $("#model").textContent = loaded
    ? `${info.model} · context ${info.max_model_len} · v${info.version}`
    : `${info.model} · ${info.state}: a request loads it · v${info.version}`;
  $("#dummy-notice").hidden = !info.is_dummy;
  $("#dummy-architecture").textContent = info.architecture ?? "model";
  const form = $("#gen-form");
  form.logprobs.max = info.max_logprobs;
  form.n.max = info.max_n;
  if (loaded) {
    form.max_tokens.max = info.max_model_len;
    attentionView.setup(info);
    traceView.setup(info);
  }
  stepView.setup(info);
  if (!started) selectTab("playground");
  started = true;
}

function askForKey(message) {
  const hadKey = Boolean(sessionStorage.getItem(KEY_STORAGE));
  sessionStorage.removeItem(KEY_STORAGE);
  $("#model").textContent = "locked";
  $("#key-form").hidden = false;
  $("#key-error").textContent = hadKey ? message : "";
  $("#key").focus();
}

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_STORAGE, $("#key").value);
  $("#key").value = "";
  connect();
});

$("#forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  location.reload();
});

// ---- tabs ------------------------------------------------------------------------------

const tabs = [...document.querySelectorAll("[role=tab]")];
const engineView = createEngineView({ onUnauthorized: askForKey });
const attentionView = createAttentionView({ onUnauthorized: askForKey });
const traceView = createTraceView({ onUnauthorized: askForKey });
const stepView = createStepView({ onUnauthorized: askForKey });

function selectTab(id) {
  for (const tab of tabs) {
    const selected = tab.getAttribute("aria-controls") === id;
    tab.setAttribute("aria-selected", String(selected));
    document.getElementById(tab.getAttribute("aria-controls")).hidden = !selected;
  }
  // The engine view polls only while it is shown.
  if (id === "engine") engineView.start();
  else engineView.stop();
}

for (const tab of tabs) {
  tab.addEventListener("click", () => selectTab(tab.getAttribute("aria-controls")));
}

// ---- playground: the request ------------------------------------------------------------

// "a, b\,c, \n" -> ["a", "b,c", "\n"]: commas separate, a backslash escapes.
function parseStops(text) {
  const stops = [];
  let current = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length) {
      const next = text[++i];
      current += { n: "\n", t: "\t" }[next] ?? next;
    } else if (c === ",") {
      stops.push(current.trim());
      current = "";
    } else {
      current += c;
    }
  }
  stops.push(current.trim());
  return stops.filter((s) => s.length > 0);
}

// The request body: empty fields are left out so that the server's defaults apply. The form
// is `novalidate`: the server alone judges ranges and names the field it refuses.
function completionRequest(form) {
  const body = { prompt: $("#prompt").value, stream: true, stream_options: { include_usage: true } };
  if (chosen.model !== null) body.model = chosen.model;
  for (const name of ["temperature", "top_p", "top_k", "min_p", "max_tokens", "n", "seed", "logprobs"]) {
    const input = form.elements[name];
    if (input.value !== "") body[name] = input.valueAsNumber;
  }
  const stops = parseStops(form.stop.value);
  if (stops.length) body.stop = stops;
  return body;
}

// ---- playground: drawing the stream ------------------------------------------------------

const tokenDetails = new WeakMap(); // token <span> -> {token, logprob, top}

class Run {
  constructor(prompt) {
    this.prompt = prompt;
    this.started = performance.now();
    this.firstTokenAt = null;
    this.numTokens = 0;
    this.choices = new Map(); // choice index -> its <pre>
  }

  textOf(index) {
    if (!this.choices.has(index)) {
      const article = document.createElement("article");
      article.className = "choice";
      article.innerHTML = `<h2>choice ${index} <span class="finish"></span></h2><pre class="text"></pre>`;
      const prompt = document.createElement("span");
      prompt.className = "prompt";
      prompt.textContent = this.prompt;
      article.querySelector(".text").append(prompt);
      insertSorted($("#choices"), article, index);
      this.choices.set(index, article.querySelector(".text"));
    }
    return this.choices.get(index);
  }

  // One streamed choice: its new tokens (with logprobs) or, without logprobs, its new text.
  add(choice) {
    const text = this.textOf(choice.index);
    const lp = choice.logprobs;
    if (lp) {
      lp.tokens.forEach((token, i) => text.append(tokenSpan(token, lp.token_logprobs[i], lp.top_logprobs[i])));
      this.numTokens += lp.tokens.length;
    } else if (choice.text) {
      text.append(choice.text);
    }
    if ((lp?.tokens.length || choice.text) && this.firstTokenAt === null) {
      this.firstTokenAt = performance.now();
    }
    if (choice.finish_reason) {
      text.parentElement.querySelector(".finish").textContent = `· finished: ${choice.finish_reason}`;
    }
    this.showStats();
  }

  // Tokens are counted from the logprobs as they arrive; the final usage counts them too
  // (and is the only count when no logprobs were asked for).
  showStats(usage) {
    const stat = (name, value) => { $(`[data-stat=${name}]`).textContent = value; };
    const tokens = usage?.completion_tokens ?? this.numTokens;
    stat("tokens", String(tokens));
    if (this.firstTokenAt !== null) {
      stat("ttft", `${(this.firstTokenAt - this.started).toFixed(0)} ms`);
      stat("rate", ((tokens * 1000) / (performance.now() - this.started)).toFixed(1));
    }
    if (usage) {
      stat("usage", `${usage.prompt_tokens} + ${usage.completion_tokens} = ${usage.total_tokens}`);
    }
  }
}

function insertSorted(parent, child, index) {
  child.dataset.index = index;
  const after = [...parent.children].find((c) => Number(c.dataset.index) > index);
  parent.insertBefore(child, after ?? null);
}

function tokenSpan(token, logprob, top) {
  const span = document.createElement("span");
  span.className = "token";
  span.tabIndex = 0;
  // A newline token gets a visible mark, so that it can be hovered like any other.
  span.textContent = token.replaceAll("\n", "↵\n");
  if (logprob !== null) span.style.setProperty("--p", Math.exp(logprob).toFixed(3));
  tokenDetails.set(span, { token, logprob, top });
  return span;
}

// ---- playground: generate and stop ---------------------------------------------------------

let controller = null; // aborts the running request

function setStatus(message, isError = false) {
  $("#status").textContent = message;
  $("#status").classList.toggle("error", isError);
}

async function generate() {
  const form = $("#gen-form");
  const body = completionRequest(form);
  $("#choices").replaceChildren();
  for (const dd of document.querySelectorAll("[data-stat]")) dd.textContent = "–";
  controller = new AbortController();
  $("#generate").disabled = true;
  $("#stop").disabled = false;
  setStatus("generating…");
  const run = new Run(body.prompt);
  try {
    const response = await api("/v1/completions", {
      method: "POST", body: JSON.stringify(body), signal: controller.signal,
    });
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new HTTPError(chunk.error.code, chunk.error.message);
      $("[data-stat=model]").textContent = chunk.model;
      for (const choice of chunk.choices) run.add(choice);
      if (chunk.usage) run.showStats(chunk.usage);
    }
    setStatus("done");
    connect(); // the model is loaded now: the picker's state and the limits say so
  } catch (err) {
    if (err.name === "AbortError") setStatus("stopped");
    else if (err instanceof HTTPError && err.status === 401) askForKey(err.message);
    else setStatus(err.message, true);
  } finally {
    controller = null;
    $("#generate").disabled = false;
    $("#stop").disabled = true;
  }
}

$("#gen-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (!controller) generate();
});

$("#prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#gen-form").requestSubmit();
});

$("#stop").addEventListener("click", () => controller?.abort());

// ---- the tooltip: a token's probability and the alternatives the model weighed ------------

const tooltip = $("#tooltip");

const percent = (logprob) => `${(100 * Math.exp(logprob)).toFixed(1)}%`;

// The API's top_logprobs is keyed by token text, so two tokens that print alike (say, two
// halves of UTF-8 characters, both "\ufffd") share one entry: the chosen token is put back
// with its own logprob if its entry went to another. Most likely first.
function alternatives(token, logprob, top) {
  const entries = Object.entries(top ?? {});
  if (logprob !== null && top?.[token] !== logprob) entries.push([token, logprob]);
  return entries.sort((a, b) => b[1] - a[1]);
}

function showAlternatives(span) {
  const { token, logprob, top } = tokenDetails.get(span);
  const head = document.createElement("div");
  head.textContent = logprob === null
    ? `${JSON.stringify(token)}: no logprob`
    : `${JSON.stringify(token)}: p = ${percent(logprob)} (logprob ${logprob.toFixed(3)})`;
  const table = document.createElement("table");
  for (const [alternative, lp] of alternatives(token, logprob, top)) {
    const row = table.insertRow();
    row.classList.toggle("chosen", alternative === token && lp === logprob);
    row.insertCell().textContent = JSON.stringify(alternative);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(4 * Math.exp(lp)).toFixed(2)}rem`;
    row.insertCell().append(bar);
    Object.assign(row.insertCell(), { className: "num", textContent: percent(lp) });
    Object.assign(row.insertCell(), { className: "num", textContent: lp.toFixed(3) });
  }
  tooltip.replaceChildren(head, table);
  tooltip.hidden = false;
  const box = span.getBoundingClientRect();
  const left = Math.min(box.left, window.innerWidth - tooltip.offsetWidth - 8);
  const below = box.bottom + 6 + tooltip.offsetHeight < window.innerHeight;
  tooltip.style.left = `${Math.max(8, left)}px`;
  tooltip.style.top = `${below ? box.bottom + 6 : box.top - tooltip.offsetHeight - 6}px`;
}

for (const type of ["mouseover", "focusin"]) {
  $("#choices").addEventListener(type, (event) => {
    if (tokenDetails.has(event.target)) showAlternatives(event.target);
  });
}
for (const type of ["mouseout", "focusout"]) {
  $("#choices").addEventListener(type, () => { tooltip.hidden = true; });
}

connect();
