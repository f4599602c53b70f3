// The page of docs/web.md: no build step, no dependencies. Every number shown comes from the
// service's JSON routes: an upload or a drawing is first turned into its 784 pixels by
// POST /v1/models/{model}/preprocess/image (the conversion of the image routes), then sent to
// /predict (eval mode) and /uncertainty (MC dropout) as any JSON client would send it.
"use strict";

const $ = (id) => document.getElementById(id);
const SIDE = 28;
const state = {
  card: null, // the chosen model's card
  pixels: null, // the current input: 784 numbers in [0, 1]
  source: "",
  examples: [], // {index, label, pixels, thumbnail}
  labels: [],
  ticket: 0, // the latest analysis; older answers are dropped
  galleryTicket: 0,
};

// ---------------------------------------------------------------- the API

function headers(json = false) {
  const h = {};
  const key = $("api-key").value;
  if (key) h["X-API-Key"] = key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function describe(status, body) {
  const detail = body && body.detail;
  let text = "the server gave no reason";
  if (Array.isArray(detail)) {
    text = detail
      .map((e) => {
        const where = (e.loc || []).filter((part) => part !== "body").join(".");
        return !where || String(e.msg).startsWith(where) ? e.msg : `${where}: ${e.msg}`;
      })
      .join("; ");
  } else if (typeof detail === "string") {
    text = detail;
  }
  if (status === 401) text += ": type the API key, then choose “Apply settings”";
  return `${status}: ${text}`;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) throw new Error(describe(response.status, body));
  return body;
}

function modelPath(suffix) {
  return `/v1/models/${encodeURIComponent(state.card.name)}${suffix}`;
}

function postJSON(suffix, body) {
  return api(modelPath(suffix), {
    method: "POST",
    headers: headers(true),
    body: JSON.stringify(body),
  });
}

// Empty fields are left to the server (its default N, a random seed); anything else is sent as
// typed, and the server's 422 explains what is wrong with it.
function runSettings() {
  const read = (id) => ($(id).value === "" ? null : Number($(id).value));
  return { samples: read("samples"), seed: read("seed") };
}

// ---------------------------------------------------------------- messages

function setStatus(text) {
  $("status").textContent = text;
}

function showError(error) {
  const box = $("error");
  box.textContent = `Error ${error.message}`;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ---------------------------------------------------------------- rendering

const fixed = (value, digits) => Number(value).toFixed(digits);

function setNumber(id, value, digits) {
  const el = $(id);
  el.textContent = fixed(value, digits);
  el.dataset.value = String(value);
}

function drawPixels(canvas, pixels) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(SIDE, SIDE);
  pixels.forEach((v, i) => {
    const shade = Math.round(v * 255);
    image.data.set([shade, shade, shade, 255], 4 * i);
  });
  context.putImageData(image, 0, 0);
}

