// The attention view: for a short prompt, how much each token attends to each earlier token
// in one layer and head, as a T x T heatmap (SVG, one <rect> per cell). POST
// /ui/api/attention computes it with the model's reference path; choosing another layer or
// head asks again. In a grouped-query model (fewer key/value heads than query heads)
// several query heads read one key/value head: the head menu lists them under it.

import { $, api, forModel, HTTPError } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";
const LABEL_PX = 110; // room for the token labels left of and above the cells

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

// A token as a label: spaces and newlines made visible, long ones cut.
export function label(token) {
  const shown = token.replaceAll(" ", "·").replaceAll("\n", "↵").replaceAll("\t", "→");
  return shown.length > 14 ? `${shown.slice(0, 13)}…` : shown;
}

// One head's T x T weights as an SVG. The trace view draws every head of a layer, smaller
// and without the token labels.
export function heatmap(map, { width = 640, labels = true } = {}) {
  const t = map.tokens.length;
  const cell = Math.max(labels ? 8 : 3, Math.min(28, Math.floor(width / t)));
  const pad = labels ? LABEL_PX : 0;
  const size = pad + t * cell;
  const root = svg("svg", { width: size, height: size, viewBox: `0 0 ${size} ${size}`,
    role: "img", "aria-label": `attention of layer ${map.layer}, head ${map.head}` });
  const font = Math.min(12, cell - 2);
  if (labels) {
    map.tokens.forEach((token, i) => {
      const middle = pad + (i + 0.5) * cell;
      root.append(svg("text", { class: "row-label", x: pad - 4, y: middle, "font-size": font }, label(token)));
      root.append(svg("text", { class: "col-label", "font-size": font,
        transform: `translate(${middle} ${pad - 4}) rotate(-60)` }, label(token)));
    });
  }
  for (let i = 0; i < t; i++) {
    for (let j = 0; j < t; j++) {
      const w = j <= i ? map.weights[i][j] : null; // causal: nothing above the diagonal
      const rect = svg("rect", { x: pad + j * cell, y: pad + i * cell,
        width: Math.max(1, cell - 1), height: Math.max(1, cell - 1),
        class: w === null ? "cell future" : "cell" });
      if (w !== null) {
        rect.setAttribute("fill-opacity", (0.04 + 0.96 * w).toFixed(3));
        rect.dataset.weight = String(w);
        rect.append(svg("title", {}, `${JSON.stringify(map.tokens[i])} → `
          + `${JSON.stringify(map.tokens[j])}: ${w.toFixed(4)}`));
      }
      root.append(rect);
    }
  }
  return root;
}

// The query heads that share each key/value head, in order: [[0, 1, 2], [3, 4, 5], ...] for
// 6 query heads reading 2; one head per group where every head has its own (GPT-2).
export function headGroups(nHead, nKvHead) {
  const size = nHead / nKvHead;
  return Array.from({ length: nKvHead }, (_, g) => Array.from({ length: size }, (_, i) => g * size + i));
}

export const isGrouped = (info) => info.num_kv_heads < info.n_head;

// "KV head 1 (query heads 3–5)": what a group of query heads shares.
export function groupName(group, kvHead) {
  return `KV head ${kvHead} (query heads ${group[0]}–${group.at(-1)})`;
}

export function createAttentionView({ onUnauthorized }) {
  const form = $("#attn-form");
  let asked = 0; // only the latest answer is drawn

  const option = (i) => new Option(String(i), String(i));

  function fillSelect(select, count) {
    select.replaceChildren(...Array.from({ length: count }, (_, i) => option(i)));
  }

  // Query heads under the key/value head they read, when they share one.
  function fillHeads(select, info) {
    if (!isGrouped(info)) return fillSelect(select, info.n_head);
    select.replaceChildren(...headGroups(info.n_head, info.num_kv_heads).map((group, g) => {
      const optgroup = document.createElement("optgroup");
      optgroup.label = groupName(group, g);
      optgroup.append(...group.map(option));
      return optgroup;
    }));
  }

  function describe(map) {
    const text = `${map.tokens.length} tokens · layer ${map.layer} of ${map.n_layer}, `
      + `head ${map.head} of ${map.n_head}`;
    if (map.num_kv_heads === map.n_head) return text;
    const group = headGroups(map.n_head, map.num_kv_heads)[map.kv_head];
    return `${text} · reads key/value head ${map.kv_head} of ${map.num_kv_heads}, `
      + `shared by query heads ${group.join(", ")}`;
  }

  async function show() {
    const me = ++asked;
    const status = $("#attn-status");
    status.textContent = "computing…";
    status.classList.remove("error");
    const body = { prompt: $("#attn-prompt").value, layer: Number(form.layer.value),
      head: Number(form.head.value) };
    try {
      const map = await (await api(forModel("/ui/api/attention"), {
        method: "POST", body: JSON.stringify(body) })).json();
      if (me !== asked) return;
      $("#heatmap").replaceChildren(heatmap(map));
      $("#heatmap").dataset.layer = map.layer;
      $("#heatmap").dataset.head = map.head;
      $("#heatmap").dataset.kvHead = map.kv_head;
      status.textContent = describe(map);
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
  // Another layer or head redraws at once, for the same prompt.
  for (const select of [form.layer, form.head]) {
    select.addEventListener("change", () => { if ($("#heatmap").firstChild) show(); });
  }

  return {
    setup(info) {
      fillSelect(form.layer, info.n_layer);
      fillHeads(form.head, info);
      $("#attn-max").textContent = String(info.max_attention_tokens);
    },
  };
}
