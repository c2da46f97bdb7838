// A tiny Markdown renderer for the model card: headings, paragraphs, lists, tables, emphasis,
// code and links. Everything is HTML-escaped first, so the card cannot inject markup or scripts.
"use strict";

const Markdown = (() => {
  function escape(text) {
    return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  function inline(text) {
    let html = escape(text);
    html = html.replace(/`([^`]+)`/g, "<code>$1</code>");
    html = html.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>");
    html = html.replace(/(^|[^*\w])\*([^*\s][^*]*)\*(?!\w)/g, "$1<em>$2</em>");
    html = html.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (match, label, url) => {
      const safe = /^(https?:\/\/|\/|#|[\w.-]+\.html)/.test(url) ? url : "#";
      return `<a href="${safe}">${label}</a>`;
    });
    return html;
  }

  function cells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  }

  function render(source) {
    const lines = source.replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) {
        i += 1;
        continue;
      }
      const heading = /^(#{1,6})\s+(.*)$/.exec(line);
      if (heading) {
        const level = Math.min(6, heading[1].length + 1); // the page already has an <h1>
        const id = heading[2].toLowerCase().replace(/[^\w]+/g, "-").replace(/^-|-$/g, "");
        out.push(`<h${level} id="card-${id}">${inline(heading[2])}</h${level}>`);
        i += 1;
      } else if (/^\s*\|/.test(line) && i + 1 < lines.length && /^\s*\|?\s*:?-{3,}/.test(lines[i + 1])) {
        const head = cells(line);
        i += 2;
        const rows = [];
        while (i < lines.length && /^\s*\|/.test(lines[i])) {
          rows.push(cells(lines[i]));
          i += 1;
        }
        out.push(
          '<div class="table-wrap"><table><thead><tr>' +
            head.map((c) => `<th scope="col">${inline(c)}</th>`).join("") +
            "</tr></thead><tbody>" +
            rows.map((r) => "<tr>" + r.map((c) => `<td>${inline(c)}</td>`).join("") + "</tr>").join("") +
            "</tbody></table></div>",
        );
      } else if (/^\s*([-*]|\d+\.)\s+/.test(line)) {
        const ordered = /^\s*\d+\./.test(line);
        const items = [];
        while (i < lines.length && lines[i].trim()) {
          const item = /^\s*([-*]|\d+\.)\s+(.*)$/.exec(lines[i]);
          if (item) items.push(item[2]);
          else if (items.length) items[items.length - 1] += " " + lines[i].trim();
          i += 1;
        }
        const tag = ordered ? "ol" : "ul";
        out.push(`<${tag}>` + items.map((t) => `<li>${inline(t)}</li>`).join("") + `</${tag}>`);
      } else {
        const para = [];
        while (i < lines.length && lines[i].trim() && !/^(#{1,6}\s|\s*\||\s*([-*]|\d+\.)\s)/.test(lines[i])) {
          para.push(lines[i].trim());
          i += 1;
        }
        if (!para.length) {
          para.push(lines[i].trim());
          i += 1;
        }
        out.push(`<p>${inline(para.join(" "))}</p>`);
      }
    }
    return out.join("\n");
  }

  return { render, escape };
})();
