// The jobs page updates itself: every 2 seconds while a job runs (10 s when none does)
// it fetches the list as an HTML fragment (/jobs/live) and swaps it in. Details the user
// opened or closed stay so.
(function () {
  "use strict";
  var box = document.getElementById("jobs");
  if (!box) return;
  var url = box.dataset.liveUrl;
  var note = document.getElementById("jobs-live-note");
  var timer = null;
  document.documentElement.classList.add("js");

  function running() { return box.querySelector(".job.running") !== null; }

  function schedule() {
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, running() ? 2000 : 10000);
  }

  function refresh() {
    if (document.hidden) { schedule(); return; }
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 403) throw new Error("signed out");
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        var opened = {};
        box.querySelectorAll(".job").forEach(function (job) {
          var details = job.querySelector("details");
          if (details) opened[job.id] = details.open;
        });
        box.innerHTML = html;
        box.querySelectorAll(".job").forEach(function (job) {
          var details = job.querySelector("details");
          if (details && job.id in opened) details.open = opened[job.id];
        });
        box.dataset.updated = String(Date.now());
        if (note) note.textContent = "Updates by itself every few seconds.";
        schedule();
      })
      .catch(function (error) {
        if (note) {
          note.textContent = error.message === "signed out"
            ? "Updates stopped: sign in again and reload."
            : "Updates paused (the server did not answer); retrying.";
        }
        if (error.message !== "signed out") schedule();
      });
  }

  document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  schedule();
})();
