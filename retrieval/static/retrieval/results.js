// Draws inlier correspondences on the results page (a static file: the CSP allows no inline script).
// Map original-pixel points into each 490x400 letterboxed panel; the catalog panel shows a
// thumbnail of the same aspect ratio, so the catalog photo's full size (data-cw/ch) applies.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  function fit(w, h) { var s = Math.min(490 / w, 400 / h); return [s, (490 - w * s) / 2, (400 - h * s) / 2]; }
  document.querySelectorAll("g.matches").forEach(function (g) {
    var q = fit(+g.dataset.qw, +g.dataset.qh), c = fit(+g.dataset.cw, +g.dataset.ch);
    if (g.dataset.bbox) {
      // The region searched, outlined on the query panel.
      var b = g.dataset.bbox.split(",").map(Number), r = document.createElementNS(SVG, "rect");
      r.setAttribute("class", "searched-region");
      r.setAttribute("x", q[1] + b[0] * q[0]); r.setAttribute("y", q[2] + b[1] * q[0]);
      r.setAttribute("width", (b[2] - b[0]) * q[0]); r.setAttribute("height", (b[3] - b[1]) * q[0]);
      g.appendChild(r);
    }
    (g.dataset.points || "").split(";").filter(Boolean).forEach(function (p) {
      var v = p.split(",").map(Number);
      var line = document.createElementNS(SVG, "line");
      line.setAttribute("x1", q[1] + v[0] * q[0]); line.setAttribute("y1", q[2] + v[1] * q[0]);
      line.setAttribute("x2", 510 + c[1] + v[2] * c[0]); line.setAttribute("y2", c[2] + v[3] * c[0]);
      g.appendChild(line);
    });
  });
})();
