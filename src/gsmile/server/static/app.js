// gsmile page: plain JavaScript, no dependencies. Every piece of user or model text is
// inserted with textContent, so it is always shown as text and never parsed as markup.
"use strict";

// The colour scale (gsmile.render.palette): the server puts it in place of the next line.
const SCALE = null; // gsmile:colour-scale
const POLL_MS = 400;
const $ = (id) => document.getElementById(id);
let current = null; // the explanation JSON last computed
let imageModel = false; // the service runs a text-to-image model (from /healthz)
let localModel = false; // the service runs a local language model: activation patching (from /healthz)
// A base64 PNG as the server sends it: base64 characters only, so a data URL built from it
// can never carry anything else.
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

// Signed value -> background colour; strength in [0, 1] (0 = white).
// The same computation as gsmile.render.palette.mix and ink.
function colour(value, strength) {
  if (!Number.isFinite(value) || !Number.isFinite(strength) || value === 0) {
    return [`rgb(${SCALE.neutral.join(",")})`, SCALE.dark_ink];
  }
  const s = Math.min(Math.max(strength, 0), 1);
  const base = value > 0 ? SCALE.positive : SCALE.negative;
  const rgb = base.map((b, i) => Math.round(SCALE.neutral[i] + (b - SCALE.neutral[i]) * s));
  return [`rgb(${rgb.join(",")})`, strength > SCALE.ink_threshold ? SCALE.light_ink : SCALE.dark_ink];
}

