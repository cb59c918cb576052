// The forward-pass view: one prompt through the model, layer by layer (POST /ui/api/trace,
// computed by the reference path: nanovllm/model/architectures/trace.py).
//
// The "logit lens" table has one row per stage of the pass: the embeddings alone, then the
// residual stream after each layer, read out through the model's final layer norm and LM
// head as if the model stopped there. Column i is the prediction of the token that follows
// token i; the last row is the model's real output. A cell shows the top token, shaded by its
// probability, outlined when it is already the model's final answer, with a bar for the size
// (L2 norm) of the residual stream. Below, every head's attention in the chosen layer.

import { $, api, forModel, HTTPError } from "./api.js";
import { groupName, headGroups, heatmap, isGrouped, label } from "./attention.js";

function el(tag, className, text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  return node;
}

const stageName = (s) => (s === 0 ? "embeddings" : `after layer ${s - 1}`);
const pct = (p) => `${(100 * p).toFixed(1)}%`;

function lensTable(trace) {
  const table = el("table", "lens");
  const head = table.createTHead().insertRow();
  head.append(el("th", "", "stage"));
  for (const token of trace.tokens) head.append(el("th", "tok", label(token)));
  const body = table.createTBody();
  const maxNorm = Math.max(...trace.residual_norm.flat());
  trace.residual_norm.forEach((norms, s) => {
    const row = body.insertRow();
    row.dataset.stage = s;
    const name = el("th", "stage", stageName(s));
    if (s > 0) name.dataset.layer = s - 1;
    row.append(name);
    norms.forEach((norm, i) => {
      const top = trace.lens_tokens[s][i];
      const probs = trace.lens_probs[s][i];
      const final = trace.lens_token_ids.at(-1)[i][0];
      const cell = row.insertCell();
      cell.className = "lens-cell" + (trace.lens_token_ids[s][i][0] === final ? " final" : "");
      cell.style.setProperty("--p", probs[0].toFixed(3));
      cell.dataset.token = top[0];
      cell.dataset.prob = String(probs[0]);
      const bar = el("span", "norm");
      bar.style.width = `${(100 * norm / maxNorm).toFixed(1)}%`;
      cell.append(el("span", "top", label(top[0])), el("span", "p", pct(probs[0])), bar);
      cell.title = `${stageName(s)}, after ${JSON.stringify(trace.tokens[i])}\n`
        + top.map((t, k) => `${JSON.stringify(t)} ${pct(probs[k])}`).join("\n")
        + `\nfinal answer's probability here: ${pct(trace.final_token_prob[s][i])}`
        + `\n‖x‖ = ${norm.toFixed(2)}`;
    });
  });
  return table;
}

function headMap(trace, layer, h) {
  const figure = el("figure", "head");
  figure.dataset.head = h;
  figure.append(heatmap({ tokens: trace.tokens, weights: trace.attention[layer][h], layer, head: h },
    { width: 180, labels: false }), el("figcaption", "", `head ${h}`));
  return figure;
}

// Every query head of a layer; in a grouped-query model, boxed by the key/value head they share.
function headMaps(trace, layer) {
  const heads = trace.attention[layer].map((_, h) => headMap(trace, layer, h));
  if (!isGrouped(trace)) return heads;
  return headGroups(trace.n_head, trace.num_kv_heads).map((group, g) => {
    const box = el("section", "kv-group");
    box.dataset.kvHead = g;
    box.setAttribute("aria-label", groupName(group, g));
    box.append(el("h3", "", groupName(group, g)), ...group.map((h) => heads[h]));
    return box;
  });
}

export function createTraceView({ onUnauthorized }) {
  const form = $("#trace-form");
  let asked = 0; // only the latest answer is drawn
  let trace = null;

  function showLayer(layer) {
    $("#trace-layer").value = String(layer);
    $("#trace-heads").replaceChildren(...headMaps(trace, layer));
    $("#trace-heads").dataset.layer = layer;
    for (const th of document.querySelectorAll("#lens-table th.stage")) {
      th.classList.toggle("chosen", th.dataset.layer === String(layer));
    }
  }

  async function show() {
    const me = ++asked;
    const status = $("#trace-status");
    status.textContent = "computing…";
    status.classList.remove("error");
    try {
      const answer = await (await api(forModel("/ui/api/trace"), {
        method: "POST", body: JSON.stringify({ prompt: $("#trace-prompt").value }) })).json();
      if (me !== asked) return;
      trace = answer;
      $("#lens-table").replaceChildren(lensTable(trace));
      $("#trace-layer").replaceChildren(...trace.attention.map(
        (_, l) => new Option(`layer ${l}`, String(l))));
      showLayer(0);
      status.textContent = `${trace.tokens.length} tokens through ${trace.n_layer} layers`;
    } catch (err) {
      if (me !== asked) return;
      if (err instanceof HTTPError && err.status === 401) return onUnauthorized(err.message);
      status.textContent = err.message;
      status.classList.add("error");
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    show();
  });
  $("#trace-layer").addEventListener("change", () => { if (trace) showLayer(Number($("#trace-layer").value)); });
  // A layer's row name shows that layer's heads.
  $("#lens-table").addEventListener("click", (event) => {
    const th = event.target.closest("th.stage[data-layer]");
    if (th && trace) showLayer(Number(th.dataset.layer));
  });

  return {
    setup(info) {
      $("#trace-max").textContent = String(info.max_attention_tokens);
    },
  };
}
