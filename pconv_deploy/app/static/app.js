// pconv app: open a photo, paint the hole, inpaint with every served model, compare.
// The mask sent is exactly the one "Download mask" saves: white (255) = hole, black = known, opaque.
"use strict";

const $ = (id) => document.getElementById(id);
const MASK_COLOUR = "rgb(255, 40, 90)";
const DECODE = { colorSpaceConversion: "none", premultiplyAlpha: "none" }; // raw pixel values

const state = {
  models: [], maxUpload: 0, photo: null, actions: [], stroke: null, tool: "brush", busy: false, urls: [],
};

function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = text ? kind : "";
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return `HTTP ${response.status} ${response.statusText}`;
}

function formatBytes(n) {
  return n >= 2 ** 20 ? `${Math.round(n / 2 ** 20)} MiB` : `${Math.round(n / 1024)} KiB`;
}

// --- models and examples -----------------------------------------------------------------------------------
async function loadModels() {
  const response = await fetch("/api/models");
  const info = await response.json();
  state.models = info.models;
  state.maxUpload = info.max_upload_bytes;
  const names = info.models.map((m) => `${m.name} (${m.backend})`).join(", ");
  $("models-line").textContent = `${info.models.length} model${info.models.length > 1 ? "s" : ""}: ${names}`;
  for (const name of info.examples) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("examples").append(option);
  }
}

// --- the photo -----------------------------------------------------------------------------------------------
async function loadPhoto(blob, name) {
  if (state.busy) return;
  say("");
  if (blob.size > state.maxUpload) {
    say(`${name}: ${formatBytes(blob.size)} is over the upload limit of ${formatBytes(state.maxUpload)} (--max-upload)`);
    return;
  }
  const form = new FormData();
  form.append("image", blob, name);
  const response = await fetch("/api/check", { method: "POST", body: form });
  if (!response.ok) {
    say(await errorText(response));
    return;
  }
  const size = await response.json();
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob);
  } catch (e) {
    say(`${name}: the server reads it but this browser cannot show it; convert it to PNG or JPEG`);
    return;
  }
  if (bitmap.width !== size.width || bitmap.height !== size.height) {
    say(`${name}: the browser shows it as ${bitmap.width}x${bitmap.height}, the server reads ${size.width}x${size.height}`);
    return;
  }
  showPhoto(blob, name, bitmap);
}

function showPhoto(blob, name, bitmap) {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  state.photo = { blob, name, url, width: bitmap.width, height: bitmap.height };
  state.actions = [];
  for (const canvas of [$("photo-canvas"), $("mask-canvas")]) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  $("photo-canvas").getContext("2d").drawImage(bitmap, 0, 0);
  redrawMask();
  $("canvases").hidden = false;
  $("drop-hint").hidden = true;
  $("results").replaceChildren();
  $("inpaint").disabled = false;
  $("mask-canvas").dataset.ready = "1";
}

// --- painting the mask -----------------------------------------------------------------------------------------
function maskContext() {
  return $("mask-canvas").getContext("2d", { willReadFrequently: true });
}

function drawSegment(ctx, a, b, size, erase) {
  ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = MASK_COLOUR;
  ctx.lineWidth = size;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  if (a[0] === b[0] && a[1] === b[1]) {
    ctx.arc(a[0], a[1], size / 2, 0, 2 * Math.PI);
    ctx.fill();
  } else {
    ctx.moveTo(a[0], a[1]);
    ctx.lineTo(b[0], b[1]);
    ctx.stroke();
  }
}

function drawAction(ctx, action) {
  if (action.type === "image") {
    ctx.globalCompositeOperation = "source-over";
    ctx.drawImage(action.canvas, 0, 0);
    return;
  }
  const p = action.points;
  drawSegment(ctx, p[0], p[0], action.size, action.erase);
  for (let i = 1; i < p.length; i++) drawSegment(ctx, p[i - 1], p[i], action.size, action.erase);
}

function redrawMask() {
  const ctx = maskContext();
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  for (const action of state.actions) drawAction(ctx, action);
}

