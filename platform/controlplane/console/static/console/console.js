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
  // The playground: POST the form with fetch and append the answer's text as it streams in.
  document.querySelectorAll("form[data-stream-to]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (typeof ReadableStream === "undefined") return;
      event.preventDefault();
      var out = document.getElementById(form.dataset.streamTo);
      var status = document.getElementById("playground-status");
      var button = form.querySelector("button[type=submit]");
      out.textContent = "";
      status.textContent = "Waiting for the answer…";
      button.disabled = true;
      fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" })
        .then(function (response) {
          var reader = response.body.getReader();
          var decoder = new TextDecoder();
          if (response.ok) status.textContent = "Answering…";
          function pump() {
            return reader.read().then(function (chunk) {
              if (chunk.done) {
                out.textContent += decoder.decode();
                status.textContent = response.ok ? "Done." : "Refused (" + response.status + ").";
                return;
              }
              out.textContent += decoder.decode(chunk.value, { stream: true });
              return pump();
            });
          }
          return pump();
        })
        .catch(function () { status.textContent = "The connection broke."; })
        .finally(function () { button.disabled = false; });
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
      scales: { x: { time: true, range: timeRange } },
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

// Charts of named series ({x, series: [{label, values}]}); data-stacked draws each
// series on top of the ones before it (uPlot has no stacking of its own).
document.addEventListener("DOMContentLoaded", function () {
  var colours = ["#0b5cad", "#6b3fa0", "#a40e26", "#1a7f37", "#9a6700", "#0e7490", "#be185d", "#4b5563", "#111827"];
  document.querySelectorAll("[data-series-chart]").forEach(function (area) {
    var source = document.getElementById(area.dataset.seriesChart);
    if (!source || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    if (!data.x.length) return; // the table says there is nothing to draw
    var stacked = area.dataset.stacked === "true";
    var running = data.x.map(function () { return 0; });
    var columns = [data.x];
    var series = [{}];
    data.series.forEach(function (s, i) {
      var values = s.values;
      if (stacked) {
        running = running.map(function (sum, j) { return sum + (values[j] || 0); });
        values = running.slice();
      }
      columns.push(values);
      var colour = colours[i % colours.length];
      series.push({ label: s.label, stroke: colour, fill: stacked ? colour + "55" : undefined, spanGaps: true });
    });
    if (stacked) {
      // Drawn top first, so each band's fill covers only its own part.
      columns = [columns[0]].concat(columns.slice(1).reverse());
      series = [series[0]].concat(series.slice(1).reverse());
    }
    new uPlot({
      width: Math.max(320, area.clientWidth || 800),
      height: 260,
      series: series,
      axes: [{}, { label: area.dataset.title || "" }],
      scales: { x: { time: true, range: timeRange } },
    }, columns, area);
  });
});

// A fragment request whose session ended lands on the sign-in page (a redirect htmx
// follows): go there as a whole page instead of swapping the form into a table.
document.addEventListener("htmx:beforeSwap", function (event) {
  var xhr = event.detail && event.detail.xhr;
  if (xhr && xhr.responseURL && xhr.responseURL.indexOf("/console/signin/") !== -1) {
    event.detail.shouldSwap = false;
    window.location.assign(xhr.responseURL);
  }
});
// The time axis of a chart: with a single hour or day of traffic uPlot 1.6 widens it by
// 86400 / ms "seconds" (1000 days with seconds as unit) and the point is lost in years of
// empty axis; half a day either side instead.
function timeRange(u, min, max) {
  var xs = u.data && u.data[0];
  return xs && xs.length === 1 ? [xs[0] - 43200, xs[0] + 43200] : [min, max];
}
