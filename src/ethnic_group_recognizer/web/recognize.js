// The Recognize page: take a photo (drop, pick, paste, gallery), downscale it, send it, and show the
// answer with result.js (shared with the in-browser page): a label, a set or "none of these".
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const HISTORY_KEY = "egr-history";
  const HISTORY_MAX = 12;
  let busy = false;
  let serverExamples = false;

  /** The model's facts (input size, upload limit, names); neutral until /api/v1/model answers. */
  let info = EGR.describe(null);
  /** Photos are sent at twice the model's input scale (short side), enough for every crop it takes. */
  const FALLBACK_SHORT_SIDE = 640;
  const JPEG_QUALITY = 0.92;

  // ---- input ---------------------------------------------------------------------------
  function setup() {
    const dropzone = $("dropzone");
    if (window.matchMedia && window.matchMedia("(pointer: coarse)").matches) {
      // A phone or tablet has no keyboard to paste with and nothing to drag from.
      $("drop-text").textContent = "Take a photo or choose one from this device:";
    }
    $("file").addEventListener("change", (event) => {
      const file = event.target.files && event.target.files[0];
      if (file) classify(file, file.name, true);
      event.target.value = "";
    });
    for (const name of ["dragenter", "dragover"]) {
      dropzone.addEventListener(name, (event) => {
        event.preventDefault();
        dropzone.classList.add("dragging");
      });
    }
    for (const name of ["dragleave", "drop"]) {
      dropzone.addEventListener(name, () => dropzone.classList.remove("dragging"));
    }
    dropzone.addEventListener("drop", (event) => {
      event.preventDefault();
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (file) classify(file, file.name, true);
      else showError("nothing to classify: drop an image file");
    });
    document.addEventListener("paste", (event) => {
      const items = (event.clipboardData && event.clipboardData.items) || [];
      for (const item of items) {
        if (item.kind === "file") {
          const file = item.getAsFile();
          if (file) {
            event.preventDefault();
            classify(file, "pasted image", true);
            return;
          }
        }
      }
    });
    $("show-heatmap").addEventListener("change", () => {
      $("heatmap").hidden = !$("show-heatmap").checked;
    });
    $("forget").addEventListener("click", () => {
      localStorage.removeItem(HISTORY_KEY);
      renderHistory();
    });
    EGR.model()
      .then((model) => {
        info = EGR.describe(model);
        EGRResult.showThreshold(info);
        const limit = info.maxUploadBytes ? ` The server accepts at most ${EGR.mebibytes(info.maxUploadBytes)}.` : "";
        $("size-hint").textContent =
          `Larger photos are made smaller in this browser (${targetShortSide()} px on the short side) ` +
          `before they are sent.${limit}`;
      })
      .catch(() => {});
    loadGallery();
  }

  // ---- downscale before sending ------------------------------------------------------------
  function targetShortSide() {
    return info.inputSize ? 2 * info.inputSize : FALLBACK_SHORT_SIDE;
  }

  /**
   * The photo as it should be sent: unchanged when it is small enough, else drawn on a canvas with
   * its short side at twice the model's input size and encoded as JPEG (a 19 MB phone photo becomes
   * a few hundred kB). A format this browser cannot draw (TIFF) is sent as it is.
   */
  async function prepareUpload(blob) {
    const target = targetShortSide();
    let bitmap;
    try {
      bitmap = await createImageBitmap(blob);
    } catch (error) {
      return { blob, resized: null };
    }
    const width = bitmap.width;
    const height = bitmap.height;
    const shortSide = Math.min(width, height);
    const tooLarge = info.maxUploadBytes !== null && blob.size > info.maxUploadBytes;
    if (shortSide <= target && !tooLarge) {
      bitmap.close();
      return { blob, resized: null };
    }
    const scale = Math.min(1, target / shortSide);
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(width * scale));
    canvas.height = Math.max(1, Math.round(height * scale));
    const context = canvas.getContext("2d");
    context.fillStyle = "#ffffff"; // JPEG has no transparency: show it as white, not black
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.imageSmoothingQuality = "high";
    context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    const jpeg = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
    if (!jpeg) return { blob, resized: null };
    return { blob: jpeg, resized: { from: [width, height], to: [canvas.width, canvas.height] } };
  }

  // ---- classify --------------------------------------------------------------------------
  async function classify(blob, name, remember) {
    if (busy) return;
    busy = true;
    hideError();
    $("status").textContent = `Classifying ${name}…`;
    $("result").hidden = true;
    EGRResult.showPreview(blob, name);
    const explain = $("explain").checked;
    try {
      await EGR.model().catch(() => null); // the input size and limit, when the server gives them
      const upload = await prepareUpload(blob);
      if (info.maxUploadBytes !== null && upload.blob.size > info.maxUploadBytes) {
        throw new Error(
          `the photo is ${EGR.mebibytes(upload.blob.size)}; the server accepts at most ${EGR.mebibytes(info.maxUploadBytes)}`,
        );
      }
      const form = new FormData();
      form.append("image", upload.blob, upload.resized ? "photo.jpg" : name);
      const result = await EGR.request(`/api/v1/predict${explain ? "?explain=true" : ""}`, {
        method: "POST",
        body: form,
      });
      renderResult(result, name);
      const reduced = upload.resized
        ? ` (sent at ${upload.resized.to.join(" × ")} px, reduced from ${upload.resized.from.join(" × ")} px)`
        : "";
      $("status").textContent = `Classified ${name}${reduced}.`;
      revealResult();
      if (remember) remember_(blob, result);
    } catch (error) {
      $("preview-figure").hidden = true;
      $("heatmap-toggle-row").hidden = true;
      $("heatmap-legend").hidden = true;
      $("status").textContent = "";
      showError(`Could not classify ${name}: ${error.message}`);
    } finally {
      busy = false;
    }
  }

  /** On a narrow screen the result is below the photo: bring it into view unless it already is. */
  function revealResult() {
    const panel = $("result");
    const top = panel.getBoundingClientRect().top;
    if (top >= 0 && top < window.innerHeight * 0.5) return;
    const reduce = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    panel.scrollIntoView({ behavior: reduce ? "auto" : "smooth", block: "start" });
  }

  // ---- the result (drawn by result.js, shared with the in-browser page) -----------------------
  /** Show one /api/v1/predict response (exposed as Recognize.renderResult for the page's tests). */
  function renderResult(result, name) {
    EGRResult.render(result, name, info);
    const heatmap = $("heatmap");
    if (result.explanation) {
      heatmap.src = result.explanation.heatmap_png;
      heatmap.alt =
        `Heatmap over ${name}: red regions are those the score for ${result.explanation.label} depends on most ` +
        `(computed in ${Math.round(result.explanation.milliseconds)} ms).`;
      heatmap.hidden = !$("show-heatmap").checked;
      $("heatmap-label").textContent = result.explanation.label;
      $("heatmap-toggle-row").hidden = false;
      $("heatmap-legend").hidden = false;
    } else {
      $("heatmap-legend").hidden = true;
    }
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

  // ---- gallery: the server's examples, else this browser's own history ---------------------
  async function loadGallery() {
    let examples = [];
    let unreachable = null;
    try {
      examples = (await EGR.request("/api/v1/examples")).examples || [];
    } catch (error) {
      examples = [];
      if (error.unreachable) unreachable = error.message;
    }
    serverExamples = examples.length > 0;
    if (unreachable) {
      renderHistory(`No example photos: ${unreachable}`);
      return;
    }
    if (serverExamples) {
      $("gallery-note").textContent = "Example photos from the server. Click one to classify it.";
      const gallery = $("gallery");
      gallery.innerHTML = "";
      for (const example of examples) {
        const url = EGR.api(example.url);
        const what = example.label ? `a photo from the ${example.label} examples` : "an example photo";
        gallery.append(
          galleryItem(url, `Classify ${what} (${example.name})`, example.label || "example", async () => {
            try {
              const response = await fetch(url);
              if (!response.ok) throw new Error(`HTTP ${response.status}`);
              classify(await response.blob(), example.name, false);
            } catch (error) {
              showError(`Could not load the example ${example.name}: ${error.message}`);
            }
          }),
        );
      }
    } else {
      renderHistory();
    }
  }

  function galleryItem(src, alt, caption, onClick) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "thumb";
    const img = document.createElement("img");
    img.src = src;
    img.alt = alt;
    img.loading = "lazy";
    const text = document.createElement("span");
    text.textContent = caption;
    button.append(img, text);
    button.addEventListener("click", onClick);
    item.append(button);
    return item;
  }

  function history() {
    try {
      return JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
    } catch (error) {
      return [];
    }
  }

  /** This browser's own earlier photos; ``problem`` (why the server's examples are missing) comes first. */
  function renderHistory(problem) {
    const items = history();
    const gallery = $("gallery");
    gallery.innerHTML = "";
    const own = items.length
      ? "Photos you classified in this browser (small copies kept only in this browser, never on the server). Click one to classify it again."
      : `${problem ? "" : "No example photos on this server. "}Photos you classify will appear here, kept only in this browser.`;
    $("gallery-note").textContent = problem ? `${problem} ${own}` : own;
    $("forget").hidden = !items.length;
    for (const entry of items) {
      gallery.append(
        galleryItem(entry.thumb, `Classify again: your earlier photo, labelled ${entry.display}`, entry.display, async () => {
          const blob = await (await fetch(entry.thumb)).blob();
          classify(blob, "earlier photo", false);
        }),
      );
    }
  }

  /** Keep a 224 px copy of the photo and its result in localStorage (this browser only). */
  function remember_(blob, result) {
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.onload = () => {
      const scale = Math.min(1, 224 / Math.max(img.naturalWidth, img.naturalHeight));
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(32, Math.round(img.naturalWidth * scale));
      canvas.height = Math.max(32, Math.round(img.naturalHeight * scale));
      canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
      URL.revokeObjectURL(url);
      const entry = { thumb: canvas.toDataURL("image/jpeg", 0.8), display: EGRResult.shortAnswer(result, info), time: Date.now() };
      const items = [entry, ...history()].slice(0, HISTORY_MAX);
      try {
        localStorage.setItem(HISTORY_KEY, JSON.stringify(items));
      } catch (error) {
        return; // storage full or disabled: the gallery simply stays as it is
      }
      if (!serverExamples) renderHistory();
    };
    img.onerror = () => URL.revokeObjectURL(url);
    img.src = url;
  }

  window.Recognize = { renderResult, prepareUpload };
  document.addEventListener("DOMContentLoaded", setup);
})();
