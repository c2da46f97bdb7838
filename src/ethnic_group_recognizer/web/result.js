// One photo's result, shown the same way by both Recognize pages: the API's (recognize.js, with
// /api/v1/predict's answer) and the in-browser one (local/device.js, with the same object built
// by local/decide.js). The verdict (a label, "one of: X or Y", "uncertain" folded, or "none of
// these"), the coverage sentence, the low-data warning for every label named, and the ranked
// rows with "none of these" as a row of its own. Needs common.js (EGR) loaded first.
"use strict";

window.EGRResult = (() => {
  const $ = (id) => document.getElementById(id);
  /** Above this many labels a prediction set says "uncertain" and folds its list. */
  const SET_UNFOLDED_MAX = 4;

  function strong(text) {
    const element = document.createElement("strong");
    element.textContent = text;
    return element;
  }

  /** The labels of a prediction set, or null for a server that sends none (older servers). */
  function predictionSet(result) {
    if (!Array.isArray(result.prediction_set)) return null;
    return result.prediction_set.filter((label) => typeof label === "string");
  }

  /** The set's target coverage (0.9), or null for a model without set calibration. */
  function coverage(result) {
    return typeof result.coverage === "number" && result.coverage > 0 && result.coverage < 1 ? result.coverage : null;
  }

  /** "X", "X or Y", "X, Y or Z" as strong names. */
  function alternatives(labels) {
    const parts = [];
    labels.forEach((label, index) => {
      if (index > 0) parts.push(index === labels.length - 1 ? " or " : ", ");
      parts.push(strong(label));
    });
    return parts;
  }

  function coverageSentence(share) {
    return (
      `A set like this contains the right label for ${EGR.percent(share)} of photos like the ones the ` +
      "model was calibrated on. It is a promise about many photos, not about this one, and it holds less " +
      "well for photos unlike the training photos."
    );
  }

  function renderVerdict(result, info) {
    const verdict = $("verdict");
    const note = $("coverage-note");
    const members = predictionSet(result);
    const count = result.scores.length;
    const top = result.scores[0];
    const none = result.abstained || (members !== null && members.length === 0);
    verdict.innerHTML = "";
    verdict.classList.toggle("abstain", none);
    verdict.dataset.kind = none ? "none" : members === null ? "label" : members.length === 1 ? "single" : "set";
    note.hidden = true;
    const line = document.createElement("p");
    verdict.append(line);
    if (none) {
      line.append(
        strong(`${EGR.noneOfThese(info, count)}.`),
        ` The photo does not look enough like any of the ${count} labels the model knows ` +
          `(closest: ${top.label}, ${EGR.percent(top.probability)}).`,
      );
      return;
    }
    if (members === null || members.length === 1) {
      const label = members === null ? result.label : members[0];
      const score = result.scores.find((s) => s.label === label);
      const probability = score ? score.probability : result.confidence;
      line.append("Most like ", strong(label), ` (${EGR.percent(probability)}).`);
    } else if (members.length <= SET_UNFOLDED_MAX) {
      line.append("One of: ", ...alternatives(members), ".");
    } else {
      line.append(strong("Uncertain"), `: it could be any of ${members.length} labels.`);
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = `Show the ${members.length} labels`;
      const list = document.createElement("ul");
      for (const label of members) {
        list.append(Object.assign(document.createElement("li"), { textContent: label }));
      }
      details.append(summary, list);
      verdict.append(details);
    }
    // A model without set calibration (coverage null) answers its top label alone: no promise to state.
    const share = coverage(result);
    if (members !== null && share !== null) {
      note.textContent = coverageSentence(share);
      note.hidden = false;
    }
  }

  /** The labels the answer names: the set's members, else the label; none when abstaining. */
  function named(result) {
    const members = predictionSet(result);
    if (result.abstained) return [];
    if (members && members.length) return members;
    return result.label ? [result.label] : [];
  }

  function renderLowData(result) {
    const warning = $("low-data-warning");
    const names = named(result);
    const low = result.scores.filter((s) => s.low_data && names.includes(s.label));
    if (!low.length) {
      warning.hidden = true;
      return;
    }
    const parts = low.map((s) => `${s.training_images} training photo${s.training_images === 1 ? "" : "s"} of ${s.label}`);
    warning.textContent =
      `Warning: the model has seen only ${EGR.listing(parts)}. ` +
      `This answer is a guess; check it before relying on it.`;
    warning.hidden = false;
  }

  /** The ranked rows: every label, and "none of these" (1 - their sum) as its own row. */
  function rows(result, info) {
    const total = result.scores.reduce((sum, s) => sum + (Number(s.probability) || 0), 0);
    const noneRow = {
      label: `${EGR.noneOfThese(info, result.scores.length)}`,
      probability: Math.max(0, Math.min(1, 1 - total)),
      none: true,
    };
    const all = result.scores.map((s) => ({ ...s, none: false }));
    const at = all.findIndex((s) => s.probability < noneRow.probability);
    all.splice(at === -1 ? all.length : at, 0, noneRow);
    return all;
  }

  function renderScores(result, info) {
    const list = $("scores");
    list.innerHTML = "";
    const topLabel = result.abstained ? null : result.scores[0].label;
    for (const score of rows(result, info)) {
      const item = document.createElement("li");
      item.className = "score" + (score.none ? " none-of-these" : "") + (score.label === topLabel && !score.none ? " top" : "");
      item.dataset.label = score.none ? "" : score.label;
      const head = document.createElement("div");
      head.className = "score-head";
      const label = document.createElement("span");
      label.className = "score-label";
      label.textContent = score.label;
      head.append(label);
      if (score.low_data) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = `few training photos (${score.training_images})`;
        head.append(" ", badge);
      }
      const value = document.createElement("span");
      value.className = "score-value";
      value.textContent = EGR.percent(score.probability);
      head.append(value);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(0, Math.min(100, score.probability * 100)).toFixed(1)}%`;
      bar.append(fill);
      item.append(head, bar);
      list.append(item);
    }
  }

  /**
   * Show one prediction (the API's /api/v1/predict shape: label, confidence, abstained, scores
   * [{label, probability, training_images, low_data}], prediction_set, coverage) for the photo
   * ``name``. ``info`` is EGR.describe(model). ``#result`` gets data-photo (the name), data-label
   * (the label, "" when abstaining) and data-prediction-set (JSON, absent for an older server).
   */
  function render(result, name, info) {
    renderVerdict(result, info);
    renderLowData(result);
    renderScores(result, info);
    const element = $("result");
    element.dataset.photo = name;
    element.dataset.label = result.abstained || typeof result.label !== "string" ? "" : result.label;
    const members = predictionSet(result);
    if (members === null) delete element.dataset.predictionSet;
    else element.dataset.predictionSet = JSON.stringify(members);
    element.hidden = false;
  }

  /** The answer in a few words, for a gallery caption: the label, "A or B", or "none of these". */
  function shortAnswer(result, info) {
    const members = predictionSet(result);
    if (result.abstained || (members !== null && members.length === 0)) return EGR.noneOfThese(info, result.scores.length);
    if (members === null || members.length === 1) return members ? members[0] : result.label;
    return members.length <= SET_UNFOLDED_MAX ? EGR.listing(members, "or") : `uncertain (${members.length} labels)`;
  }

  /**
   * The sentence on when the model says "none of these", by its abstain rule (calibrate.py), into
   * #threshold-hint; hidden for a model that cannot abstain.
   */
  function showThreshold(info) {
    const hint = $("threshold-hint");
    if (!hint) return;
    hint.hidden = !info.canAbstain;
    if (info.threshold === null) return;
    const at = `${EGR.percent(info.threshold)} (its calibrated threshold)`;
    const none = EGR.noneOfThese(info, info.labels.length).replace(/^None/, "none");
    hint.textContent =
      info.abstainRule === "in-scope-share"
        ? `It answers "${none}" when the top label's share of it and the "${none}" row together ` +
          `is under ${at}.`
        : `It answers "${none}" when the top label is below ${at}.`;
  }

  /**
   * Show the photo being classified in #preview (its previous object URL released) and hide the
   * last photo's heatmap; returns the photo's object URL, which the heatmap overlay draws on.
   */
  function showPreview(blob, name) {
    const preview = $("preview");
    if (preview.dataset.url) URL.revokeObjectURL(preview.dataset.url);
    const url = URL.createObjectURL(blob);
    preview.dataset.url = url;
    preview.onerror = () => {
      $("preview-figure").hidden = true;
    };
    preview.src = url;
    preview.alt = `The photo being classified: ${name}`;
    $("preview-caption").textContent = name;
    $("heatmap").hidden = true;
    $("heatmap-toggle-row").hidden = true;
    $("heatmap-legend").hidden = true;
    $("preview-figure").hidden = false;
    return url;
  }

  return { render, shortAnswer, predictionSet, showThreshold, showPreview, SET_UNFOLDED_MAX };
})();