// A bar chart as a table: one row per class, the number as text beside its bar.
function bars(table, labels, values, { top, digits = 3, scale = 1, extra = null }) {
  table.replaceChildren();
  labels.forEach((label, i) => {
    const row = table.insertRow();
    row.dataset.class = String(i);
    if (i === top) row.classList.add("top");
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = label;
    const barCell = row.insertCell();
    barCell.className = "bar-cell";
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(0, Math.min(1, values[i] / scale)) * 100}%`;
    barCell.append(bar);
    const value = row.insertCell();
    value.className = "value";
    value.dataset.value = String(values[i]);
    value.textContent = digits === 0 ? String(values[i]) : fixed(values[i], digits);
    if (extra) value.textContent += extra(i);
    row.prepend(name);
  });
}

function render(ticket, evalAnswer, mcAnswer) {
  const labels = state.card.labels;
  const ev = evalAnswer.predictions[0];
  const mc = mcAnswer.predictions[0];
  const n = mcAnswer.samples;
  drawPixels($("preview"), state.pixels);
  $("source").textContent = `What the model sees: ${state.source}`;
  $("label").textContent = mc.label;
  $("label").dataset.value = String(mc.class_index);
  $("eval-label").textContent = `${ev.label} (confidence ${fixed(ev.confidence, 3)})`;
  $("eval-label").dataset.value = String(ev.class_index);
  setNumber("agreement", mc.agreement, 3);
  $("agreement").textContent += ` (${mc.votes[mc.class_index]} of ${n} passes)`;
  const [low, high] = mc.agreement_interval;
  const interval = $("agreement-interval");
  interval.textContent = `${fixed(low, 3)} to ${fixed(high, 3)}`;
  interval.dataset.low = String(low);
  interval.dataset.high = String(high);
  setNumber("predictive-entropy", mc.predictive_entropy, 4);
  setNumber("expected-entropy", mc.expected_entropy, 4);
  setNumber("mutual-information", mc.mutual_information, 4);
  $("predictive-entropy").textContent += " nats";
  $("expected-entropy").textContent += " nats";
  $("mutual-information").textContent += " nats";
  const abstain = $("abstain");
  abstain.dataset.value = String(mc.abstain);
  abstain.textContent =
    mc.abstain === null
      ? "no threshold (the model is not calibrated)"
      : mc.abstain
        ? "yes: the passes agree too little to answer"
        : "no";
  $("run").textContent = `${n} passes, seed ${mcAnswer.seed === null ? "random" : mcAnswer.seed}`;
  $("run").dataset.samples = String(n);
  $("run").dataset.seed = String(mcAnswer.seed);
  bars($("eval-bars"), labels, ev.probabilities, { top: ev.class_index });
  bars($("mc-bars"), labels, mc.mean_probabilities, {
    top: mc.class_index,
    extra: (i) => ` ± ${fixed(mc.std_probabilities[i], 3)}`,
  });
  bars($("votes-bars"), labels, mc.votes, { top: mc.class_index, digits: 0, scale: n });
  const answer = $("answer");
  answer.hidden = false;
  answer.dataset.run = String(ticket);
  setStatus(
    `Predicted ${mc.label}: agreement ${fixed(mc.agreement, 3)} over ${n} passes, ` +
      `mutual information ${fixed(mc.mutual_information, 4)} nats (${state.source}).`,
  );
}

// ---------------------------------------------------------------- inputs

async function analyze(pixels, source) {
  const ticket = ++state.ticket;
  state.pixels = pixels;
  state.source = source;
  $("rerun").disabled = false;
  clearError();
  const { samples, seed } = runSettings();
  setStatus(`Running ${samples ?? "the default number of"} passes on ${source}…`);
  try {
    const instances = [pixels];
    const [evalAnswer, mcAnswer] = await Promise.all([
      postJSON("/predict", { instances }),
      postJSON("/uncertainty", { instances, samples, seed }),
    ]);
    if (ticket === state.ticket) render(ticket, evalAnswer, mcAnswer);
  } catch (error) {
    if (ticket === state.ticket) {
      showError(error);
      setStatus("No result.");
    }
  }
}

async function analyzeImage(blob, filename, source) {
  const ticket = ++state.ticket;
  clearError();
  setStatus(`Converting ${source}…`);
  try {
    const form = new FormData();
    form.append("file", blob, filename);
    const body = await api(modelPath("/preprocess/image"), {
      method: "POST",
      headers: headers(),
      body: form,
    });
    if (ticket !== state.ticket) return;
    const note = `${body.format} ${body.width} x ${body.height}` +
      (body.inverted ? ", light background, so inverted" : "");
    await analyze(body.pixels, `${source} (${note})`);
  } catch (error) {
    if (ticket === state.ticket) {
      showError(error);
      setStatus("No result.");
    }
  }
}

function onFile() {
  const file = $("file").files[0];
  if (file && state.card) analyzeImage(file, file.name, `the upload ${file.name}`);
}

function exampleSource(example) {
  return `test image #${example.index} (true class: ${state.labels[example.label]})`;
}

function onRandom() {
  if (!state.examples.length || !state.card) return;
  const example = state.examples[Math.floor(Math.random() * state.examples.length)];
  analyze(example.pixels, exampleSource(example));
}

// ---------------------------------------------------------------- drawing

const pen = { x: 140, y: 140, down: false, drawing: false, timer: 0 };

function drawContext() {
  const context = $("draw").getContext("2d");
  context.strokeStyle = "#fff";
  context.fillStyle = "#fff";
  context.lineWidth = 22;
  context.lineCap = "round";
  context.lineJoin = "round";
  return context;
}

function clearCanvas() {
  const context = $("draw").getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, 280, 280);
}