function paint(node, value, strength) {
  const [bg, ink] = colour(value, strength);
  node.style.background = bg;
  node.style.color = ink;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined || !Number.isFinite(x) ? "n/a" : Number(x).toFixed(digits);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function api(path, body) {
  const res = await fetch(path, body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    if (res.status === 401) $("key-box").open = true;
    const msg = data && data.error ? data.error : `HTTP ${res.status}`;
    const err = new Error(res.status === 503 && res.headers.get("Retry-After") ? `${msg} (retry in ${res.headers.get("Retry-After")} s)` : msg);
    throw err;
  }
  return data;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function request() {
  const body = {
    prompt: $("prompt").value,
    method: $("method").value,
    n_samples: Number($("samples").value),
    random_state: Number($("seed").value || 0),
    async: true,
  };
  if (imageModel) {
    // the images' distance is the service's own; a text-to-image model has no response
    body.image_seeds = Number($("image-seeds").value || 1);
  } else {
    body.target = $("target").value;
  }
  const context = $("context").value;
  const response = imageModel ? "" : $("response").value;
  const unit = $("unit").value; // "auto": the library's default (words of a prompt, sentences of a context)
  if (context.trim()) body.context = context;
  if (unit !== "auto") body[context.trim() ? "context_unit" : "unit"] = unit;
  if (response.trim()) body.response = response;
  const refine = $("refine").value; // coarse-to-fine: the finer unit ("" = one level)
  if (refine) {
    body.refine = refine;
    if (unit === "auto" && !context.trim()) body.unit = "sentence"; // a prompt's default unit (word) cannot be refined
  }
  const pairs = Number($("interactions").value || 0);
  if (pairs > 0) body.interactions = pairs;
  if (body.method === "mupax") body.method_options = { threshold_percentile: Number($("threshold").value) };
  return body;
}

// Submit `body` to `path` as a job and poll it until it finishes: its result, or an Error
// with the service's message. `onState` sees every state polled.
async function runJob(path, body, onState) {
  const job = await api(path, body);
  for (;;) {
    const state = await api(`/v1/jobs/${encodeURIComponent(job.job_id)}`);
    onState(state);
    if (state.status === "succeeded") return state.result;
    if (state.status === "failed") throw new Error(state.error ? state.error.error : "the job failed");
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

async function compute(event) {
  event.preventDefault();
  showError("");
  if (!$("prompt").value.trim()) { showError("Write a prompt first."); return; }
  const button = $("compute");
  const bar = $("progress");
  button.disabled = true;
  bar.hidden = false;
  bar.value = 0;
  $("status").textContent = "queued";
  try {
    render(await runJob("/v1/explain", request(), (state) => {
      bar.value = state.progress;
      $("status").textContent = `${state.status} ${Math.round(state.progress * 100)}%`;
    }));
    $("status").textContent = "done";
  } catch (err) {
    showError(err.message);
    $("status").textContent = "";
  } finally {
    button.disabled = false;
    bar.hidden = true;
  }
}

function explainedText(exp) {
  return exp.explained === "context" && exp.context !== null ? exp.context : exp.prompt;
}

// The explained text with each unit in a span coloured by `values` (signed) scaled by max |value|.
function unitText(container, exp, values) {
  clear(container);
  const text = explainedText(exp);
  const top = Math.max(0, ...values.map((v) => (Number.isFinite(v) ? Math.abs(v) : 0)));
  const order = exp.units.map((u, i) => [u, i]).sort((a, b) => a[0].start - b[0].start);
  let at = 0;
  for (const [u, i] of order) {
    if (u.start > at) container.appendChild(document.createTextNode(text.slice(at, u.start)));
    const span = el("span", "unit", text.slice(u.start, u.end));
    span.dataset.index = String(i);
    const v = values[i];
    paint(span, v, top > 0 ? Math.abs(v) / top : 0);
    span.title = `${u.text}: ${fmt(exp.coefficients[i], 4)}`;
    container.appendChild(span);
    at = Math.max(at, u.end);
  }
  if (at < text.length) container.appendChild(document.createTextNode(text.slice(at)));
}

function render(exp) {
  current = exp;
  $("result").hidden = false;
  const coef = exp.coefficients.map((c) => (c === null ? NaN : c));
  // summary
  const summary = $("summary");
  clear(summary);
  const held = exp.held_out_r2 === null || exp.held_out_r2 === undefined ? "" : ` (held out: ${fmt(exp.held_out_r2, 2)})`;
  const r2 = el("dd", null, fmt(exp.fidelity_r2, 2) + held);
  r2.appendChild(el("span", `badge ${exp.reliable ? "ok" : "low"}`, exp.reliable ? "reliable" : "unreliable"));
  for (const issue of exp.reliability_issues || []) r2.appendChild(el("div", "issue", issue));
  const rows = [["method", exp.method], ["target", exp.target], ["explained", `${exp.explained} (${exp.units.length} ${exp.unit_type} units)`],
    ["samples", `${exp.n_samples} drawn, ${exp.n_unique} scored`], ["model", exp.model_id]];
  summary.appendChild(el("dt", null, "fidelity R²"));
  summary.appendChild(r2);
  const extras = exp.extras || {};
  if (extras.mupax) {
    const m = extras.mupax;
    rows.push(["MuPAX", `${m.n_accepted} of ${m.n_total} samples accepted (distance ≤ W = ${fmt(m.threshold_W, 4)}, percentile ${m.threshold_percentile})`]);
  }
  if (extras.stability) {
    const s = extras.stability;
    rows.push(["stability", `${s.runs} runs, top-${s.top_k} Jaccard ${fmt(s.topk_jaccard, 2)}`]);
  }
  for (const [k, v] of rows) { summary.appendChild(el("dt", null, k)); summary.appendChild(el("dd", null, v)); }
  const warnings = $("warnings");
  clear(warnings);
  for (const w of exp.warnings || []) warnings.appendChild(el("div", "warning", w));
  const insight = typeof exp.insights === "string" ? exp.insights : "";
  $("insights").textContent = insight;
  $("insights-box").hidden = !insight;
  renderImages(exp);
  // outcome
  $("text-title").textContent = exp.explained === "context" ? "Context" : "Prompt";
  unitText($("text"), exp, coef);
  const bars = $("bars");
  clear(bars);
  const top = Math.max(0, ...coef.map((c) => (Number.isFinite(c) ? Math.abs(c) : 0)));
  exp.units.forEach((u, i) => {
    const tr = el("tr");
    tr.appendChild(el("td", "label", u.text));
    const cell = el("td");
    const track = el("div", "track");
    const fill = el("div", "fill");
    const s = top > 0 && Number.isFinite(coef[i]) ? Math.abs(coef[i]) / top : 0;
    fill.style.width = `${(s * 100).toFixed(1)}%`;
    fill.style.background = colour(coef[i], 1)[0];
    track.appendChild(fill);
    cell.appendChild(track);
    tr.appendChild(cell);
    tr.appendChild(el("td", "num", fmt(coef[i], 4)));
    bars.appendChild(tr);
  });
  renderLevels(exp);
  renderInteractions(exp);
  const list = $("top");
  clear(list);
  const ranked = exp.units.map((u, i) => [u, i]).sort((a, b) => (exp.scores[b[1]] || 0) - (exp.scores[a[1]] || 0) || a[1] - b[1]);
  for (const [u, i] of ranked.slice(0, 5)) {
    const li = el("li");
    li.appendChild(el("strong", null, u.text));
    li.appendChild(document.createTextNode(` score ${fmt(exp.scores[i], 2)}, coefficient ${fmt(coef[i], 4)}`));
    list.appendChild(li);
  }
  $("response-text").textContent = exp.response === null ? "" : exp.response;
  $("response-box").hidden = exp.response === null && !!exp.images;
  renderTokens(exp);
  select("outcome");
}

// An <img> of a base64 PNG, or null when the field is not base64 (nothing else ever
// reaches a data URL).
function pngImage(data, alt) {
  if (typeof data !== "string" || data.length % 4 !== 0 || !BASE64.test(data)) return null;
  const img = document.createElement("img");
  img.alt = alt;
  img.src = `data:image/png;base64,${data}`;
  return img;
}

function figure(data, alt, caption) {
  const fig = el("figure");
  const img = pngImage(data, alt);
  fig.appendChild(img || el("div", "issue", "(not a PNG image)"));
  if (caption) fig.appendChild(caption);
  return fig;
}

// A text-to-image explanation (exp.images): the original prompt's images, then for the top
// units the images without that unit, side by side, with their distance.
function renderImages(exp) {
  const record = exp.images;
  const box = $("images-box");
  const original = $("original-images");
  const without = $("without-images");
  clear(original);
  clear(without);
  box.hidden = !(record && Array.isArray(record.original));
  if (box.hidden) return;
  const seeds = Array.isArray(record.seeds) ? record.seeds : [];
  $("images-caption").textContent = `The original prompt's image${record.original.length === 1 ? "" : "s"}`
    + ` (seed${seeds.length === 1 ? "" : "s"} ${seeds.join(", ")}); distance: ${record.distance}.`;
  record.original.forEach((data, n) => {
    original.appendChild(figure(data, `original prompt, seed ${seeds[n] ?? n}`, el("figcaption", null, `seed ${seeds[n] ?? n}`)));
  });
  for (const row of Array.isArray(record.without) ? record.without : []) {
    const images = Array.isArray(row.images) ? row.images : [];
    const caption = el("figcaption");
    caption.appendChild(document.createTextNode("without "));
    caption.appendChild(el("span", "label", row.text));
    caption.appendChild(document.createTextNode(`: distance ${fmt(row.distance, 4)}`));
    if (images.length === 0) continue;
    const fig = figure(images[0], `the prompt without ${row.text}`, caption);
    fig.title = String(row.prompt ?? "");
    without.appendChild(fig);
  }
}

// One bar row: label, bar scaled by `top`, coefficient.
function barRow(label, c, top, className) {
  const tr = el("tr", className);
  tr.appendChild(el("td", "label", label));
  const cell = el("td");
  const track = el("div", "track");
  const fill = el("div", "fill");
  const s = top > 0 && Number.isFinite(c) ? Math.abs(c) / top : 0;
  fill.style.width = `${(s * 100).toFixed(1)}%`;
  fill.style.background = colour(c, 1)[0];
  track.appendChild(fill);
  cell.appendChild(track);
  tr.appendChild(cell);
  tr.appendChild(el("td", "num", fmt(c, 4)));
  return tr;
}

// A coarse-to-fine explanation (exp.levels): every coarse unit with its level-1 bar, the
// refined ones followed by their finer units' level-2 bars, indented.
function renderLevels(exp) {
  const box = $("levels");
  const table = $("hierarchy");
  const captions = $("level-captions");
  clear(table);
  clear(captions);
  const levels = exp.levels;
  box.hidden = !(Array.isArray(levels) && levels.length > 1);
  if (box.hidden) return;
  const values = (level) => level.coefficients.map((c) => (c === null ? NaN : c));
  const topOf = (cs) => Math.max(0, ...cs.map((c) => (Number.isFinite(c) ? Math.abs(c) : 0)));
  levels.forEach((level, n) => {
    captions.appendChild(el("li", null, `Level ${n + 1}: ${level.units.length} ${level.unit_type} units, fidelity R² ${fmt(level.fidelity_r2, 2)}, ${level.n_evals} model evaluations`));
  });
  const coarse = levels[0];
  const fine = levels[levels.length - 1];
  const refined = new Set(coarse.refined || []);
  const cc = values(coarse);
  const fc = values(fine);
  const ctop = topOf(cc);
  const ftop = topOf(fc);
  coarse.units.forEach((u, i) => {
    table.appendChild(barRow(u.text, cc[i], ctop, refined.has(i) ? "coarse refined" : "coarse"));
    if (!refined.has(i)) return;
    fine.units.forEach((f, j) => {
      if (f.parent === i) table.appendChild(barRow(f.text, fc[j], ftop, "fine"));
    });
  });
}

// Pairwise interactions among the top units (exp.extras.interactions): the strongest pairs.
function renderInteractions(exp) {
  const record = (exp.extras || {}).interactions;
  const box = $("interactions-box");
  const table = $("interactions-table");
  clear(table);
  box.hidden = !record;
  if (!record) return;
  const how = record.exact ? "exact" : "estimated";
  $("interactions-caption").textContent = `${record.index}, top-${record.units.length} units, ${how}, ${record.n_evals} evaluations; `
    + "positive: the pair does more together than each alone, negative: either one alone does most of it.";
  const head = el("tr");
  for (const name of ["unit", "unit", "interaction"]) head.appendChild(el("th", name === "interaction" ? "num" : null, name));
  table.appendChild(head);
  const label = (i) => (exp.units[i] ? exp.units[i].text : `#${i}`);
  for (const p of record.pairs.slice(0, 5)) {
    const tr = el("tr");
    tr.appendChild(el("td", "label", label(p.a)));
    tr.appendChild(el("td", "label", label(p.b)));
    tr.appendChild(el("td", "num", fmt(p.value, 3)));
    table.appendChild(tr);
  }
}

function renderTokens(exp) {
  const table = $("heatmap");
  const strip = $("token-strip");
  clear(table);
  clear(strip);
  const tc = exp.token_coefficients;
  const tokens = exp.response_tokens;
  const has = Array.isArray(tc) && Array.isArray(tokens) && tokens.length > 0;
  $("no-tokens").hidden = has;
  table.hidden = !has;
  strip.hidden = !has;
  if (!has) { clear($("token-text")); return; }
  const values = tc.map((row) => row.map((v) => (v === null ? NaN : v)));
  // each column (response token) is scaled to its own largest |value|, but never to less
  // than a tenth of the largest overall, so a token that barely moved stays pale
  const absAt = (row, j) => (Number.isFinite(row[j]) ? Math.abs(row[j]) : 0);
  const globalTop = Math.max(0, ...values.map((row) => Math.max(0, ...row.map((_, j) => absAt(row, j)))));
  const colTop = tokens.map((_, j) => Math.max(0.1 * globalTop, ...values.map((row) => absAt(row, j))));
  const head = el("tr");
  head.appendChild(el("th"));
  tokens.forEach((t, j) => {
    const th = el("th", "tok", t);
    th.dataset.token = String(j);
    th.addEventListener("mouseenter", () => focusToken(j));
    head.appendChild(th);
    const chip = el("span", "tok", t);
    chip.dataset.token = String(j);
    chip.addEventListener("mouseenter", () => focusToken(j));
    strip.appendChild(chip);
  });
  table.appendChild(head);
  exp.units.forEach((u, i) => {
    const tr = el("tr");
    tr.dataset.unit = String(i);
    tr.appendChild(el("th", "row", u.text));
    values[i].forEach((v, j) => {
      const td = el("td");
      paint(td, v, colTop[j] > 0 && Number.isFinite(v) ? Math.abs(v) / colTop[j] : 0);
      td.title = `${u.text} -> ${tokens[j]}: ${fmt(v, 4)}`;
      td.addEventListener("mouseenter", () => focusToken(j));
      tr.appendChild(td);
    });
    table.appendChild(tr);
  });
  focusToken(null);
}

// Hovering response token j: colour the text by that token's column and mark the units
// whose |value| is at least half of the column's largest.
function focusToken(j) {
  const exp = current;
  if (!exp || !exp.token_coefficients) return;
  document.querySelectorAll(".tok.hot, tr.hot").forEach((n) => n.classList.remove("hot"));
  const column = j === null ? exp.coefficients : exp.token_coefficients.map((row) => row[j]);
  const values = column.map((v) => (v === null ? NaN : v));
  unitText($("token-text"), exp, values);
  if (j === null) return;
  document.querySelectorAll(`[data-token="${j}"]`).forEach((n) => n.classList.add("hot"));
  const top = Math.max(0, ...values.map((v) => (Number.isFinite(v) ? Math.abs(v) : 0)));
  if (top === 0) return;
  values.forEach((v, i) => {
    if (Math.abs(v) >= 0.5 * top) {
      document.querySelectorAll(`#token-text .unit[data-index="${i}"], #heatmap tr[data-unit="${i}"]`).forEach((n) => n.classList.add("hot"));
    }
  });
}

function select(view) {
  for (const name of ["outcome", "tokens"]) {
    $(`view-${name}`).hidden = name !== view;
    $(`tab-${name}`).setAttribute("aria-selected", String(name === view));
  }
}

// ------------------------------------------------------------------ activation patching
function showPatchError(message) {
  const box = $("patch-error");
  box.textContent = message;
  box.hidden = !message;
}

async function patch(event) {
  event.preventDefault();
  showPatchError("");
  const clean = $("clean").value;
  const corrupted = $("corrupted").value;
  if (!clean.trim() || !corrupted.trim()) { showPatchError("Write a clean and a corrupted prompt first."); return; }
  const components = ["resid", "attn", "mlp"].filter((c) => $(`comp-${c}`).checked);
  if (!components.length) { showPatchError("Tick at least one component."); return; }
  const body = { clean, corrupted, components, async: true };
  if ($("answer").value.trim()) body.answer = $("answer").value;
  const button = $("patch-run");
  button.disabled = true;
  $("patch-progress").hidden = false; // indeterminate: a patching job reports no partial progress
  $("patch-status").textContent = "queued";
  try {
    renderPatch(await runJob("/v1/patch", body, (state) => { $("patch-status").textContent = state.status; }));
    $("patch-status").textContent = "done";
  } catch (err) {
    showPatchError(err.message);
    $("patch-status").textContent = "";
  } finally {
    button.disabled = false;
    $("patch-progress").hidden = true;
  }
}

// A token as one line: line breaks and tabs as escapes (as gsmile.render.patching does).
function visible(token) {
  return String(token).replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/\r/g, "\\r").replace(/\t/g, "\\t");
}

// The token at a position, as clean→corrupted where the prompts differ.
function positionLabel(p) {
  return p.clean === p.corrupted ? p.clean : `${p.clean}→${p.corrupted}`;
}

// A gsmile.patching result: the answer and its log p after each prompt, then one heatmap per
// component, layers as rows and positions from `first_patched` on as columns, each cell
// coloured by the share restored on the diverging scale (full colour at 1 or -1).
function renderPatch(res) {
  $("patch-result").hidden = false;
  const summary = $("patch-summary");
  clear(summary);
  const answer = res.answer || {};
  const rows = [
    ["clean", res.clean], ["corrupted", res.corrupted],
    ["answer", answer.text, "patch-answer"],
    ["answer from", answer.source === "given" ? "the request" : "the clean prompt's most likely next token"],
    ["log p clean", fmt(answer.clean_logp, 3)], ["log p corrupted", fmt(answer.corrupted_logp, 3)],
    ["runs", `${res.n_patched} patched runs in ${res.n_forward} forward passes, ${fmt(res.seconds, 1)} s`],
    ["model", res.model],
  ];
  for (const [k, v, id] of rows) {
    summary.appendChild(el("dt", null, k));
    const dd = el("dd", k === "clean" || k === "corrupted" || k === "answer" ? "mono" : null, v);
    if (id) dd.id = id;
    summary.appendChild(dd);
  }
  const warnings = $("patch-warnings");
  clear(warnings);
  for (const w of res.warnings || []) warnings.appendChild(el("div", "warning", w));
  const maps = $("patch-maps");
  clear(maps);
  const positions = Array.isArray(res.positions) ? res.positions : [];
  const first = Math.max(0, Number(res.first_patched) || 0);
  const shown = positions.map((_, j) => j).filter((j) => j >= first);
  for (const [component, matrix] of Object.entries(res.restored || {})) {
    maps.appendChild(el("h3", null, component === "resid" ? "resid: residual stream after the layer"
      : component === "attn" ? "attn: attention output of the layer" : component === "mlp" ? "mlp: MLP output of the layer" : component));
    const wrap = el("div", "scroll");
    const table = el("table", "heatmap patching");
    table.dataset.component = component;
    const head = el("tr");
    head.appendChild(el("th", "row", "layer"));
    for (const j of shown) {
      const p = positions[j];
      const template = p.kind === "template";
      const label = visible(positionLabel(p));
      const th = el("th", `tok${template ? " template" : ""}${p.clean !== p.corrupted ? " changed" : ""}`, template ? `[${label}]` : label);
      th.title = `position ${j} (${p.kind}): ${positionLabel(p)}`;
      th.dataset.position = String(j);
      head.appendChild(th);
    }
    table.appendChild(head);
    matrix.forEach((row, i) => {
      const layer = Array.isArray(res.layers) ? res.layers[i] : i;
      const tr = el("tr");
      tr.dataset.layer = String(layer);
      tr.appendChild(el("th", "row", layer));
      for (const j of shown) {
        const v = row[j] === null ? NaN : Number(row[j]);
        const p = positions[j];
        const td = el("td", p.kind === "template" ? "template" : null);
        paint(td, v, Number.isFinite(v) ? Math.min(Math.abs(v), 1) : 0);
        td.title = `layer ${layer}, position ${j} ${positionLabel(p)}: restored ${fmt(v, 3)}`;
        tr.appendChild(td);
      }
      table.appendChild(tr);
    });
    wrap.appendChild(table);
    maps.appendChild(wrap);
  }
}

function mode(view) {
  for (const name of ["explain", "patch"]) {
    $(`${name}-panel`).hidden = name !== view;
    $(`mode-${name}`).setAttribute("aria-selected", String(name === view));
  }
}

function download() {
  if (!current) return;
  const blob = new Blob([JSON.stringify(current, null, 2)], { type: "application/json" });
  const a = el("a");
  a.href = URL.createObjectURL(blob);
  a.download = "gsmile-explanation.json";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function init() {
  const methodSelect = $("method");
  let methods = ["gsmile"];
  try {
    const health = await (await fetch("/healthz")).json();
    if (Array.isArray(health.methods) && health.methods.length) methods = health.methods;
    imageModel = health.model_kind === "image";
    localModel = health.local_model === true;
    if (imageModel && Number.isInteger(health.max_image_seeds)) $("image-seeds").max = String(health.max_image_seeds);
  } catch (e) { /* keep the default */ }
  // a text-to-image model: images per prompt instead of a target, and no response
  $("images-field").hidden = !imageModel;
  $("target-field").hidden = imageModel;
  $("response-field").hidden = imageModel;
  if (imageModel) document.querySelector(".lead").textContent = "Which words of the prompt drive the generated image?";
  for (const m of methods) methodSelect.appendChild(el("option", null, m));
  if (methods.includes("gsmile")) methodSelect.value = "gsmile";  // the default, whatever sorts first
  const syncThreshold = () => { $("threshold").disabled = methodSelect.value !== "mupax"; };
  methodSelect.addEventListener("change", syncThreshold);
  syncThreshold();
  $("form").addEventListener("submit", compute);
  $("tab-outcome").addEventListener("click", () => select("outcome"));
  $("tab-tokens").addEventListener("click", () => select("tokens"));
  $("download").addEventListener("click", download);
  // activation patching: only with a local model, whose activations the service reads
  $("modes").hidden = !localModel;
  $("patch-form").addEventListener("submit", patch);
  $("mode-explain").addEventListener("click", () => mode("explain"));
  $("mode-patch").addEventListener("click", () => mode("patch"));
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
