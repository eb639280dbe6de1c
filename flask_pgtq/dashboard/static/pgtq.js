// flask_pgtq dashboard: confirmation of destructive actions and auto-refresh.
// Works without it; no inline scripts (the pages send a strict CSP).
(function () {
  "use strict";
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.getAttribute("data-confirm"))) {
        event.preventDefault();
      }
    });
  });

  var box = document.getElementById("pgtq-autorefresh");
  var key = "pgtq-autorefresh";
  var timer = null;
  function schedule() {
    if (timer) { window.clearTimeout(timer); timer = null; }
    if (box && box.checked) {
      timer = window.setTimeout(function () { window.location.reload(); }, 5000);
    }
  }
  if (box) {
    try { box.checked = window.localStorage.getItem(key) === "1"; } catch (e) { /* private mode */ }
    box.addEventListener("change", function () {
      try { window.localStorage.setItem(key, box.checked ? "1" : "0"); } catch (e) { /* ignore */ }
      schedule();
    });
    schedule();
  }
})();
