// The About page: the model card (Markdown rendered here, no CDN) and the per-label table.
"use strict";

document.addEventListener("DOMContentLoaded", async () => {
  const $ = (id) => document.getElementById(id);
  try {
    const data = await EGR.request("/api/v1/labels");
    const body = $("labels-table").querySelector("tbody");
    for (const row of data.labels) {
      const tr = document.createElement("tr");
      const name = document.createElement("th");
      name.scope = "row";
      name.textContent = row.label;
      if (row.low_data) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = "few training photos";
        name.append(" ", badge);
      }
      const values = [
        String(row.training_images),
        row.support == null ? "–" : String(row.support),
        row.accuracy == null ? "not measured" : EGR.percent(row.accuracy),
      ];
      tr.append(name, ...values.map((v) => Object.assign(document.createElement("td"), { textContent: v })));
      body.append(tr);
    }
    $("labels-table").hidden = false;
    $("labels-status").textContent = `A label is flagged below ${data.low_data_below} training photos.`;
  } catch (error) {
    $("labels-status").textContent = `Could not load the labels: ${error.message}`;
  }
  try {
    const text = await EGR.request("/api/v1/model-card");
    $("card").innerHTML = Markdown.render(String(text));
    $("card-status").textContent = "";
    $("card-status").hidden = true;
  } catch (error) {
    $("card-status").textContent = `Could not load the model card: ${error.message}`;
  }
});
