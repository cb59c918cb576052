// The engine view: the KV block pool, the running and waiting queues and the recent steps,
// redrawn from GET /ui/api/engine a few times a second while the view is shown.
//
// Each answer is a snapshot the engine thread took between two steps (nanovllm/snapshot.py):
// per block its owner (a sequence id, -1 when free), its reference count and whether the
// prefix cache can find it; per listed sequence its progress; the last steps' token counts.

import { $, api, forModel, HTTPError } from "./api.js";

const POLL_MS = 250;
const MAX_EVENTS = 12; // preemptions listed, newest first

// A request keeps its colour for as long as the page is open: a hue from its id.
function hueOf(requestId) {
  let h = 0;
  for (const c of requestId) h = (Math.imul(h, 31) + c.charCodeAt(0)) | 0;
  return ((h >>> 0) * 137.508) % 360;
}
const colourOf = (requestId) => `hsl(${hueOf(requestId).toFixed(0)} 65% 62%)`;

// An element with a class and inline styles, set through the DOM: the page's CSP refuses
// style attributes written as HTML.
function el(tag, className, style = {}, ...children) {
  const node = document.createElement(tag);
  node.className = className;
  Object.assign(node.style, style);
  node.append(...children);
  return node;
}
const percent = (part, whole) => `${(100 * part / whole).toFixed(2)}%`;

// "cmpl-1f2e…9a-0" is long; its tail tells requests apart. `#i` is the sample of n.
const shortId = (seq) => `…${seq.request_id.slice(-8)} #${seq.index}`;

// Held blocks: "beams" when beams of one search share it (forked), "shared" when sequences
// share it through the prefix cache, else "used".
function blockState(snapshot, i) {
  const { owner, ref_count: refs, cached, beams } = snapshot.blocks;
  if (owner[i] >= 0) return beams[i] ? "beams" : refs[i] > 1 ? "shared" : "used";
  return cached[i] ? "cached" : "free";
}

