// Where the pages find the API. "" means the server that serves these pages.
// `egr site build --api-url URL --out DIR` rewrites this file for a static copy of the site.
window.EGR_CONFIG = { apiBase: "" };
