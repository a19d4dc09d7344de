// The API-key page: checks the key against GET /v1/jobs, then stores it in this browser.
"use strict";

(function () {
  const S = window.Spartan;

  function next() {
    const wanted = new URLSearchParams(window.location.search).get("next") || "";
    // Only paths of this dashboard: never an absolute or protocol-relative address.
    if (window.location.pathname !== "/ui/login") return window.location.pathname + window.location.search;
    return /^\/ui\/[^/]?/.test(wanted) && !wanted.startsWith("//") ? wanted : "/ui/";
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("login-form");
    if (!form) return;
    // A key stored earlier whose cookie was lost: send it again, unless it was just refused.
    if (S.storedKey() && !document.getElementById("login-rejected")) {
      S.setKey(S.storedKey());
      window.location.replace(next());
      return;
    }
    const error = document.getElementById("login-error");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const key = document.getElementById("api-key").value.trim();
      if (!key) return;
      const r = await fetch("/v1/jobs?limit=1", { headers: { Authorization: `Bearer ${key}` } });
      if (r.ok) {
        S.setKey(key);
        window.location.replace(next());
      } else {
        error.textContent = r.status === 401 ? "That key was not accepted: it is unknown or revoked." : `The service answered HTTP ${r.status}.`;
        error.classList.remove("hidden");
      }
    });
  });
})();
