// Shared by every page: the API base URL, JSON fetching with readable errors, navigation links,
// and the model's own words (title, labels, "none of these") filled into the page, so no page
// names a model's classes or product name in its HTML.
"use strict";

const EGR = (() => {
  const config = window.EGR_CONFIG || {};
  const base = String(config.apiBase || "").replace(/\/+$/, "");
  /** What the header says when the model gives no title (or cannot be reached). */
  const NEUTRAL_TITLE = "Photo recognizer";

  /** Absolute or same-origin URL of an API path such as "/api/v1/labels". */
  function api(path) {
    return /^https?:\/\//.test(path) ? path : base + path;
  }

  /** The message of the API's JSON error shape, or a fallback naming the HTTP status. */
  function errorMessage(body, response) {
    if (body && body.error && body.error.message) return body.error.message;
    return `the server answered HTTP ${response.status} ${response.statusText || ""}`.trim();
  }

  /** Why a fetch failed and how to fix it: a page on another origin is most often refused by CORS. */
  function unreachableMessage(cause) {
    const target = new URL(api("/"), window.location.href);
    const here = window.location.origin;
    const detail = cause ? ` (the browser said: ${cause})` : "";
    if (target.origin === here) {
      return `cannot reach the recognition server of this site (${here}): is "egr serve" still running?${detail}`;
    }
    if (window.location.protocol === "file:" || here === "null") {
      return (
        `cannot reach the recognition server at ${target.origin}: this page was opened from a file, and ` +
        "browsers block its calls. Serve the site folder over HTTP (for example " +
        '"python -m http.server") and start the server with "egr serve --cors-origins <that origin>".' +
        detail
      );
    }
    return (
      `cannot reach the recognition server at ${target.origin} from this page (${here}). Either it is not ` +
      "running, or it does not allow pages from this origin to call it (CORS). Start it with " +
      `"egr serve --cors-origins ${here}" (or set EGR_CORS_ORIGINS=${here}).${detail}`
    );
  }

  async function request(path, options) {
    let response;
    try {
      response = await fetch(api(path), options);
    } catch (error) {
      const failure = new Error(unreachableMessage(error.message));
      failure.unreachable = true;
      throw failure;
    }
    const type = response.headers.get("content-type") || "";
    const body = type.includes("json") ? await response.json().catch(() => null) : await response.text();
    if (!response.ok) throw new Error(errorMessage(body, response));
    return body;
  }

  function percent(p) {
    const value = p * 100;
    return value >= 10 || value === 0 ? `${value.toFixed(0)}%` : `${value.toFixed(1)}%`;
  }

  /** Bytes as MiB, the unit the server's --max-upload-mb limit is given in. */
  function mebibytes(bytes) {
    const value = bytes / 2 ** 20;
    return `${value >= 10 ? value.toFixed(0) : value.toFixed(1)} MiB`;
  }

  // ---- the model's own words ----------------------------------------------------------------
  let modelRequest = null;

  /** /api/v1/model, fetched once per page; rejects with the request's readable error. */
  function model() {
    if (!modelRequest) modelRequest = request("/api/v1/model");
    return modelRequest;
  }

  function text(...values) {
    const found = values.find((value) => typeof value === "string" && value.trim());
    return found ? found.trim() : "";
  }

  /**
   * What the pages say about a model, read defensively from /api/v1/model: a card section (title,
   * description, label display names, the name of "none of these") where the model has one, else
   * neutral words. ``model`` may be null (unreachable server).
   */
  function describe(model) {
    const meta = model && typeof model === "object" ? model : {};
    const card = meta.card && typeof meta.card === "object" ? meta.card : {};
    const labels = Array.isArray(meta.labels) ? meta.labels.filter((l) => typeof l === "string") : [];
    const names = [card.label_names, card.display_names, card.labels].find(
      (value) => value && typeof value === "object" && !Array.isArray(value),
    );
    const preprocessing = meta.preprocessing && typeof meta.preprocessing === "object" ? meta.preprocessing : {};
    const backbone = meta.backbone && typeof meta.backbone === "object" ? meta.backbone : {};
    const size = Number(preprocessing.image_size || backbone.image_size || meta.input_size);
    const serving = meta.serving && typeof meta.serving === "object" ? meta.serving : {};
    const limit = Number(serving.max_upload_bytes);
    const name = text(meta.name);
    return {
      title: text(card.title, meta.title) || (name && name !== "default" ? name : NEUTRAL_TITLE),
      description: text(card.description, meta.description),
      noneName: text(card.none_of_these, card.none_label, card.abstain_text, meta.none_of_these),
      labels,
      displayName: (label) => (names && typeof names[label] === "string" && names[label].trim()) || label,
      inputSize: Number.isFinite(size) && size > 0 ? size : null,
      maxUploadBytes: Number.isFinite(limit) && limit > 0 ? limit : null,
      // A model trained without "other" photos cannot abstain: its threshold is 0.
      canAbstain: meta.can_abstain !== false && !(typeof meta.threshold === "number" && meta.threshold <= 0),
      threshold: typeof meta.threshold === "number" ? meta.threshold : null,
      // How the threshold is applied (calibrate.py): "top-label" for models before prediction sets.
      abstainRule: text(meta.abstain_rule) || "top-label",
    };
  }

  /** "None of these 3" (or the card's own name for it) for a model with ``count`` labels. */
  function noneOfThese(info, count) {
    if (info && info.noneName) return info.noneName;
    return count ? `None of these ${count}` : "None of these";
  }

  /** "a, b and c". */
  function listing(items, last = "and") {
    if (items.length <= 1) return items.join("");
    return `${items.slice(0, -1).join(", ")} ${last} ${items[items.length - 1]}`;
  }

  /** Fill every element marked data-model="…" and the header with the model's own words. */
  function fillPage(info) {
    for (const brand of document.querySelectorAll(".brand")) brand.textContent = info.title;
    const parts = document.title.split(" · ");
    document.title = parts.length > 1 ? `${parts.slice(0, -1).join(" · ")} · ${info.title}` : info.title;
    const count = info.labels.length;
    const values = {
      "label-list": listing(info.labels.map(info.displayName)),
      "label-count": count ? String(count) : "",
      "none-of-these": noneOfThese(info, count).replace(/^None/, "none"),
      description: info.description,
    };
    for (const element of document.querySelectorAll("[data-model]")) {
      const value = values[element.dataset.model];
      if (value) element.textContent = value;
    }
    for (const element of document.querySelectorAll("[data-model-cannot-abstain]")) {
      element.hidden = info.canAbstain;
    }
  }

  /** The page's model facts, once: a promise of describe(model), neutral when unreachable. */
  let described = null;
  function modelInfo() {
    if (!described) described = model().then(describe, () => describe(null));
    return described;
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const link of document.querySelectorAll("[data-api-link]")) {
      link.href = api(link.dataset.apiLink);
    }
    modelInfo().then(fillPage);
  });

  return { api, request, percent, mebibytes, base, model, modelInfo, describe, noneOfThese, listing, unreachableMessage };
})();
