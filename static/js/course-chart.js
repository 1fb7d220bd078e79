// Draws a course's hours used per student as bars with uPlot; the data come from a JSON block.
(function () {
  "use strict";
  function draw() {
    var holder = document.getElementById("course-chart");
    var source = document.getElementById("course-usage-data");
    if (!holder || !source || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    if (!data.names.length) return;  // the page says so, in the reader's language
    var xs = data.names.map(function (_name, i) { return i; });
    var width = Math.max(320, Math.min(holder.clientWidth || 800, 1100));
    var bars = uPlot.paths.bars({ size: [0.6, 60] });
    new uPlot({
      width: width,
      height: 260,
      series: [
        {},
        { label: data.used_label, stroke: "#0b4f8a", fill: "rgba(11, 79, 138, 0.6)", paths: bars, points: { show: false } },
        { label: data.cap_label, stroke: "#b03a2e", width: 2, dash: [6, 4], points: { show: false } }
      ],
      axes: [
        { splits: function () { return xs; }, values: function (_u, ticks) { return ticks.map(function (t) { return data.names[t] || ""; }); } },
        { label: data.unit, size: 70 }
      ],
      scales: { x: { time: false, range: [-0.5, xs.length - 0.5] }, y: { range: function (_u, _min, max) { return [0, Math.max(1, max) * 1.1]; } } }
    }, [xs, data.used, data.caps], holder);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw); else draw();
})();
