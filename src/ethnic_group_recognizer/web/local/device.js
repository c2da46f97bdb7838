// The in-browser Recognize page: decode the photo here, hand its pixels to the model's Web Worker,
// show the result. Nothing leaves the device: the only requests go to this site's own files.
// The result is drawn by result.js, as on the API's page. The result element carries data-photo
// (the file's name), data-label (the top label, "" when the model abstains), data-prediction-set
// (JSON) and data-scores (JSON: every label's probability and "other"), for tests and integrations.

const $ = (id) => document.getElementById(id);
const ROOT = new URL("../", import.meta.url);
// A tiny module that uses a SIMD instruction: the runtime's WebAssembly build needs SIMD.
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 10, 1, 8, 0, 65, 0, 253, 15, 253, 98, 11]);

let site = null;
/** The model's own words (its "none of these", threshold, rule), as the API page reads them. */
let info = EGR.describe(null);
let worker = null;
let ready = null; // resolves when the model is loaded
let nextId = 0;
let currentId = 0;
let currentName = "";
let currentPhotoUrl = "";
const pending = new Map(); // id -> {resolve, reject, onProgress}

function setState(state) {
  document.documentElement.dataset.egrState = state;
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/** Why this browser cannot run the model, or "" when it can. */
function unsupportedReason() {
  if (typeof WebAssembly !== "object" || typeof WebAssembly.validate !== "function") {
    return "This browser has no WebAssembly (or it is turned off), which this page needs to run the model on your device.";
  }
  if (!WebAssembly.validate(SIMD_PROBE)) {
    return "This browser's WebAssembly lacks SIMD, which the model's runtime needs. A current Chrome, Edge, Firefox or Safari (16.4 or later) has it.";
  }
  if (typeof Worker !== "function" || typeof createImageBitmap !== "function") {
    return "This browser lacks Web Workers or createImageBitmap, which this page needs.";
  }
  return "";
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function hideError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// ---- the worker ----------------------------------------------------------------------------
function ask(message, transfer, onProgress) {
  const id = message.id ?? ++nextId;
  return new Promise((resolve, reject) => {
    pending.set(`${message.type}:${id}`, { resolve, reject, onProgress });
    worker.postMessage({ ...message, id }, transfer || []);
  });
}

function settle(key, value, failed) {
  const waiting = pending.get(key);
  if (!waiting) return;
  pending.delete(key);
  if (failed) waiting.reject(new Error(value));
  else waiting.resolve(value);
}

function onWorkerMessage({ data }) {
  switch (data.type) {
    case "progress": {
      const bar = $("download");
      bar.max = data.total;
      bar.value = data.loaded;
      $("download-text").textContent = `${megabytes(data.loaded)} of ${megabytes(data.total)}`;
      break;
    }
    case "ready":
      settle("init:0", data, false);
      break;
    case "result":
      settle(`classify:${data.id}`, data, false);
      break;
    case "explain-progress": {
      const waiting = pending.get(`explain:${data.id}`);
      if (waiting && waiting.onProgress) waiting.onProgress(data.done, data.total);
      break;
    }
    case "explanation":
      settle(`explain:${data.id}`, data, false);
      break;
    case "error":
      settle(`${data.during}:${data.during === "init" ? 0 : data.id}`, data.message, true);
      break;
    default:
      break;
  }
}

async function start() {
  site = await (await fetch(new URL("site.json", ROOT))).json();
  const modelBytes = site.model.file.bytes;
  const runtimeBytes = site.runtime.wasm.bytes;
  $("model-size").textContent =
    `The model (${site.model.name} ${site.model.version}, ${megabytes(modelBytes)}, ${site.model.weights} weights) ` +
    `and its runtime (onnxruntime-web ${site.runtime.version}, ${megabytes(runtimeBytes)}) are downloaded once ` +
    `from this site and kept by your browser; after that the page works offline.`;
  info = await EGR.modelInfo(); // api/model.json, written by the build: what /api/v1/model would say
  EGRResult.showThreshold(info);
  worker = new Worker(new URL("device-worker.js", import.meta.url), { type: "module" });
  worker.onmessage = onWorkerMessage;
  worker.onerror = (event) => {
    event.preventDefault();
    settle("init:0", `the model's worker failed to start (${event.message || "script error"})`, true);
  };
  ready = ask({ type: "init", id: 0 });
  setState("loading");
  $("download-text").textContent = "starting…";
  try {
    const loaded = await ready;
    $("download").value = $("download").max;
    $("download-text").textContent =
      `${loaded.fromCache ? "loaded from this browser's cache" : "downloaded"}; ready ` +
      `(${loaded.threads === 1 ? "one thread" : `${loaded.threads} threads`})`;
    setState("ready");
  } catch (error) {
    setState("error");
    $("download-text").textContent = "failed";
    showError(`Could not load the model: ${error.message}`);
  }
}

// ---- a photo ---------------------------------------------------------------------------------
/** Decode ``blob`` at its natural size (EXIF orientation applied, no colour conversion) to RGBA. */
async function decode(blob) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
      imageOrientation: "from-image",
    });
  } catch (error) {
    throw new Error("not an image this browser can read");
  }
  const { width, height } = bitmap;
  if (width * height > site.limits.max_pixels) {
    bitmap.close();
    throw new Error(
      `image too large: ${width}x${height} pixels is over the limit of ${site.limits.max_pixels.toLocaleString("en")} (possible decompression bomb)`,
    );
  }
  if (Math.min(width, height) < site.limits.min_side) {
    bitmap.close();
    throw new Error(`image too small: ${width}x${height} (need ${site.limits.min_side} px a side)`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = context.getImageData(0, 0, width, height).data;
  return { width, height, rgba };
}

async function classify(blob, name) {
  hideError();
  const id = ++nextId;
  currentId = id;
  currentName = name;
  $("status").textContent = `Classifying ${name} on this device…`;
  $("result").hidden = true;
  currentPhotoUrl = EGRResult.showPreview(blob, name);
  try {
    await ready;
    const { width, height, rgba } = await decode(blob);
    const result = await ask({ type: "classify", id, width, height, rgba: rgba.buffer }, [rgba.buffer]);
    if (id !== currentId) return;
    renderResult(result, name);
    $("result").dataset.milliseconds = String(Math.round(result.milliseconds));
    $("status").textContent = `Classified ${name} in ${Math.round(result.milliseconds)} ms, on this device.`;
    if ($("explain").checked) await explainSafely(id, name, result.prediction);
  } catch (error) {
    if (id !== currentId) return;
    $("preview-figure").hidden = true;
    $("heatmap-toggle-row").hidden = true;
    $("heatmap-legend").hidden = true;
    $("status").textContent = "";
    showError(`Could not classify ${name}: ${error.message}`);
  }
}

async function explain(id, name, prediction) {
  const grid = site.explain_grid;
  $("status").textContent = `Explaining ${name}: 0 of ${grid * grid} regions…`;
  const explanation = await ask({ type: "explain", id, grid }, [], (done, total) => {
    if (id === currentId) $("status").textContent = `Explaining ${name}: ${done} of ${total} regions…`;
  });
  if (id !== currentId) return;
  $("result").dataset.heatmap = JSON.stringify({ label: explanation.label, grid, heatmap: explanation.heatmap });
  $("result").dataset.explained = name;
  const heatmap = $("heatmap");
  heatmap.src = await overlay(currentPhotoUrl, explanation.heatmap);
  heatmap.alt =
    `Heatmap over ${name}: red regions are those the score for ${explanation.label} depends on most ` +
    `(computed on this device in ${(explanation.milliseconds / 1000).toFixed(1)} s).`;
  heatmap.hidden = !$("show-heatmap").checked;
  $("heatmap-label").textContent = explanation.label;
  $("heatmap-toggle-row").hidden = false;
  $("heatmap-legend").hidden = false;
  $("status").textContent =
    `Classified and explained ${name}, on this device` + (prediction.abstained ? " (explaining the closest label)." : ".");
}

/** explain.render_overlay: the positive drops, scaled from least to most, yellow to red over the dimmed photo. */
async function overlay(photoUrl, heatmap) {
  const image = new Image();
  image.src = photoUrl;
  await image.decode();
  const scale = Math.min(1, site.overlay_max_side / Math.max(image.naturalWidth, image.naturalHeight));
  const width = Math.max(1, Math.round(image.naturalWidth * scale));
  const height = Math.max(1, Math.round(image.naturalHeight * scale));
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0, width, height);
  const pixels = context.getImageData(0, 0, width, height);
  const grid = heatmap.length;
  const positive = heatmap.flat().map((v) => Math.max(0, v));
  const low = Math.min(...positive);
  const top = Math.max(...positive);
  const norm = positive.map((v) => (top - low > 1e-6 ? (v - low) / (top - low) : 0));
  const at = (r, c) => norm[Math.min(grid - 1, Math.max(0, r)) * grid + Math.min(grid - 1, Math.max(0, c))];
  for (let y = 0; y < height; y++) {
    const gy = ((y + 0.5) / height) * grid - 0.5;
    const r0 = Math.floor(gy);
    const fy = gy - r0;
    for (let x = 0; x < width; x++) {
      const gx = ((x + 0.5) / width) * grid - 0.5;
      const c0 = Math.floor(gx);
      const fx = gx - c0;
      const heat = Math.min(1, Math.max(0,
        (at(r0, c0) * (1 - fx) + at(r0, c0 + 1) * fx) * (1 - fy) + (at(r0 + 1, c0) * (1 - fx) + at(r0 + 1, c0 + 1) * fx) * fy));
      const alpha = 0.65 * heat;
      const colour = [255 * (1 - heat) + 215 * heat, 215 * (1 - heat) + 25 * heat, 32 * heat];
      const i = (y * width + x) * 4;
      for (let c = 0; c < 3; c++) pixels.data[i + c] = pixels.data[i + c] * 0.85 * (1 - alpha) + colour[c] * alpha;
    }
  }
  context.putImageData(pixels, 0, 0);
  return canvas.toDataURL("image/png");
}

