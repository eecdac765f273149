// cbir web page: draw an object on the canvas and search by the drawing (POST /search/sketch,
// shown when the server has a sketch model: cbir serve INDEX --sketch-model RUN_DIR).
// Loaded after app.js, whose api, run, showQuery, options and last it uses.
"use strict";

(() => {
  const canvas = $("sketch");
  const ctx = canvas.getContext("2d");
  let drawn = false;
  let down = false;

  function clear() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    drawn = false;
  }

  function at(e) {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * canvas.width) / r.width, ((e.clientY - r.top) * canvas.height) / r.height];
  }

  canvas.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    down = true;
    canvas.setPointerCapture?.(e.pointerId);
    const [x, y] = at(e);
    ctx.beginPath();
    ctx.moveTo(x, y);
    ctx.lineTo(x + 0.01, y);
    ctx.stroke();
    drawn = true;
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!down) return;
    const [x, y] = at(e);
    ctx.lineTo(x, y);
    ctx.stroke();
  });
  for (const ev of ["pointerup", "pointercancel", "pointerleave"]) {
    canvas.addEventListener(ev, () => {
      down = false;
    });
  }

  function searchSketch() {
    if (!drawn) {
      setStatus("draw something on the canvas first", true);
      return;
    }
    canvas.toBlob((blob) => {
      last = { rerun: searchSketch };
      showQuery(URL.createObjectURL(blob));
      history.replaceState(null, "", location.pathname);
      const { k, tag } = options();
      const form = new FormData();
      form.append("file", blob, "drawing.png");
      form.append("k", k);
      if (tag) form.append("tag", tag);
      run(() => api("/search/sketch", { method: "POST", body: form }), "your drawing");
    }, "image/png");
  }

  clear();
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 6;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  $("sketch-clear").addEventListener("click", clear);
  $("sketch-search").addEventListener("click", searchSketch);
  api("/health")
    .then((h) => {
      $("sketch-panel").hidden = !h.sketch;
    })
    .catch(() => {});
})();
