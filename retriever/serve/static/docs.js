// The API docs (/docs): Swagger UI from this server's own files, no CDN. The key typed
// into the search page (kept for this tab) is sent with "Try it out" too; "Authorize"
// sets it here when the server needs one.
"use strict";

window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
  requestInterceptor: (request) => {
    const key = sessionStorage.getItem("retriever-api-key");
    if (key && !request.headers["X-API-Key"]) request.headers["X-API-Key"] = key;
    return request;
  },
});