function photoPoint(event) {
  const canvas = $("mask-canvas");
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  return { point: [(event.clientX - box.left) * scale, (event.clientY - box.top) * scale], scale };
}

function startStroke(event) {
  if (!state.photo || state.busy || event.button !== 0) return;
  event.preventDefault();
  $("mask-canvas").setPointerCapture?.(event.pointerId);
  const { point, scale } = photoPoint(event);
  const size = Number($("brush-size").value) * scale;
  state.stroke = { type: "stroke", erase: state.tool === "eraser", size, points: [point] };
  state.actions.push(state.stroke);
  drawSegment(maskContext(), point, point, size, state.stroke.erase);
}

function moveStroke(event) {
  if (!state.stroke) return;
  const { point } = photoPoint(event);
  const points = state.stroke.points;
  drawSegment(maskContext(), points[points.length - 1], point, state.stroke.size, state.stroke.erase);
  points.push(point);
}

function endStroke() {
  state.stroke = null;
}

// The mask as the server reads it: opaque white where the paint covers at least half a pixel.
function maskImage() {
  const { width, height } = $("mask-canvas");
  const paint = maskContext().getImageData(0, 0, width, height).data;
  const out = new ImageData(width, height);
  let holes = 0;
  for (let i = 0; i < paint.length; i += 4) {
    const v = paint[i + 3] >= 128 ? 255 : 0;
    holes += v ? 1 : 0;
    out.data[i] = out.data[i + 1] = out.data[i + 2] = v;
    out.data[i + 3] = 255;
  }
  return { image: out, holes };
}

function maskBlob() {
  const { image, holes } = maskImage();
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.getContext("2d").putImageData(image, 0, 0);
  return new Promise((resolve) => canvas.toBlob((blob) => resolve({ blob, holes, image }), "image/png"));
}

