// /api/docs: Swagger UI (served by this server from the swagger-ui-py package) rendering /api/openapi.json.
// Kept in a file rather than an inline script so the page works under a Content-Security-Policy without
// 'unsafe-inline'.
(function () {
  "use strict";
  window.addEventListener("DOMContentLoaded", () => {
    const root = document.getElementById("swagger-ui");
    if (!root || typeof window.SwaggerUIBundle !== "function") return;
    window.ui = window.SwaggerUIBundle({
      url: root.dataset.specUrl,
      domNode: root,
      deepLinking: true,
      presets: [window.SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
    });
  });
})();