/**
 * Show the worker's answer with the API page's own renderer (result.js): the prediction has the
 * /api/v1/predict shape (local/decide.js). data-scores adds every probability, "other" included.
 */
function renderResult(result, name) {
  const prediction = result.prediction;
  EGRResult.render(prediction, name, info);
  const element = $("result");
  element.dataset.scores = JSON.stringify(
    Object.fromEntries([...prediction.scores.map((s) => [s.label, s.probability]), ["other", prediction.abstain_probability]]),
  );
  delete element.dataset.heatmap;
  delete element.dataset.explained;
}

// ---- input -------------------------------------------------------------------------------------
function setupInput() {
  const dropzone = $("dropzone");
  $("file").addEventListener("change", (event) => {
    const file = event.target.files && event.target.files[0];
    if (file) classify(file, file.name);
    event.target.value = "";
  });
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) dropzone.addEventListener(name, () => dropzone.classList.remove("dragging"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) classify(file, file.name);
    else showError("nothing to classify: drop an image file");
  });
  document.addEventListener("paste", (event) => {
    for (const item of (event.clipboardData && event.clipboardData.items) || []) {
      const file = item.kind === "file" ? item.getAsFile() : null;
      if (file) {
        event.preventDefault();
        classify(file, "pasted image");
        return;
      }
    }
  });
  $("show-heatmap").addEventListener("change", () => {
    $("heatmap").hidden = !$("show-heatmap").checked;
  });
  $("explain").addEventListener("change", () => {
    const element = $("result");
    if ($("explain").checked && !element.hidden && element.dataset.photo === currentName && !element.dataset.explained) {
      const id = currentId;
      explainSafely(id, currentName, { abstained: element.dataset.label === "" });
    }
  });
}

async function explainSafely(id, name, prediction) {
  try {
    await explain(id, name, prediction);
  } catch (error) {
    if (id !== currentId) return;
    $("status").textContent = `Classified ${name}; the heatmap failed.`;
    showError(`Could not explain ${name}: ${error.message}`);
  }
}

function main() {
  const reason = unsupportedReason();
  if (reason) {
    setState("unsupported");
    const box = $("unsupported");
    box.textContent = `${reason} Nothing was downloaded. The same recognizer is available as a web service (see the project's README).`;
    box.hidden = false;
    $("file").disabled = true;
    $("download-text").textContent = "not available in this browser";
    return;
  }
  setupInput();
  start().catch((error) => {
    setState("error");
    showError(`Could not start: ${error.message}`);
  });
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
else main();
