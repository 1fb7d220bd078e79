// Draws the usage-per-day chart of an allocation page with uPlot; the data come from a JSON block.
(function () {
  "use strict";
  function draw() {
    var holder = document.getElementById("usage-chart");
    var source = document.getElementById("usage-data");
    if (!holder || !source || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    if (!data.days.length) { holder.textContent = "No usage yet."; return; }
    var width = Math.max(320, Math.min(holder.clientWidth || 800, 1100));
    new uPlot({
      width: width,
      height: 260,
      series: [
        {},
        { label: data.unit, stroke: "#0b4f8a", fill: "rgba(11, 79, 138, 0.15)", width: 2 }
      ],
      axes: [{}, { label: data.unit, size: 70 }],
      scales: { x: { time: true } }
    }, [data.days, data.used], holder);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw); else draw();
})();
