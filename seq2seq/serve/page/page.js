// The seq2seq page: pick a model, translate the lines of the text box through
// POST /v1/translate, and draw the attention of one sentence on a canvas.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let results = [];

async function api(path, body) {
  const response = await fetch(path, body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let data;
  try {
    data = await response.json();
  } catch {  // not our JSON: a proxy's page, or a server that is gone
    throw new Error(`${response.status} ${response.statusText}`);
  }
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function fill(select, values) {
  select.replaceChildren(...values.map((v) => new Option(v, v)));
}

function chosenModel() {
  return models.find((m) => m.name === $("model").value);
}

function showModel() {
  const m = chosenModel();
  if (!m) return;
  $("model-info").textContent = `${m.family}, ${m.src_lang} → ${m.tgt_lang}, ${m.engine} engine`;
  $("method").value = m.decode.method;
  $("beam").value = m.decode.beam_size;
  fill($("tgt-lang"), m.target_languages);
  $("lang-choice").hidden = m.target_languages.length === 0;
  fill($("task"), m.tasks);
  $("task-choice").hidden = m.tasks.length === 0;
  showMethod();
}

function showMethod() {
  const beam = $("method").value === "beam";
  document.querySelectorAll(".beam-only").forEach((e) => { e.hidden = !beam; });
}

function request(texts) {
  const m = chosenModel();
  const body = { model: m.name, texts, attention: m.attention };
  const method = $("method").value;
  if (method === "beam") {
    body.beam = Number($("beam").value);
    body.nbest = Number($("nbest").value);
  } else if (method === "sample") {
    body.sample = true;
  } else {
    body.decode = { method: "greedy" };
  }
  if (m.target_languages.length) body.tgt_lang = $("tgt-lang").value;
  if (m.tasks.length) body.task = $("task").value;
  return body;
}

async function translate() {
  if ($("go").disabled) return;  // one request at a time (Ctrl+Enter too)
  const texts = $("source").value.split("\n");
  while (texts.length && !texts[texts.length - 1].trim()) texts.pop();
  if (!texts.length) return say("Type a sentence first.", true);
  $("go").disabled = true;
  say("Translating…");
  const started = performance.now();
  try {
    const data = await api("/v1/translate", request(texts));
    results = data.results;
    showOutputs();
    say(`${texts.length} line(s) in ${Math.round(performance.now() - started)} ms`);
  } catch (err) {
    say(err.message, true);
  } finally {
    $("go").disabled = false;
  }
}

function showOutputs() {
  const list = $("outputs");
  list.replaceChildren();
  const options = [];
  results.forEach((r, i) => {
    const item = document.createElement("li");
    item.dataset.index = i;
    item.append(r.output, " ");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = r.output ? `(${r.score.toFixed(3)})` : "";
    item.append(score);
    if (r.nbest.length > 1) {
      const more = document.createElement("ol");
      more.className = "nbest";
      r.nbest.slice(1).forEach((h) => {
        const li = document.createElement("li");
        li.textContent = `${h.output} (${h.score.toFixed(3)})`;
        more.append(li);
      });
      item.append(more);
    }
    item.addEventListener("click", () => choose(i));
    list.append(item);
    if (r.attention && r.attention.length) options.push(new Option(`line ${i + 1}`, i));
  });
  $("sentence").replaceChildren(...options);
  if (options.length) choose(Number(options[0].value));
  else clearHeatmap();
}

function choose(i) {
  document.querySelectorAll("#outputs > li").forEach((li) => {
    li.classList.toggle("chosen", Number(li.dataset.index) === i);
  });
  $("sentence").value = i;
  const r = results[i];
  if (r && r.attention && r.attention.length) drawHeatmap(r);
  else clearHeatmap();
}

function clearHeatmap() {
  const canvas = $("heatmap");
  canvas.width = canvas.height = 10;
  canvas.dataset.cells = "0";
  $("cell").textContent = "";
}

// The matrix [output tokens][source tokens]: one cell per weight, its shade the weight.
function drawHeatmap(r) {
  const canvas = $("heatmap");
  const ctx = canvas.getContext("2d");
  const cell = 26;
  ctx.font = "13px system-ui, sans-serif";
  const width = (labels) => Math.max(...labels.map((t) => ctx.measureText(t).width)) + 10;
  const left = width(r.output_tokens);
  const top = width(r.source_tokens);
  const cols = r.source_tokens.length;
  const rows = r.output_tokens.length;
  canvas.width = left + cols * cell + 4;
  canvas.height = top + rows * cell + 4;
  ctx.font = "13px system-ui, sans-serif";
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  r.attention.forEach((weights, y) => {
    weights.forEach((w, x) => {
      const shade = Math.round(255 * (1 - Math.min(1, Math.max(0, w))));
      ctx.fillStyle = `rgb(${shade}, ${Math.round(shade * 0.9 + 20)}, 255)`;
      ctx.fillRect(left + x * cell, top + y * cell, cell - 1, cell - 1);
    });
  });
  ctx.fillStyle = "#1d2430";
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  r.output_tokens.forEach((t, y) => ctx.fillText(t, left - 6, top + y * cell + cell / 2));
  ctx.textAlign = "left";
  r.source_tokens.forEach((t, x) => {
    ctx.save();
    ctx.translate(left + x * cell + cell / 2, top - 6);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(t, 0, 0);
    ctx.restore();
  });
  canvas.dataset.cells = String(rows * cols);
  canvas.onmousemove = (event) => {
    const box = canvas.getBoundingClientRect();
    const x = Math.floor((event.clientX - box.left - left) / cell);
    const y = Math.floor((event.clientY - box.top - top) / cell);
    $("cell").textContent = x >= 0 && y >= 0 && x < cols && y < rows
      ? `${r.output_tokens[y]} ← ${r.source_tokens[x]}: ${r.attention[y][x].toFixed(3)}`
      : "";
  };
}

async function start() {
  $("go").addEventListener("click", translate);
  $("model").addEventListener("change", showModel);
  $("method").addEventListener("change", showMethod);
  $("sentence").addEventListener("change", () => choose(Number($("sentence").value)));
  $("source").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) translate();
  });
  try {
    models = (await api("/v1/models")).models;
    fill($("model"), models.map((m) => m.name));
    showModel();
    say("Ready.");
  } catch (err) {
    say(`Cannot list the models: ${err.message}`, true);
  }
}

start();