function line(x0, y0, x1, y1) {
  const context = drawContext();
  context.beginPath();
  context.moveTo(x0, y0);
  context.lineTo(x1, y1);
  context.stroke();
}

function canvasPoint(event) {
  const canvas = $("draw");
  const box = canvas.getBoundingClientRect();
  return {
    x: ((event.clientX - box.left) / box.width) * canvas.width,
    y: ((event.clientY - box.top) / box.height) * canvas.height,
  };
}

function classifyDrawing() {
  clearTimeout(pen.timer);
  if (!state.card) return;
  $("draw").toBlob((blob) => analyzeImage(blob, "drawing.png", "the drawing"), "image/png");
}

function classifySoon() {
  clearTimeout(pen.timer);
  pen.timer = setTimeout(classifyDrawing, 250);
}

function setupDrawing() {
  const canvas = $("draw");
  clearCanvas();
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    pen.drawing = true;
    Object.assign(pen, canvasPoint(event));
    line(pen.x, pen.y, pen.x, pen.y);
    event.preventDefault();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!pen.drawing) return;
    const point = canvasPoint(event);
    line(pen.x, pen.y, point.x, point.y);
    Object.assign(pen, point);
  });
  const end = () => {
    if (!pen.drawing) return;
    pen.drawing = false;
    classifySoon();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  const steps = { ArrowLeft: [-10, 0], ArrowRight: [10, 0], ArrowUp: [0, -10], ArrowDown: [0, 10] };
  canvas.addEventListener("keydown", (event) => {
    if (event.key in steps) {
      const [dx, dy] = steps[event.key];
      const x = Math.max(0, Math.min(280, pen.x + dx));
      const y = Math.max(0, Math.min(280, pen.y + dy));
      if (pen.down) line(pen.x, pen.y, x, y);
      Object.assign(pen, { x, y });
    } else if (event.key === " ") {
      pen.down = !pen.down;
      if (pen.down) line(pen.x, pen.y, pen.x, pen.y);
      else classifySoon();
    } else if (event.key === "Enter") {
      classifyDrawing();
    } else {
      return;
    }
    event.preventDefault();
    $("draw-hint").dataset.pen = `${pen.down ? "down" : "up"} at ${pen.x}, ${pen.y}`;
  });
  $("clear").addEventListener("click", clearCanvas);
  $("analyze-drawing").addEventListener("click", classifyDrawing);
}

// ---------------------------------------------------------------- the gallery

async function loadExamples() {
  const body = await api("/static/examples.json");
  const bytes = Uint8Array.from(atob(body.pixels_base64), (c) => c.charCodeAt(0));
  state.labels = body.labels;
  state.examples = body.indices.map((index, i) => {
    const pixels = Array.from(bytes.subarray(i * SIDE * SIDE, (i + 1) * SIDE * SIDE), (v) => v / 255);
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = SIDE;
    drawPixels(canvas, pixels);
    return { index, label: body.classes[i], pixels, thumbnail: canvas.toDataURL() };
  });
}

