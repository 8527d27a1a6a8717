// stepq dashboard: the only script besides htmx (no inline scripts: the CSP forbids them).

// Live parts of a page (data-live) poll every 2 s: skip the poll while the tab is hidden.
document.addEventListener("htmx:beforeRequest", function (event) {
  if (document.hidden && event.target.closest("[data-live]")) {
    event.preventDefault();
  }
});

// A live refresh must not close what the reader opened: keep <details> open across swaps.
function detailsKey(d) {
  var row = d.closest("[data-step], [data-run-id], [data-event-id]");
  var summary = d.querySelector("summary");
  return (row ? row.getAttribute("data-step") || row.getAttribute("data-run-id") || row.getAttribute("data-event-id") : "") +
    "|" + (summary ? summary.textContent : "");
}
var openDetails = [];
document.addEventListener("htmx:beforeSwap", function (event) {
  openDetails = Array.prototype.map.call(event.detail.target.querySelectorAll("details[open]"), detailsKey);
});
document.addEventListener("htmx:afterSettle", function () {
  if (!openDetails.length) { return; }
  document.querySelectorAll("details").forEach(function (d) {
    if (openDetails.indexOf(detailsKey(d)) >= 0) { d.open = true; }
  });
  openDetails = [];
});
