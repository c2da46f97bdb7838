// The Recognize page: take a photo (drop, pick, paste, gallery), send it, show ranked labels.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const HISTORY_KEY = "egr-history";
  const HISTORY_MAX = 12;
  let busy = false;
  let serverExamples = false;

  // ---- input ---------------------------------------------------------------------------
  function setup() {
    const dropzone = $("dropzone");
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
    EGR.request("/api/v1/model")
      .then((model) => {
        $("threshold").textContent = `${EGR.percent(model.threshold)} (its calibrated threshold)`;
      })
      .catch(() => {});
    loadGallery();
  }

  // ---- classify --------------------------------------------------------------------------
  async function classify(blob, name, remember) {
    if (busy) return;
    busy = true;
    hideError();
    $("status").textContent = `Classifying ${name}…`;
    $("result").hidden = true;
    showPreview(blob, name);
    const form = new FormData();
    form.append("image", blob, name);
    const explain = $("explain").checked;
    try {
      const result = await EGR.request(`/api/v1/predict${explain ? "?explain=true" : ""}`, {
        method: "POST",
        body: form,
      });
      renderResult(result, name);
      $("status").textContent = `Classified ${name}.`;
      if (remember) remember_(blob, result);
    } catch (error) {
      $("preview-figure").hidden = true;
      $("heatmap-toggle-row").hidden = true;
      $("status").textContent = "";
      showError(`Could not classify ${name}: ${error.message}`);
    } finally {
      busy = false;
    }
  }

  function showPreview(blob, name) {
    const preview = $("preview");
    if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
    const url = URL.createObjectURL(blob);
    preview.dataset.url = url;
    preview.onerror = () => {
      $("preview-figure").hidden = true;
    };
    preview.src = url;
    preview.alt = `The photo being classified: ${name}`;
    $("preview-caption").textContent = name;
    $("heatmap").hidden = true;
    $("heatmap-toggle-row").hidden = true;
    $("preview-figure").hidden = false;
  }

  function renderResult(result, name) {
    const top = result.scores[0];
    const verdict = $("verdict");
    verdict.classList.toggle("abstain", result.abstained);
    if (result.abstained) {
      verdict.innerHTML = "";
      const strong = document.createElement("strong");
      strong.textContent = "None of these 12.";
      verdict.append(
        strong,
        ` The photo does not look enough like the visual culture of any of the 12 groups the model knows ` +
          `(closest: ${top.label}, ${EGR.percent(top.probability)}).`,
      );
    } else {
      verdict.innerHTML = "";
      const strong = document.createElement("strong");
      strong.textContent = result.label;
      verdict.append("Most like the visual culture of ", strong, ` (${EGR.percent(result.confidence)}).`);
    }
    const warning = $("low-data-warning");
    if (!result.abstained && result.low_data) {
      const count = result.scores.find((s) => s.label === result.label).training_images;
      warning.textContent =
        `Warning: the model has seen only ${count} training photo${count === 1 ? "" : "s"} of ${result.label}. ` +
        "This answer is a guess; check it before relying on it.";
      warning.hidden = false;
    } else {
      warning.hidden = true;
    }
    const list = $("scores");
    list.innerHTML = "";
    result.scores.forEach((score, index) => {
      const item = document.createElement("li");
      item.className = "score" + (index === 0 && !result.abstained ? " top" : "");
      const head = document.createElement("div");
      head.className = "score-head";
      const label = document.createElement("span");
      label.className = "score-label";
      label.textContent = score.label;
      head.append(label);
      if (score.low_data) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = `few training photos (${score.training_images})`;
        head.append(" ", badge);
      }
      const value = document.createElement("span");
      value.className = "score-value";
      value.textContent = EGR.percent(score.probability);
      head.append(value);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(100, score.probability * 100)).toFixed(1)}%`;
      bar.append(fill);
      item.append(head, bar);
      list.append(item);
    });
    const heatmap = $("heatmap");
    if (result.explanation) {
      heatmap.src = result.explanation.heatmap_png;
      heatmap.alt =
        `Heatmap over ${name}: red regions are those the score for ${result.explanation.label} depends on most ` +
        `(computed in ${Math.round(result.explanation.milliseconds)} ms).`;
      heatmap.hidden = !$("show-heatmap").checked;
      $("heatmap-toggle-row").hidden = false;
    }
    $("result").hidden = false;
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
    try {
      examples = (await EGR.request("/api/v1/examples")).examples || [];
    } catch (error) {
      examples = [];
    }
    serverExamples = examples.length > 0;
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

  function renderHistory() {
    const items = history();
    const gallery = $("gallery");
    gallery.innerHTML = "";
    $("gallery-note").textContent = items.length
      ? "Photos you classified in this browser (small copies kept only in this browser, never on the server). Click one to classify it again."
      : "No example photos on this server. Photos you classify will appear here, kept only in this browser.";
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
      const entry = { thumb: canvas.toDataURL("image/jpeg", 0.8), display: result.display_label, time: Date.now() };
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

  document.addEventListener("DOMContentLoaded", setup);
})();