async function loadMaskFile(file) {
  if (!state.photo) return say("open a photo before its mask");
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, DECODE);
  } catch (e) {
    return say(`${file.name}: not an image this browser can read`);
  }
  const { width, height } = state.photo;
  if (bitmap.width !== width || bitmap.height !== height) {
    return say(`mask ${file.name} is ${bitmap.width}x${bitmap.height} but the photo is ${width}x${height}: they must match`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const pixels = ctx.getImageData(0, 0, width, height);
  const d = pixels.data;
  let holes = 0;
  for (let i = 0; i < d.length; i += 4) {
    const hole = (299 * d[i] + 587 * d[i + 1] + 114 * d[i + 2]) / 1000 >= 128 && d[i + 3] >= 128;
    holes += hole ? 1 : 0;
    [d[i], d[i + 1], d[i + 2], d[i + 3]] = hole ? [255, 40, 90, 255] : [0, 0, 0, 0];
  }
  if (!holes) return say(`mask ${file.name} marks no hole (white = hole)`);
  ctx.putImageData(pixels, 0, 0);
  state.actions.push({ type: "image", canvas });
  redrawMask();
  say("");
}

async function downloadMask() {
  if (!state.photo) return say("open a photo first");
  const { blob } = await maskBlob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${stem(state.photo.name)}-mask.png`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

function stem(name) {
  return name.replace(/\.[^.]*$/, "") || "photo";
}

// --- inpainting ----------------------------------------------------------------------------------------------
function setBusy(busy) {
  state.busy = busy;
  for (const id of ["inpaint", "undo", "clear", "photo-file", "mask-file", "examples"]) $(id).disabled = busy;
  $("progress").hidden = !busy;
}

function watchProgress(index, started) {
  const text = $("progress-text");
  const bar = $("progress-bar");
  const tick = async () => {
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    let detail = "uploading";
    try {
      const p = await (await fetch("/api/progress")).json();
      if (p.busy && p.total) {
        bar.max = p.total;
        bar.value = p.done;
        detail = `${p.done}/${p.total} tiles`;
      } else {
        bar.removeAttribute("value");
      }
    } catch (e) { /* the next tick tries again */ }
    text.textContent = `model ${index + 1}/${state.models.length}: ${state.models[index].name}, ${detail}, ${seconds} s`;
  };
  tick();
  return setInterval(tick, 300);
}

async function inpaintAll() {
  if (!state.photo || state.busy) return;
  const mask = await maskBlob();
  if (!mask.holes) return say("paint over what should go first: the mask marks no hole");
  if (state.photo.blob.size + mask.blob.size > state.maxUpload) {
    return say(`the photo and mask are over the upload limit of ${formatBytes(state.maxUpload)} (--max-upload)`);
  }
  say("");
  setBusy(true);
  $("results").replaceChildren();
  const first = { pixels: null };
  try {
    for (let i = 0; i < state.models.length; i++) {
      const started = performance.now();
      const timer = watchProgress(i, started);
      let response;
      try {
        const form = new FormData();
        form.append("image", state.photo.blob, state.photo.name);
        form.append("mask", mask.blob, "mask.png");
        form.append("model", state.models[i].name);
        response = await fetch("/api/inpaint", { method: "POST", body: form });
      } finally {
        clearInterval(timer);
      }
      if (!response.ok) {
        say(`${state.models[i].name}: ${await errorText(response)}`);
        return;
      }
      const blob = await response.blob();
      const seconds = Number(response.headers.get("X-Pconv-Seconds"));
      await showResult(i, blob, seconds, (performance.now() - started) / 1000, mask, first);
    }
    say(`done: ${mask.holes.toLocaleString()} hole pixels`, "info");
  } catch (e) {
    say(`the request failed: ${e.message}`);
  } finally {
    setBusy(false);
  }
}

async function decodePixels(blob) {
  const bitmap = await createImageBitmap(blob, DECODE);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
}

async function showResult(index, blob, seconds, roundTrip, mask, first) {
  const model = state.models[index];
  const url = URL.createObjectURL(blob);
  state.urls.push(url);
  const card = document.createElement("div");
  card.className = "result";
  card.dataset.model = model.name;
  card.innerHTML = `
    <h2></h2>
    <div class="stats"></div>
    <div class="compare">
      <img class="before" alt="before"><img class="after" alt="after"><div class="divider"></div>
      <span class="tag before">before</span><span class="tag after">after</span>
    </div>
    <div class="row"><span>before</span><input type="range" class="slider" min="0" max="100" value="50"
      aria-label="before/after"><span>after</span><a class="download">Download PNG</a></div>`;
  card.querySelector("h2").textContent = model.name;
  card.querySelector("img.before").src = state.photo.url;
  card.querySelector("img.after").src = url;
  const link = card.querySelector("a.download");
  link.href = url;
  link.download = `${stem(state.photo.name)}-${model.name.replace(/[^\w.-]+/g, "_")}.png`;
  const slider = card.querySelector(".slider");
  const split = () => {
    // The result covers the right part: slide right for more "after", left for more "before".
    card.querySelector("img.after").style.clipPath = `inset(0 0 0 ${100 - slider.value}%)`;
    card.querySelector(".divider").style.left = `${100 - slider.value}%`;
  };
  slider.addEventListener("input", split);
  split();
  $("results").append(card);
  const stats = card.querySelector(".stats");
  stats.innerHTML = `${model.backend} · inference <b>${seconds.toFixed(2)} s</b> (round trip ${roundTrip.toFixed(2)} s)`;
  const pixels = await decodePixels(blob);
  if (index === 0) {
    if (state.models.length > 1) stats.innerHTML += " · the reference for the differences";
    first.pixels = pixels;
    first.name = model.name;
    return;
  }
  const { mad, heat } = holeDifference(first.pixels, pixels, mask.image);
  stats.dataset.mad = String(mad);
  stats.innerHTML += ` · hole mean |diff| vs ${escapeHtml(first.name)}: <b class="mad">${mad.toFixed(3)}</b> /255`;
  card.append(heat);
}

function escapeHtml(text) {
  const span = document.createElement("span");
  span.textContent = text;
  return span.innerHTML;
}

// Mean absolute difference over the hole's pixels and channels, and a heat map of it (outside: dimmed photo).
function holeDifference(a, b, mask) {
  const n = a.data.length / 4;
  const diff = new Float32Array(n);
  let sum = 0;
  let holes = 0;
  let peak = 1;
  for (let p = 0; p < n; p++) {
    if (!mask.data[4 * p]) continue;
    let d = 0;
    for (let c = 0; c < 3; c++) d += Math.abs(a.data[4 * p + c] - b.data[4 * p + c]);
    sum += d;
    holes += 1;
    diff[p] = d / 3;
    peak = Math.max(peak, diff[p]);
  }
  const heat = new ImageData(a.width, a.height);
  for (let p = 0; p < n; p++) {
    const o = 4 * p;
    if (mask.data[o]) {
      const t = diff[p] / peak;
      heat.data[o] = 255 * Math.min(1, 2 * t);
      heat.data[o + 1] = 255 * Math.max(0, 2 * t - 1);
      heat.data[o + 2] = 90 * (1 - t);
    } else {
      const grey = 0.25 * (0.299 * a.data[o] + 0.587 * a.data[o + 1] + 0.114 * a.data[o + 2]);
      heat.data[o] = heat.data[o + 1] = heat.data[o + 2] = grey;
    }
    heat.data[o + 3] = 255;
  }
  const box = document.createElement("div");
  box.className = "heat";
  const canvas = document.createElement("canvas");
  canvas.width = a.width;
  canvas.height = a.height;
  canvas.getContext("2d").putImageData(heat, 0, 0);
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = `|difference| inside the hole (black to yellow: 0 to ${peak.toFixed(1)} /255)`;
  box.append(canvas, caption);
  return { mad: holes ? sum / (3 * holes) : 0, heat: box };
}

// --- wiring ----------------------------------------------------------------------------------------------------
function setTool(tool) {
  state.tool = tool;
  $("tool-brush").classList.toggle("active", tool === "brush");
  $("tool-eraser").classList.toggle("active", tool === "eraser");
}

function wire() {
  $("photo-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) loadPhoto(file, file.name);
    e.target.value = "";
  });
  $("examples").addEventListener("change", async (e) => {
    const name = e.target.value;
    if (!name) return;
    const response = await fetch(`/api/examples/${encodeURIComponent(name)}`);
    if (!response.ok) return say(`${name}: ${await errorText(response)}`);
    await loadPhoto(await response.blob(), name);
  });
  $("mask-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) loadMaskFile(file);
    e.target.value = "";
  });
  const canvas = $("mask-canvas");
  canvas.addEventListener("pointerdown", startStroke);
  canvas.addEventListener("pointermove", moveStroke);
  for (const type of ["pointerup", "pointercancel", "pointerleave"]) canvas.addEventListener(type, endStroke);
  $("tool-brush").addEventListener("click", () => setTool("brush"));
  $("tool-eraser").addEventListener("click", () => setTool("eraser"));
  $("brush-size").addEventListener("input", (e) => { $("brush-size-value").textContent = e.target.value; });
  $("undo").addEventListener("click", () => { state.actions.pop(); redrawMask(); });
  $("clear").addEventListener("click", () => { state.actions = []; redrawMask(); });
  $("mask-download").addEventListener("click", downloadMask);
  $("inpaint").addEventListener("click", inpaintAll);
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type !== "range") return;
    if ((e.ctrlKey || e.metaKey) && e.key === "z") { state.actions.pop(); redrawMask(); e.preventDefault(); }
    else if (e.key === "b") setTool("brush");
    else if (e.key === "e") setTool("eraser");
  });
  const stage = $("stage");
  stage.addEventListener("dragover", (e) => { e.preventDefault(); stage.classList.add("dragging"); });
  stage.addEventListener("dragleave", () => stage.classList.remove("dragging"));
  stage.addEventListener("drop", (e) => {
    e.preventDefault();
    stage.classList.remove("dragging");
    const file = e.dataTransfer.files[0];
    if (file) loadPhoto(file, file.name);
  });
}

wire();
loadModels().catch((e) => say(`cannot list the models: ${e.message}`));
