// The step view, inside the engine view: Pause / Step / Resume, and the record of the last
// single step (nanovllm/step_record.py) — what each sequence did and why, the blocks it
// changed (marked on the block pool above), the runner's flat arrays, what was sampled.
// Shown only when the server runs with --enable-step-mode. A pause is a lease: while the page
// is paused and open it renews the lease, so a closed tab cannot leave the engine paused.

import { $, api, forModel, HTTPError } from "./api.js";

const RENEW_MS = 20_000; // the lease is 60 s: renewed well before it ends
const MAX_COLUMNS = 256; // flat-array columns drawn (the rest summarised)

function el(tag, className, text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  return node;
}

const tokenText = (t) => JSON.stringify(t).slice(1, -1);
const blocks = (ids) => (ids.length ? `[${ids.join(" ")}]` : "–");

function seqTable(record) {
  const table = el("table", "record-seqs");
  const head = table.createTHead().insertRow();
  for (const name of ["sequence", "did", "positions", "blocks before → after", "why"]) {
    head.append(el("th", "", name));
  }
  const body = table.createTBody();
  for (const s of record.seqs) {
    const row = body.insertRow();
    row.dataset.action = s.action;
    row.dataset.seq = s.seq_id;
    row.insertCell().textContent = `…${s.request_id.slice(-8)} #${s.index}`;
    row.insertCell().append(el("span", `action ${s.action}`, s.action + (s.finished ? " · done" : "")));
    row.insertCell().textContent = s.num_tokens ? `${s.start}..${s.start + s.num_tokens - 1}` : "–";
    row.insertCell().textContent = `${blocks(s.blocks_before)} → ${blocks(s.blocks_after)}`;
    row.insertCell().textContent = s.why;
  }
  return table;
}

// The runner's flat batch: one column per token computed, the rows as the tour names them.
function inputsTable(inputs) {
  const table = el("table", "flat");
  const n = Math.min(inputs.token_ids.length, MAX_COLUMNS);
  const sample = new Set(inputs.sample_rows);
  const rows = [["token_ids", inputs.token_ids], ["positions", inputs.positions],
    ["slot_mapping", inputs.slot_mapping], ["sequence", inputs.row_seq_ids],
    ["samples", inputs.token_ids.map((_, i) => (sample.has(i) ? "✓" : ""))]];
  for (const [name, values] of rows) {
    const row = table.insertRow();
    row.dataset.row = name;
    row.append(el("th", "", name));
    for (let i = 0; i < n; i++) {
      const cell = row.insertCell();
      cell.textContent = i < values.length ? String(values[i]) : "–";  // (no slots: pooled)
      if (sample.has(i)) cell.className = "sampled";
    }
  }
  if (inputs.token_ids.length > n) table.caption = `first ${n} of ${inputs.token_ids.length} rows`;
  return table;
}

function sampledList(sampled, record) {
  const list = el("ul", "sampled-list");
  if (!sampled.length) {
    list.append(el("li", "", record.seqs.some((s) => s.action === "pool")
      ? "nothing: the texts of this step were pooled (embeddings, scores), not sampled"
      : "nothing: no chunk reached its sequence's end"));
  }
  for (const s of sampled) {
    const item = el("li", "");
    item.append(el("span", "rid", `seq ${s.seq_id} (row ${s.row}) sampled `),
      el("strong", "", `"${tokenText(s.token)}"`), el("span", "", " · top 5: "));
    s.top_tokens.forEach((t, k) => {
      const chip = el("span", "chip" + (s.top_token_ids[k] === s.token_id ? " chosen" : ""),
        `"${tokenText(t)}" ${(100 * s.top_probs[k]).toFixed(1)}%`);
      item.append(chip);
    });
    list.append(item);
  }
  return list;
}

// Blocks of the pool above that the step changed, by what happened (a later change wins).
function markBlocks(record) {
  const cells = $("#blocks").children;
  for (const cell of cells) delete cell.dataset.change;
  for (const change of ["freed", "evicted", "shared", "allocated", "copied"]) {
    for (const id of record?.blocks[change] ?? []) if (cells[id]) cells[id].dataset.change = change;
  }
}

export function createStepView({ onUnauthorized }) {
  let renew = null;
  let enabled = false;

  function show(mode) {
    $("#step-pause").disabled = mode.paused;
    $("#step-resume").disabled = !mode.paused;
    $("#step-bar").dataset.paused = String(mode.paused);
    $("#step-status").textContent = mode.paused
      ? `paused after step ${mode.num_steps}: requests wait in the queue; it resumes by itself `
        + `${Math.round(mode.lease_left)} s after this page is closed`
      : "running";
    clearInterval(renew);
    renew = mode.paused ? setInterval(() => send("pause"), RENEW_MS) : null;
    const record = mode.record;
    $("#step-record").hidden = !record;
    if (!record) return markBlocks(null);
    $("#record-step").textContent = String(record.step);
    $("#record-summary").textContent = `${record.inputs.token_ids.length} tokens computed · `
      + `blocks: ${record.blocks.allocated.length} allocated, ${record.blocks.shared.length} `
      + `shared (prefix cache), ${record.blocks.copied.length} copied on write, `
      + `${record.blocks.freed.length} freed, `
      + `${record.blocks.evicted.length} evicted · ${record.num_preemptions} preempted`;
    $("#record-seqs").replaceChildren(seqTable(record));
    $("#record-inputs").replaceChildren(inputsTable(record.inputs));
    $("#record-sampled").replaceChildren(sampledList(record.sampled, record));
    markBlocks(mode.paused ? record : null); // running: the pool moves on, the marks go
  }

  async function send(command) {
    try {
      show(await (await api(forModel(`/ui/api/step/${command}`), { method: "POST" })).json());
    } catch (err) {
      if (err instanceof HTTPError && err.status === 401) return onUnauthorized(err.message);
      $("#step-status").textContent = err.message;
    }
  }

  for (const command of ["pause", "step", "resume"]) {
    $(`#step-${command}`).addEventListener("click", () => send(command));
  }

  return {
    async setup(info) {
      enabled = info.step_mode;
      $("#step-bar").hidden = !enabled;
      if (enabled) show(await (await api(forModel("/ui/api/step"))).json());
    },
  };
}
