// flask_pgtq dashboard: confirmation of destructive actions and live updates.
// Works without it; no inline scripts (the pages send a strict CSP).
(function () {
  "use strict";

  // Confirm before a form with data-confirm is sent.  Delegated, so that the
  // forms of a live update have it too.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.hasAttribute("data-confirm") &&
        !window.confirm(form.getAttribute("data-confirm"))) {
      event.preventDefault();
    }
  });

  // Live updates: the page's #pgtq-live part is fetched again (its
  // data-live-url, the page's own; the X-Pgtq-Live header asks for that part
  // only) and swapped in place, every data-live-interval seconds while the
  // tab is visible and "live" is ticked.
  var region = document.getElementById("pgtq-live");
  var box = document.getElementById("pgtq-live-toggle");
  var status = document.getElementById("pgtq-live-status");
  var url = region && region.getAttribute("data-live-url");
  if (!url) { return; }
  var key = "pgtq-live";
  var every = 1000 * (parseFloat(region.getAttribute("data-live-interval")) || 2);
  var timer = null;
  var pending = false;
  var last = null;

  if (box) {
    box.parentNode.hidden = false;
    try { box.checked = window.localStorage.getItem(key) !== "0"; } catch (e) { /* private mode */ }
    box.addEventListener("change", function () {
      try { window.localStorage.setItem(key, box.checked ? "1" : "0"); } catch (e) { /* ignore */ }
      restart(true);
    });
  }

  function wanted() {
    return !document.hidden && (!box || box.checked);
  }

  function say(text) {
    if (status) { status.textContent = text; }
  }

  // Tokens differ on every render: not a change worth a swap.
  function comparable(html) {
    return html.replace(/name="csrf_token" value="[^"]*"/g, "");
  }

  // Someone reading: an open traceback, or text selected in the live part.
  function reading() {
    if (region.querySelector("details[open]")) { return true; }
    var selection = window.getSelection && window.getSelection();
    return !!(selection && !selection.isCollapsed && region.contains(selection.anchorNode));
  }

  function restart(now) {
    if (timer !== null) { window.clearTimeout(timer); timer = null; }
    if (wanted() && !pending) { timer = window.setTimeout(poll, now ? 0 : every); }
  }

  function poll() {
    timer = null;
    if (!wanted()) { return; }
    pending = true;
    window.fetch(url, {
      headers: { "X-Pgtq-Live": "1" },
      credentials: "same-origin",
      cache: "no-store",
      redirect: "error"
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.text();
    }).then(function (html) {
      var seen = comparable(html);
      if (seen !== last && !reading()) {
        region.innerHTML = html;
        last = seen;
        region.dispatchEvent(new CustomEvent("pgtq:updated", { bubbles: true }));
      }
      say("");
    }).catch(function (error) {
      say("live updates failing (" + error.message + "), retrying");
    }).then(function () {
      pending = false;
      restart(false);
    });
  }

  document.addEventListener("visibilitychange", function () {
    restart(!document.hidden);  // hidden: stop; visible again: update at once
  });
  restart(false);
})();
