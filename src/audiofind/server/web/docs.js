// The interactive API docs: Swagger UI from this server (no CDN), reading /openapi.json.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({ // eslint-disable-line no-undef
    url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout", // eslint-disable-line no-undef
  });
});
