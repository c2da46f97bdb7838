// The in-browser model: downloads the runtime and the model once (kept in this browser's cache),
// then classifies and explains photos off the page's thread, so the page stays responsive.
// Messages in: {type: "init"} | {type: "classify", id, width, height, rgba} | {type: "explain", id}.
// Messages out: {type: "progress" | "ready" | "result" | "explain-progress" | "explanation" | "error"}.
import * as ort from "../ort/ort.wasm.min.mjs";
import { averageViews, argmax, decide, modelFacts, occlusionBoxes } from "./decide.js";
import { gaussianBlur, rgbaToRgbOnWhite, toTensor } from "./pillow.js";
import { renderViews } from "./views.js";

const ROOT = new URL("../", import.meta.url);
const CACHE_NAME = "egr-in-browser";
let session = null;
let facts = null;
let site = null;
let current = null; // the last photo's full view, resized: {id, rgb}
let queue = Promise.resolve();

const post = (message, transfer) => self.postMessage(message, transfer || []);

/** Bytes of ``path`` (relative to the site), from this browser's cache or the network, with progress. */
async function download(path, version, expected, onProgress) {
  const url = new URL(path, ROOT);
  url.searchParams.set("v", version); // a new model or runtime gets a new cache entry
  let cache = null;
  try {
    cache = self.caches ? await self.caches.open(CACHE_NAME) : null;
  } catch (error) {
    cache = null; // storage disabled: the HTTP cache still helps
  }
  const hit = cache ? await cache.match(url.href) : null;
  if (hit) {
    const bytes = new Uint8Array(await hit.arrayBuffer());
    if (bytes.length === expected) {
      onProgress(bytes.length, true);
      return bytes;
    }
  }
  const response = await fetch(url.href);
  if (!response.ok) throw new Error(`could not download ${path}: HTTP ${response.status}`);
  const reader = response.body.getReader();
  const bytes = new Uint8Array(expected);
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.length > expected) throw new Error(`${path} is larger than the site says (${expected} bytes)`);
    bytes.set(value, loaded);
    loaded += value.length;
    onProgress(loaded, false);
  }
  if (loaded !== expected) throw new Error(`${path} ended after ${loaded} of ${expected} bytes`);
  if (cache) {
    try {
      for (const key of await cache.keys()) {
        const old = new URL(key.url);
        if (old.pathname === url.pathname && old.search !== url.search) await cache.delete(key);
      }
      await cache.put(url.href, new Response(bytes, { headers: { "content-type": "application/octet-stream" } }));
    } catch (error) {
      // Quota or private mode: the next visit downloads again.
    }
  }
  return bytes;
}

async function init() {
  site = await (await fetch(new URL("site.json", ROOT))).json();
  const [labels, metadata] = await Promise.all(
    [site.model.labels, site.model.metadata].map(async (path) => (await fetch(new URL(path, ROOT))).json()),
  );
  facts = modelFacts(labels, metadata, site);
  const parts = [site.runtime.wasm, site.model.file];
  const total = parts.reduce((sum, part) => sum + part.bytes, 0);
  const loaded = parts.map(() => 0);
  let fromCache = true;
  const progress = (index) => (bytes, cached) => {
    loaded[index] = bytes;
    fromCache = fromCache && cached;
    post({ type: "progress", loaded: loaded.reduce((a, b) => a + b, 0), total });
  };
  const [wasm, model] = await Promise.all(
    parts.map((part, index) => download(part.path, part.sha256.slice(0, 16), part.bytes, progress(index))),
  );
  ort.env.wasm.wasmPaths = new URL(site.runtime.directory, ROOT).href;
  ort.env.wasm.wasmBinary = wasm.buffer;
  // Threads need a cross-origin-isolated page (COOP/COEP headers), which static hosts such as
  // GitHub Pages do not send; then the runtime runs on one thread.
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  ort.env.wasm.proxy = false;
  const started = performance.now();
  session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  post({
    type: "ready",
    fromCache,
    threads: ort.env.wasm.numThreads,
    sessionMs: performance.now() - started,
    threshold: facts.threshold,
    tta: facts.tta,
    views: facts.views.length,
  });
}

