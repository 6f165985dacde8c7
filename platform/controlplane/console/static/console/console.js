// The console's one script: draws the charts whose data the page carries in
// <script type="application/json"> blocks (no inline code: the CSP forbids it).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Destructive forms ask first, in the native <dialog> (keyboard and screen-reader
  // friendly); without JavaScript they simply submit.
  var dialog = document.getElementById("confirm-dialog");
  document.querySelectorAll("form.confirm[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!dialog || typeof dialog.showModal !== "function") return;
      event.preventDefault();
      document.getElementById("confirm-text").textContent = form.dataset.confirm;
      dialog.returnValue = "";
      dialog.addEventListener("close", function () {
        if (dialog.returnValue === "confirm") form.submit();
      }, { once: true });
      dialog.showModal();
    });
  });
  document.querySelectorAll("[data-chart]").forEach(function (area) {
    var source = document.getElementById(area.dataset.chart);
    if (!source || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    var options = {
      width: Math.max(320, area.clientWidth || 800),
      height: 280,
      series: [
        {},
        { label: "Requests", stroke: "#0b5cad", scale: "n" },
        { label: "Tokens", stroke: "#6b3fa0", scale: "tokens" },
        { label: "Errors", stroke: "#a40e26", scale: "n", dash: [6, 4] },
      ],
      axes: [{}, { scale: "n" }, { scale: "tokens", side: 1 }],
    };
    new uPlot(options, [data.x, data.requests, data.tokens, data.errors], area);
  });
});
// Polling fragments (data-poll, hx-trigger="every 5s, console:visible from:document")
// skip their requests while the tab is hidden and refresh at once when it shows again.
// A plain listener, not an htmx eval filter: the CSP and allowEval:false forbid those.
document.addEventListener("visibilitychange", function () {
  if (document.visibilityState === "visible") {
    document.dispatchEvent(new CustomEvent("console:visible"));
  }
});
document.addEventListener("htmx:beforeRequest", function (event) {
  var elt = event.detail && event.detail.elt;
  if (document.visibilityState === "hidden" && elt && elt.hasAttribute("data-poll")) {
    event.preventDefault();
  }
});
