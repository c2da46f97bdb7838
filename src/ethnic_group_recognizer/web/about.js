// The About page: the model card (Markdown rendered here, no CDN) and the per-label table.
"use strict";

const About = (() => {
  /**
   * The card split into its title (its first "# …" heading, shown as the section's own heading so
   * the page never says "Model card" twice) and the rest; a clause saying a source file is missing
   * on the machine that wrote the card says nothing to a reader of the page, so it is left out.
   */
  function splitCard(source) {
    const text = String(source).replace(/\r\n?/g, "\n").replace(/,\s*not present on this machine/g, "");
    const match = /^\s*#\s+(.+)\n?/.exec(text);
    if (!match) return { title: "", body: text };
    return { title: match[1].trim(), body: text.slice(match[0].length) };
  }

  /** The card's heading about its data (e.g. "Data", "Data sources"), or null when it has none. */
  function dataHeading(card) {
    return [...card.querySelectorAll("h2, h3, h4, h5, h6")].find((h) => /^data\b/i.test(h.textContent.trim())) || null;
  }

  /** Where the card says its photos come from; ``stated`` false: the model's card says nothing of it. */
  function describeSources(card, paragraph, stated) {
    const heading = stated === false ? null : dataHeading(card);
    if (!heading) {
      paragraph.textContent =
        "This model's card does not list where its training photos come from; ask whoever trained it.";
      return;
    }
    paragraph.textContent = "";
    const link = document.createElement("a");
    link.href = `#${heading.id}`;
    link.textContent = heading.textContent.trim();
    paragraph.append(
      "The training photos are third-party images; the model card lists their origin and licence in its ",
      link,
      " section above.",
    );
  }

  /** The card's intended and out-of-scope uses (Markdown), above the product's own rule, which always holds. */
  async function loadUses($) {
    const model = await EGR.model().catch(() => null);
    const card = model && model.card && typeof model.card === "object" ? model.card : {};
    const parts = [
      ["Intended use", card.intended_use],
      ["Out of scope", card.out_of_scope_use],
    ].filter(([, text]) => typeof text === "string" && text.trim());
    if (!parts.length) return;
    $("uses").innerHTML = parts
      .map(([heading, text]) => `<strong>${heading}.</strong>${Markdown.render(text)}`)
      .join("");
    $("uses").hidden = false;
  }

  async function loadLabels($) {
    try {
      const info = await EGR.modelInfo();
      const data = await EGR.request("/api/v1/labels");
      const body = $("labels-table").querySelector("tbody");
      for (const row of data.labels) {
        const tr = document.createElement("tr");
        const name = document.createElement("th");
        name.scope = "row";
        name.textContent = info.displayName(row.label);
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
      $("label-count").textContent = `${data.labels.length} `;
      $("labels-table").hidden = false;
      $("labels-status").textContent = `A label is flagged below ${data.low_data_below} training photos.`;
    } catch (error) {
      $("labels-status").textContent = `Could not load the labels: ${error.message}`;
    }
  }

  async function loadCard($) {
    try {
      const card = splitCard(await EGR.request("/api/v1/model-card"));
      if (card.title) $("card-heading").textContent = card.title;
      $("card").innerHTML = Markdown.render(card.body);
      $("card-status").textContent = "";
      $("card-status").hidden = true;
      const model = await EGR.model().catch(() => null);
      const sources = model && model.card ? model.card.data_sources : undefined;
      describeSources($("card"), $("sources-text"), typeof sources === "string" ? Boolean(sources.trim()) : undefined);
    } catch (error) {
      $("card-status").textContent = `Could not load the model card: ${error.message}`;
      $("sources-text").textContent = "The model card, which lists the training data, could not be loaded.";
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const $ = (id) => document.getElementById(id);
    loadUses($);
    loadLabels($);
    loadCard($);
  });

  return { splitCard };
})();
