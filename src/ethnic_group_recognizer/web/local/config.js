// In-browser mode, written by `egr site build --in-browser`: the model runs in the visitor's
// browser and there is no recognition server. Pages that read facts about the model from the API
// (the About page: labels, model card) get them from this site's own files, written by the build;
// any other API request is answered here with a clear error, never sent anywhere.
window.EGR_CONFIG = { apiBase: "", mode: "in-browser" };
(() => {
  const root = new URL(".", document.currentScript.src);
  const files = {
    "/api/v1/labels": "api/labels.json",
    "/api/v1/model": "api/model.json",
    "/api/v1/model-card": "api/model-card.md",
    "/api/v1/examples": "api/examples.json",
  };
  const realFetch = window.fetch.bind(window);
  window.fetch = (input, init) => {
    const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url;
    if (typeof url === "string" && url.startsWith("/api/")) {
      const path = url.split("?")[0];
      if (path in files) return realFetch(new URL(files[path], root), init);
      const body = { error: { status: 404, code: "in_browser", message: "this site runs the model in your browser and has no API" } };
      return Promise.resolve(new Response(JSON.stringify(body), { status: 404, headers: { "content-type": "application/json" } }));
    }
    return realFetch(input, init);
  };
  document.addEventListener("DOMContentLoaded", () => {
    // The "API" link points at a server this site does not have.
    for (const link of document.querySelectorAll("[data-api-link]")) (link.closest("li") || link).hidden = true;
  });
})();