export function createEngineView({ onUnauthorized }) {
  let loop = 0; // the number of the polling loop that is current; 0: none
  let loops = 0; // (a loop that is no longer current stops at its next turn)
  let previous = null; // the last snapshot drawn: for the preemption log
  const events = [];

  // One request at a time, POLL_MS apart, for as long as `loop` is still this loop.
  async function poll(me) {
    while (loop === me) {
      try {
        const snapshot = await (await api(forModel("/ui/api/engine"))).json();
        if (loop !== me) return;
        draw(snapshot);
        $("#engine-status").textContent = "";
      } catch (err) {
        if (err instanceof HTTPError && err.status === 401) {
          loop = 0;
          onUnauthorized(err.message);
          return;
        }
        $("#engine-status").textContent = `no snapshot: ${err.message}`;
      }
      await new Promise((resolve) => { setTimeout(resolve, POLL_MS); });
    }
  }

  function draw(snapshot) {
    const seqs = new Map([...snapshot.running, ...snapshot.waiting].map((s) => [s.seq_id, s]));
    const counts = drawBlocks(snapshot, seqs);
    drawCounters(snapshot, counts);
    drawQueue($("#running"), snapshot.running, snapshot.num_running);
    drawQueue($("#waiting"), snapshot.waiting, snapshot.num_waiting);
    logPreemptions(snapshot);
    drawSteps(snapshot);
    previous = snapshot;
  }

  // ---- the block pool: one square per block, only the changed ones touched ----------------
  function drawBlocks(snapshot, seqs) {
    const grid = $("#blocks");
    const n = snapshot.blocks.owner.length;
    if (grid.children.length !== n) {
      grid.replaceChildren(...Array.from({ length: n }, () => el("span", "block")));
    }
    const counts = { free: 0, cached: 0, used: 0, shared: 0, beams: 0, copied: 0, loaded: 0 };
    for (let i = 0; i < n; i++) {
      const state = blockState(snapshot, i);
      const copied = snapshot.blocks.copied[i];
      const loaded = Boolean(snapshot.blocks.loaded && snapshot.blocks.loaded[i]);
      counts[state]++;
      counts.copied += copied;
      counts.loaded += loaded;
      const seq = seqs.get(snapshot.blocks.owner[i]);
      const colour = seq ? colourOf(seq.request_id) : "";
      const title = `block ${i}: ${state}` + (seq ? ` · ${shortId(seq)}` : "")
        + (snapshot.blocks.ref_count[i] > 1 ? ` · held by ${snapshot.blocks.ref_count[i]}` : "")
        + (snapshot.blocks.cached[i] ? " · in the prefix cache" : "")
        + (copied ? " · copied on write (a beam wrote into a block it shared)" : "")
        + (loaded ? " · read from the prefix cache directory" : "");
      const cell = grid.children[i];
      if (cell.dataset.state !== state || cell.title !== title) {
        cell.dataset.state = state;
        cell.dataset.copied = String(copied);
        cell.dataset.loaded = String(loaded);
        cell.style.background = colour;
        cell.title = title;
      }
    }
    const size = snapshot.blocks.block_size;
    $("#pool-caption").textContent = `${n} blocks of ${size} tokens`;
    return counts;
  }

  function drawCounters(snapshot, counts) {
    const stat = (name, value) => { $(`[data-engine=${name}]`).textContent = value; };
    stat("step", String(snapshot.num_steps));
    stat("running", `${snapshot.num_running} / ${snapshot.max_num_seqs}`);
    stat("waiting", String(snapshot.num_waiting));
    stat("used", `${counts.used + counts.shared + counts.beams} / ${snapshot.blocks.owner.length}`);
    stat("shared", String(counts.shared));
    stat("beams", `${counts.beams} · ${counts.copied} copied`);
    stat("cached", counts.loaded ? `${counts.cached} · ${counts.loaded} read from disk`
      : String(counts.cached));
    stat("preemptions", String(snapshot.num_preemptions_total));
  }

  // ---- the queues: each sequence's prompt (cached, computed) and output as one bar ---------
  function drawQueue(list, seqs, total) {
    const items = seqs.map(seqItem);
    if (total > seqs.length) items.push(el("li", "more", {}, `… and ${total - seqs.length} more`));
    list.replaceChildren(...items);
    list.closest("section").querySelector(".count").textContent = `(${total})`;
  }

  function seqItem(seq) {
    if (seq.kind !== "generate") return pooledItem(seq);
    const prompt = seq.num_prompt_tokens;
    const prefilled = Math.min(seq.num_computed_tokens, prompt);
    const cached = Math.min(seq.num_cached_tokens, prefilled);
    const whole = prompt + Math.max(seq.max_tokens ?? 0, seq.num_output_tokens, 1);
    // Generated tokens whose K/V is not in the cache: the newest (computed in the next step),
    // or all of them after a preemption, when the sequence recomputes prompt and output alike.
    const outComputed = Math.max(0, Math.min(seq.num_computed_tokens - prompt, seq.num_output_tokens));
    const part = (cls, n) => el("span", cls, { width: percent(n, whole) });
    const detail = `prompt ${prefilled}/${prompt}` + (cached ? ` (${cached} cached)` : "")
      + ` · out ${seq.num_output_tokens}${seq.max_tokens ? `/${seq.max_tokens}` : ""}`
      + ` · ${seq.num_blocks} blocks`;
    const item = el("li", "seq", {},
      el("span", "swatch", { background: colourOf(seq.request_id) }),
      el("span", "rid", {}, shortId(seq)),
      el("span", "progress", {}, part("cached", cached), part("prefilled", prefilled - cached),
        part("pending", prompt - prefilled), part("generated", outComputed),
        part("recompute", seq.num_output_tokens - outComputed)),
      el("span", "detail", {}, detail));
    item.dataset.seq = seq.seq_id;
    if (seq.num_preemptions) item.append(el("span", "badge", {}, `preempted ×${seq.num_preemptions}`));
    if (seq.adapter_id) item.append(el("span", "badge", {}, `LoRA ${seq.adapter_id}`));
    return item;
  }

  // A text to embed or score: computed whole in one step, keeping no KV blocks, then pooled.
  function pooledItem(seq) {
    const item = el("li", "seq pooled-seq", {},
      el("span", "swatch", { background: colourOf(seq.request_id) }),
      el("span", "rid", {}, shortId(seq)),
      el("span", "progress", {}, el("span", "pooled", {
        width: percent(Math.min(seq.num_computed_tokens, seq.num_prompt_tokens),
          seq.num_prompt_tokens) }),
      el("span", "pending", { width: percent(seq.num_prompt_tokens - seq.num_computed_tokens,
        seq.num_prompt_tokens) })),
      el("span", "detail", {}, `${seq.kind} · ${seq.num_prompt_tokens} tokens, pooled whole `
        + "in one step · no KV kept"));
    item.dataset.seq = seq.seq_id;
    item.dataset.kind = seq.kind;
    return item;
  }

  // A sequence whose count of preemptions grew since the last snapshot (or that the first
  // snapshot shows preempted) was preempted since.
  function logPreemptions(snapshot) {
    const before = new Map([...previous?.running ?? [], ...previous?.waiting ?? []]
      .map((s) => [s.seq_id, s.num_preemptions]));
    for (const seq of [...snapshot.running, ...snapshot.waiting]) {
      if (seq.num_preemptions > (before.get(seq.seq_id) ?? 0)) {
        events.unshift(`step ${snapshot.num_steps}: ${shortId(seq)} preempted `
          + `(${seq.num_preemptions}×), its blocks freed; it will recompute`);
      }
    }
    events.length = Math.min(events.length, MAX_EVENTS);
    const list = $("#preemptions");
    list.replaceChildren(...events.map((text) => el("li", "event", {}, text)));
    list.closest("section").querySelector(".count").textContent = `(${snapshot.num_preemptions_total})`;
  }

  // ---- the recent steps: tokens per step (prefill, decode, speculative proposals accepted and
  // rejected) and step time -------------------------------------------------------------------
  function drawSteps(snapshot) {
    const steps = snapshot.steps;
    const total = (s) => s.num_prefill_tokens + s.num_decode_tokens + s.num_proposed;
    const maxTokens = Math.max(1, ...steps.map(total));
    const maxSeconds = Math.max(1e-6, ...steps.map((s) => s.seconds));
    const first = snapshot.num_steps - steps.length + 1;
    const bars = steps.map((s, i) => {
      const rejected = s.num_proposed - s.num_accepted;
      const bar = el("span", "step" + (s.num_preemptions ? " preempted" : "")
        + (s.num_pooled_tokens ? " pooling" : ""), {},
        el("span", "tokens", { height: percent(total(s), maxTokens) },
          el("span", "rejected", { flexGrow: rejected }),
          el("span", "accepted", { flexGrow: s.num_accepted }),
          el("span", "prefill", { flexGrow: s.num_prefill_tokens - s.num_pooled_tokens }),
          el("span", "pooled", { flexGrow: s.num_pooled_tokens }),
          el("span", "decode", { flexGrow: s.num_decode_tokens })),
        el("span", "time", { height: percent(s.seconds, maxSeconds) }));
      bar.title = `step ${first + i}: `
        + (s.num_pooled_tokens ? `${s.num_pooled_tokens} pooled (embed, score) + ` : "")
        + `${s.num_prefill_tokens - s.num_pooled_tokens} prefill + ${s.num_decode_tokens} `
        + `decode tokens, ${s.num_seqs} sequences, ${(1000 * s.seconds).toFixed(1)} ms`
        + (s.num_proposed ? `; speculation: ${s.num_proposed} proposed, ${s.num_accepted} `
          + `accepted, ${rejected} rejected` : "")
        + (s.num_preemptions ? `, ${s.num_preemptions} preempted` : "");
      return bar;
    });
    $("#steps").replaceChildren(...bars);
    const proposed = steps.reduce((n, s) => n + s.num_proposed, 0);
    const accepted = steps.reduce((n, s) => n + s.num_accepted, 0);
    $("#steps-caption").textContent = steps.length
      ? `steps ${first}–${snapshot.num_steps} · tallest: ${maxTokens} tokens, `
        + `${(1000 * maxSeconds).toFixed(1)} ms`
        + (proposed ? ` · speculation: ${proposed} proposed, ${accepted} accepted, `
          + `${proposed - accepted} rejected` : "")
      : "no step yet";
  }

  return {
    start() {
      if (loop === 0) {
        loop = ++loops;
        poll(loop);
      }
    },
    stop() {
      loop = 0;
    },
    // Another model chosen: nothing drawn so far is its engine's.
    reset() {
      previous = null;
      events.length = 0;
      for (const id of ["#preemptions", "#blocks", "#running", "#waiting", "#steps"]) {
        $(id).replaceChildren();
      }
      for (const dd of document.querySelectorAll("[data-engine]")) dd.textContent = "–";
      if (loop !== 0) { // a poll in flight asked the other model: its answer is dropped
        loop = ++loops;
        poll(loop);
      }
    },
  };
}
