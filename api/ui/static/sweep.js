// One sweep: re-reads GET /v1/sweeps/{id} every few seconds while it runs and reloads the page
// when a child's status changes (the server renders the tables and the plot); cancel button.
"use strict";

(function () {
  const POLL_MS = 3000;
  const S = window.Spartan;

  document.addEventListener("DOMContentLoaded", () => {
    const page = JSON.parse(document.getElementById("page-data").textContent);
    const path = `/v1/sweeps/${encodeURIComponent(page.sweep_id)}`;
    const seen = JSON.stringify(page.statuses);

    const cancel = document.getElementById("cancel-sweep");
    if (cancel) {
      cancel.addEventListener("click", async () => {
        cancel.disabled = true;
        cancel.textContent = "Cancelling…";
        try {
          const sweep = await S.api(`${path}/cancel`, { method: "POST" });
          S.setBadge(document.getElementById("sweep-status"), sweep.status);
          window.location.reload();
        } catch (err) {
          cancel.disabled = false;
          cancel.textContent = "Cancel sweep";
          window.alert(`Cancel failed: ${err.message}`);
        }
      });
    }

    if (page.finished) return;
    const tick = async () => {
      if (!document.hidden) {
        try {
          const sweep = await S.api(path);
          S.setBadge(document.getElementById("sweep-status"), sweep.status);
          if (JSON.stringify(sweep.jobs.map((j) => j.status)) !== seen) {
            window.location.reload();
            return;
          }
        } catch (_err) {
          /* the next tick tries again */
        }
      }
      setTimeout(tick, POLL_MS);
    };
    setTimeout(tick, POLL_MS);
  });
})();
