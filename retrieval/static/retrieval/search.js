// The search page: drop or pick a photo, preview it upright, draw the search region on it.
// A static file (the Content-Security-Policy allows no inline script); without it the
// plain form works as it is.
//
// The region is kept in the photo's own upright pixels, the size the server reads:
// createImageBitmap(file, {imageOrientation: "from-image"}) decodes the photo upright
// (EXIF orientation applied), its width/height are that size, and a pointer position maps
// to photo pixels by the ratio of that size to the displayed one. The preview is a canvas
// (the policy allows no blob: images), drawn at most PREVIEW_SIDE pixels on a side.
(function () {
  "use strict";
  var form = document.getElementById("search-form");
  if (!form) return;
  var input = form.querySelector("input[type=file]");
  var dropzone = document.getElementById("dropzone");
  var preview = document.getElementById("preview");
  var canvas = document.getElementById("preview-canvas");
  var PREVIEW_SIDE = 1600;
  var svg = document.getElementById("region");
  var shade = svg.querySelector(".region-shade");
  var rect = svg.querySelector(".region-rect");
  var bboxInput = form.querySelector("input[name=bbox]");
  var sizeText = document.getElementById("preview-size");
  var clearButton = document.getElementById("region-clear");
  var noPreview = document.getElementById("preview-none");
  var fileError = document.getElementById("file-error");
  var submit = document.getElementById("search-submit");
  var maxBytes = Number(form.dataset.maxBytes) || 0;
  var generation = 0; // the latest file chosen; an older decode finishing late is ignored
  var size = null; // [width, height] of the upright photo
  var region = null; // [x1, y1, x2, y2] in photo pixels
  var drag = null;

  document.documentElement.classList.add("js");

  function megabytes(n) { return (n / 1048576).toFixed(1) + " MB"; }

  function showError(message) {
    fileError.textContent = message || "";
    fileError.hidden = !message;
  }

  function chosen(file) {
    region = null;
    bboxInput.value = "";
    drawRegion();
    showError("");
    delete preview.dataset.ready;
    if (!file) { preview.hidden = true; return; }
    if (maxBytes && file.size > maxBytes) {
      showError("This file is " + megabytes(file.size) + "; the limit is " + megabytes(maxBytes) + ".");
    }
    size = null;
    preview.hidden = false;
    noPreview.hidden = true;
    canvas.hidden = true;
    svg.classList.add("inactive");
    sizeText.textContent = file.name;
    var mine = ++generation;
    if (!window.createImageBitmap) { cannotPreview(); return; }
    createImageBitmap(file, { imageOrientation: "from-image" }).then(function (bitmap) {
      if (mine !== generation) { bitmap.close(); return; }
      size = [bitmap.width, bitmap.height];
      var scale = Math.min(1, PREVIEW_SIDE / Math.max(size[0], size[1]));
      canvas.width = Math.max(1, Math.round(size[0] * scale));
      canvas.height = Math.max(1, Math.round(size[1] * scale));
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      bitmap.close();
      canvas.hidden = false;
      svg.classList.remove("inactive");
      svg.setAttribute("viewBox", "0 0 " + size[0] + " " + size[1]);
      sizeText.textContent = size[0] + " × " + size[1] + " px";
      preview.dataset.ready = "1";
      fromField();
    }, function () {
      if (mine === generation) cannotPreview();
    });
  }

  function cannotPreview() {
    size = null;
    canvas.hidden = true;
    noPreview.hidden = false;
  }

  input.addEventListener("change", function () { chosen(input.files[0]); });

  ["dragenter", "dragover"].forEach(function (name) {
    dropzone.addEventListener(name, function (event) {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (name) {
    dropzone.addEventListener(name, function () { dropzone.classList.remove("dragging"); });
  });
  dropzone.addEventListener("drop", function (event) {
    event.preventDefault();
    var files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    input.files = files;
    chosen(files[0]);
  });

  // Pointer position -> photo pixels, clamped to the photo.
  function toPhoto(event) {
    var box = svg.getBoundingClientRect();
    var x = (event.clientX - box.left) * size[0] / box.width;
    var y = (event.clientY - box.top) * size[1] / box.height;
    return [Math.min(size[0], Math.max(0, x)), Math.min(size[1], Math.max(0, y))];
  }

  svg.addEventListener("pointerdown", function (event) {
    if (!size || event.button > 0) return;
    event.preventDefault();
    svg.setPointerCapture(event.pointerId);
    drag = { start: toPhoto(event), id: event.pointerId };
  });
  svg.addEventListener("pointermove", function (event) {
    if (!drag || event.pointerId !== drag.id) return;
    var p = toPhoto(event);
    region = [Math.min(drag.start[0], p[0]), Math.min(drag.start[1], p[1]),
              Math.max(drag.start[0], p[0]), Math.max(drag.start[1], p[1])];
    drawRegion();
  });
  function endDrag(event) {
    if (!drag || event.pointerId !== drag.id) return;
    drag = null;
    // A tap or a sliver is no region (1% of the photo's sides, at least 8 px).
    if (region && (region[2] - region[0] < Math.max(8, size[0] / 100) ||
                   region[3] - region[1] < Math.max(8, size[1] / 100))) {
      region = null;
    }
    toField();
    drawRegion();
  }
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);

  clearButton.addEventListener("click", function () {
    region = null;
    toField();
    drawRegion();
  });

  function toField() {
    bboxInput.value = region ? region.map(function (v) { return Math.round(v); }).join(",") : "";
  }

  // Typing a region draws it too.
  function fromField() {
    var values = bboxInput.value.split(/[\s,]+/).filter(Boolean).map(Number);
    var ok = size && values.length === 4 && values.every(isFinite) && values[2] > values[0] && values[3] > values[1];
    region = ok ? values : null;
    drawRegion();
  }
  bboxInput.addEventListener("input", fromField);

  function drawRegion() {
    clearButton.hidden = !region;
    svg.classList.toggle("has-region", !!region);
    if (!region || !size) {
      rect.setAttribute("width", 0);
      rect.setAttribute("height", 0);
      shade.setAttribute("d", "");
      return;
    }
    var x = region[0], y = region[1], w = region[2] - region[0], h = region[3] - region[1];
    rect.setAttribute("x", x);
    rect.setAttribute("y", y);
    rect.setAttribute("width", w);
    rect.setAttribute("height", h);
    // Darken what is outside the region: the photo's outline minus the region's.
    shade.setAttribute("d", "M0 0H" + size[0] + "V" + size[1] + "H0Z M" + x + " " + y + "h" + w + "v" + h + "h" + -w + "Z");
  }

  form.addEventListener("submit", function () {
    // Let the request go, then show it is under way and prevent a second one.
    window.setTimeout(function () {
      submit.disabled = true;
      submit.textContent = "Searching…";
    }, 0);
  });
  window.addEventListener("pageshow", function () {
    submit.disabled = false;
    submit.textContent = "Search";
  });

  if (input.files && input.files[0]) chosen(input.files[0]); // restored by the browser
})();