/**
 * Run the model on ``count`` inputs of ``views`` views each (Recognizer.run); one probability row
 * per input. A format-2 graph takes [count, views, 3, S, S] and averages the views inside; a
 * format-1 graph takes one view a row, [count * views, 3, S, S], and its rows are averaged here.
 */
async function run(pixels, count, views = 1) {
  const size = facts.imageSize;
  const rowsIn = facts.viewsInGraph ? count : count * views;
  const dims = facts.viewsInGraph ? [count, views, 3, size, size] : [rowsIn, 3, size, size];
  const output = await session.run({ pixels: new ort.Tensor("float32", pixels, dims) }, ["probabilities"]);
  const flat = output.probabilities.data;
  const width = flat.length / rowsIn;
  const rows = [];
  for (let i = 0; i < rowsIn; i++) rows.push(flat.slice(i * width, (i + 1) * width));
  if (facts.viewsInGraph || views === 1) return rows;
  const averaged = [];
  for (let i = 0; i < count; i++) averaged.push(averageViews(rows.slice(i * views, (i + 1) * views)));
  return averaged;
}

async function classify({ id, width, height, rgba }) {
  const started = performance.now();
  const size = facts.imageSize;
  const rgb = rgbaToRgbOnWhite(new Uint8Array(rgba));
  const { pixels, full } = renderViews(rgb, width, height, facts.views, size);
  current = { id, rgb: full };
  // All views of the photo in one session.run, as Python sends them.
  const probabilities = Float32Array.from((await run(pixels, 1, facts.views.length))[0]);
  post({
    type: "result",
    id,
    prediction: decide(probabilities, facts),
    probabilities: Array.from(probabilities),
    milliseconds: performance.now() - started,
  });
}

/** explain._occlude: blur one window of the photo at a time, record the drop in the label's probability. */
async function explain({ id, grid, label }) {
  if (!current || current.id !== id) throw new Error("no photo to explain: classify one first");
  const started = performance.now();
  const size = facts.imageSize;
  const plane = 3 * size * size;
  const pixels = toTensor(current.rgb, size);
  const base = (await run(pixels, 1))[0];
  const k = facts.labels.length;
  const index = label ? facts.labels.indexOf(label) : argmax(base, k);
  if (index < 0) throw new Error(`unknown label ${label}`);
  const cell = size / grid;
  const blurred = toTensor(gaussianBlur(current.rgb, size, size, cell / 2), size);
  const boxes = occlusionBoxes(size, grid);
  const drops = new Float32Array(boxes.length);
  for (let start = 0; start < boxes.length; start += grid) {
    const chunk = boxes.slice(start, start + grid);
    const batch = new Float32Array(chunk.length * plane);
    chunk.forEach(([y0, y1, x0, x1], i) => {
      batch.set(pixels, i * plane);
      for (let c = 0; c < 3; c++) {
        for (let y = y0; y < y1; y++) {
          const at = c * size * size + y * size;
          batch.set(blurred.subarray(at + x0, at + x1), i * plane + at + x0);
        }
      }
    });
    const rows = await run(batch, chunk.length);
    rows.forEach((row, i) => {
      drops[start + i] = Math.fround(base[index] - row[index]);
    });
    post({ type: "explain-progress", id, done: start + chunk.length, total: boxes.length });
  }
  const heatmap = [];
  for (let row = 0; row < grid; row++) heatmap.push(Array.from(drops.subarray(row * grid, (row + 1) * grid)));
  post({
    type: "explanation",
    id,
    label: facts.labels[index],
    grid,
    heatmap,
    base_probability: base[index],
    milliseconds: performance.now() - started,
  });
}

const handlers = { init, classify, explain };

self.onmessage = ({ data }) => {
  // One job at a time, in order: a photo's explanation never mixes with the next photo.
  queue = queue.then(async () => {
    try {
      await handlers[data.type](data);
    } catch (error) {
      post({ type: "error", id: data.id, during: data.type, message: String((error && error.message) || error) });
    }
  });
};
