
(function () {
  const embed = window.vegaEmbed;
  window.vegaEmbed = function (el, spec, opts) {
    const div = typeof el === "string" ? document.querySelector(el) : el;
    const options = Object.assign({renderer: "svg", actions: {export: true, source: true, compiled: false, editor: false}}, opts);
    return embed(el, spec, options).then(
      (result) => { div.dataset.plot = "ok"; return result; },
      (err) => {
        div.dataset.plot = "error";
        const pre = document.createElement("pre");
        pre.className = "plot-error";
        pre.textContent = "This plot failed to render: " + err;
        div.appendChild(pre);
      });
  };
})();
