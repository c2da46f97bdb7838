// Shared by every page: the API base URL, JSON fetching with readable errors, navigation links.
"use strict";

const EGR = (() => {
  const config = window.EGR_CONFIG || {};
  const base = String(config.apiBase || "").replace(/\/+$/, "");

  /** Absolute or same-origin URL of an API path such as "/api/v1/labels". */
  function api(path) {
    return /^https?:\/\//.test(path) ? path : base + path;
  }

  /** The message of the API's JSON error shape, or a fallback naming the HTTP status. */
  function errorMessage(body, response) {
    if (body && body.error && body.error.message) return body.error.message;
    return `the server answered HTTP ${response.status} ${response.statusText || ""}`.trim();
  }

  async function request(path, options) {
    let response;
    try {
      response = await fetch(api(path), options);
    } catch (error) {
      throw new Error(`cannot reach the recognition server (${base || "this site"}): ${error.message}`);
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

  document.addEventListener("DOMContentLoaded", () => {
    for (const link of document.querySelectorAll("[data-api-link]")) {
      link.href = api(link.dataset.apiLink);
    }
  });

  return { api, request, percent, base };
})();
