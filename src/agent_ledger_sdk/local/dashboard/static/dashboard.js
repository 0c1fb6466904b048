// Agent Ledger dashboard: the only script. The pages work without it; it adds two things.
// 1. The sessions list (first page) asks every few seconds for sessions started since, and puts them on top.
// 2. "Open all" / "Close all" on a session's steps.
(function () {
  "use strict";

  var table = document.getElementById("sessions");
  if (table && table.dataset.live) {
    var body = table.tBodies[0];
    var status = document.getElementById("live-status");
    var after = table.dataset.after || "0";
    var every = 5000;
    var poll = function () {
      if (document.hidden) {
        window.setTimeout(poll, every);
        return;
      }
      var url = table.dataset.live + (table.dataset.live.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(after);
      window.fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (found) {
          if (!found) { return; }
          after = String(found.after);
          if (found.count > 0) {
            body.insertAdjacentHTML("afterbegin", found.html);
            var empty = document.getElementById("no-sessions");
            if (empty) { empty.remove(); }
            if (status) {
              status.textContent = found.count + (found.count === 1 ? " new session" : " new sessions") +
                (found.more ? " (and more: reload to see them all)" : "");
            }
          }
        })
        .catch(function () { /* the server may be restarting: try again later */ })
        .then(function () { window.setTimeout(poll, every); });
    };
    window.setTimeout(poll, every);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-details]") : null;
    if (!button) { return; }
    var open = button.getAttribute("data-details") === "open";
    var steps = document.querySelectorAll("#tree details.step");
    for (var i = 0; i < steps.length; i++) { steps[i].open = open; }
  });
})();
