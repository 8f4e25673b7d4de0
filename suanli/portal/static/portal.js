// suanli portal: live log tails, the usage chart and the usage page's group-by boxes (no inline scripts: CSP).
"use strict";
(function () {
  function tail(pre) {
    var offset = 0;
    function poll() {
      fetch(pre.dataset.src + "&offset=" + offset, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (d) {
          if (!d) { return; }
          if (d.text) { pre.textContent += d.text; offset = d.offset; pre.scrollTop = pre.scrollHeight; }
          if (!d.done || d.text) { setTimeout(poll, 1000); }
        })
        .catch(function () { setTimeout(poll, 3000); });
    }
    poll();
  }
  document.querySelectorAll("pre.log[data-src]").forEach(tail);

  var boxes = document.querySelectorAll("input.by");
  var by = document.getElementById("by");
  boxes.forEach(function (b) {
    b.addEventListener("change", function () {
      by.value = Array.prototype.filter.call(boxes, function (x) { return x.checked; })
        .map(function (x) { return x.value; }).join(",");
    });
  });

  var holder = document.getElementById("chart");
  var data = document.getElementById("chart-data");
  if (holder && data && window.echarts) {
    var c = JSON.parse(data.textContent || "{}");
    if (c.x) {
      var chart = window.echarts.init(holder);
      chart.setOption({
        title: {text: c.title}, tooltip: {trigger: "axis"}, legend: {top: 25},
        grid: {top: 70}, xAxis: {type: "category", data: c.x}, yAxis: {type: "value", name: "cpu-hours"},
        series: c.series.map(function (s) { return {name: s.name, type: "bar", stack: "all", data: s.data}; })
      });
      holder.dataset.ready = "1";
    }
  }
})();