async function computeGallery() {
  if (!state.card || !state.examples.length) return;
  const ticket = ++state.galleryTicket;
  const { samples, seed } = runSettings();
  const status = $("gallery-status");
  status.textContent = `Computing ${state.examples.length} test images…`;
  $("gallery").dataset.ready = "false";
  const answers = new Array(state.examples.length);
  let next = 0;
  // One image a request (any instance limit allows it); the service's batcher merges them.
  async function worker() {
    while (next < state.examples.length) {
      const i = next++;
      const body = await postJSON("/uncertainty", {
        instances: [state.examples[i].pixels],
        samples,
        seed,
      });
      answers[i] = body.predictions[0];
    }
  }
  try {
    await Promise.all(Array.from({ length: 6 }, worker)); // a browser's connections per host
  } catch (error) {
    if (ticket === state.galleryTicket) status.textContent = `Error ${error.message}`;
    return;
  }
  if (ticket !== state.galleryTicket) return;
  const order = state.examples.map((_, i) => i);
  order.sort(
    (a, b) =>
      answers[a].agreement - answers[b].agreement ||
      answers[b].predictive_entropy - answers[a].predictive_entropy ||
      a - b,
  );
  const list = $("gallery");
  list.replaceChildren(
    ...order.map((i) => {
      const example = state.examples[i];
      const answer = answers[i];
      const right = answer.class_index === example.label;
      const item = document.createElement("li");
      item.dataset.agreement = String(answer.agreement);
      item.dataset.index = String(example.index);
      const button = document.createElement("button");
      button.type = "button";
      const image = document.createElement("img");
      image.src = example.thumbnail;
      image.alt = "";
      image.width = image.height = 56;
      const caption = document.createElement("span");
      const mark = right ? "✓" : `✗ (a ${state.labels[example.label]})`;
      caption.textContent =
        `#${example.index}: ${answer.label} ${mark}, agreement ${fixed(answer.agreement, 2)}`;
      button.setAttribute(
        "aria-label",
        `Test image ${example.index}, a ${state.labels[example.label]}: predicted ` +
          `${answer.label}, agreement ${fixed(answer.agreement, 2)}`,
      );
      button.addEventListener("click", () => analyze(example.pixels, exampleSource(example)));
      button.append(image, caption);
      item.append(button);
      return item;
    }),
  );
  list.dataset.ready = "true";
  const passes = samples ?? state.card.samples.default;
  const seeded = seed === null ? "random seeds" : `seed ${seed}`;
  status.textContent = `${order.length} test images, ${passes} passes each, ${seeded}, most uncertain first.`;
}

// ---------------------------------------------------------------- models

function setCard(card) {
  const samples = $("samples");
  // A new model brings its default N; the same one keeps what was typed.
  if (state.card?.name !== card.name || samples.value === "") {
    samples.value = String(card.samples.default);
  }
  state.card = card;
  samples.max = String(card.samples.maximum);
  $("samples-hint").textContent =
    `stochastic forward passes with dropout on; 1 to ${card.samples.maximum}`;
}

// The model and N as chosen: the gallery is recomputed and the current image run again.
function apply(card) {
  setCard(card);
  computeGallery();
  if (state.pixels) analyze(state.pixels, state.source);
  else setStatus(`Model ${card.name} ready. Pick, upload or draw an image.`);
}

async function loadModels() {
  clearError();
  try {
    const { models } = await api("/v1/models", { headers: headers() });
    if (!models.length) throw new Error("no model is served");
    const select = $("model");
    const chosen = models.find((card) => card.name === state.card?.name) ?? models[0];
    select.replaceChildren(
      ...models.map((card) => new Option(`${card.name} (${card.version})`, card.name)),
    );
    select.value = chosen.name;
    select.onchange = () => apply(models.find((card) => card.name === select.value));
    apply(chosen);
  } catch (error) {
    showError(error);
  }
}

async function init() {
  $("seed").max = String(Number.MAX_SAFE_INTEGER);
  setupDrawing();
  $("file").addEventListener("change", onFile);
  $("random").addEventListener("click", onRandom);
  $("rerun").addEventListener("click", () => state.pixels && analyze(state.pixels, state.source));
  $("settings").addEventListener("submit", (event) => {
    event.preventDefault();
    loadModels();
  });
  $("gallery-refresh").addEventListener("click", computeGallery);
  try {
    await loadExamples();
  } catch (error) {
    $("gallery-status").textContent = `No test images: ${error.message}`;
  }
  await loadModels();
}

document.addEventListener("DOMContentLoaded", init);
