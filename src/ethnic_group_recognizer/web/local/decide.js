// What Recognizer.probabilities, Recognizer.decide and explain._occlude decide, in JavaScript.
// Everything comes from the model's metadata.json and labels.json, as in Python, so a retrained
// model needs no change here: the abstain rule and threshold (calibrate.in_scope_scores) and the
// prediction sets' conformal calibration (conformal.prediction_sets). Every step is written to
// give Python's float64 results bit for bit (numpy's pairwise sum included), so a photo's set is
// Python's set; tests/test_site_in_browser.py checks it under Node and in Chromium.

import { modelViews, roundHalfEven } from "./views.js";

/** calibrate.ABSTAIN_RULES; a model that names none uses the rule of models before prediction sets. */
export const ABSTAIN_RULES = ["top-label", "in-scope-share"];
export const LEGACY_ABSTAIN_RULE = "top-label";
/** conformal.METHODS and conformal.FORMAT. */
const CONFORMAL_METHODS = ["aps", "raps"];
const CONFORMAL_FORMAT = 1;

const isNumber = (value) => typeof value === "number" && Number.isFinite(value);

/**
 * The prediction-set calibration of ``metadata.conformal`` (``ConformalCalibration.to_dict()``),
 * checked as ``ConformalCalibration.from_dict`` and ``model_dir`` check it (the build already
 * loaded the model in Python, so this guards against a site edited by hand), or null without one.
 */
export function conformalFacts(data, labelCount, abstainRule) {
  if (data === undefined || data === null) return null;
  const fail = (what) => {
    throw new Error(`the model's conformal calibration is not usable: ${what}`);
  };
  if (typeof data !== "object" || Array.isArray(data)) fail("not an object");
  if ((data.format ?? CONFORMAL_FORMAT) !== CONFORMAL_FORMAT) fail(`unsupported format ${data.format}`);
  if (!CONFORMAL_METHODS.includes(data.method)) fail(`unknown method ${data.method}`);
  if (!(isNumber(data.coverage) && data.coverage > 0 && data.coverage < 1)) fail(`coverage ${data.coverage}`);
  if (data.n_labels !== labelCount) fail(`calibrated for ${data.n_labels} labels, the model has ${labelCount}`);
  if ((data.abstain_rule ?? LEGACY_ABSTAIN_RULE) !== abstainRule) {
    fail(`abstain_rule ${data.abstain_rule} differs from the model's ${abstainRule}`);
  }
  const quantile = (value, what, allowNull) => {
    if (value === null && allowNull) return null;
    if (!isNumber(value) || value < 0) fail(`${what} is ${value}`);
    return value;
  };
  const qhat = data.qhat === null || data.qhat === undefined ? Infinity : quantile(data.qhat, "qhat");
  const lowDataQhat = quantile(data.low_data_qhat ?? null, "low_data_qhat", true);
  const perClass = data.per_class_qhat ?? [];
  if (!Array.isArray(perClass) || (perClass.length && perClass.length !== labelCount)) {
    fail(`per_class_qhat has ${perClass.length} entries for ${labelCount} labels`);
  }
  // ConformalCalibration.fallback_qhat and label_qhat(): a class without its own quantile uses the
  // marginal one, raised to the pooled low-data quantile when there is one.
  const fallback = lowDataQhat === null ? qhat : Math.max(qhat, lowDataQhat);
  const labelQhat = perClass.length
    ? perClass.map((q, i) => (q === null ? fallback : quantile(q, `per_class_qhat[${i}]`)))
    : new Array(labelCount).fill(qhat);
  const kReg = data.k_reg ?? 0;
  const lam = data.lam ?? 0;
  if (!Number.isInteger(kReg) || kReg < 0) fail(`k_reg is ${kReg}`);
  quantile(lam, "lam");
  return {
    method: data.method,
    coverage: data.coverage,
    nLabels: labelCount,
    labelQhat,
    kReg,
    lam,
    randomized: data.randomized === true,
  };
}

/** Facts the decision needs, from labels.json, metadata.json and the site manifest. */
export function modelFacts(labels, metadata, site) {
  const counts = metadata.training_counts || {};
  const threshold = Number(metadata.threshold);
  if (!(threshold >= 0 && threshold <= 1)) throw new Error(`the model's threshold is not between 0 and 1: ${metadata.threshold}`);
  const abstainRule = metadata.abstain_rule ?? LEGACY_ABSTAIN_RULE;
  if (!ABSTAIN_RULES.includes(abstainRule)) throw new Error(`the model's abstain rule is unknown: ${abstainRule}`);
  return {
    labels,
    metadata,
    threshold,
    abstainRule,
    conformal: conformalFacts(metadata.conformal, labels.length, abstainRule),
    tta: Boolean(metadata.tta),
    views: modelViews(metadata),
    // Format 2 graphs take pixels [photos, V, 3, S, S] and average the views' features inside;
    // format 1 graphs take [rows, 3, S, S], one row a view, and the rows are averaged here.
    viewsInGraph: (metadata.format_version ?? 1) >= 2,
    imageSize: Number(metadata.preprocessing.image_size),
    trainingCounts: Object.fromEntries(labels.map((label) => [label, Number(counts[label] || 0)])),
    lowDataBelow: site.low_data_below,
    abstainText: site.abstain_text,
  };
}

/** Average a format-1 model's per-view probability rows (float32, as numpy's mean does). */
export function averageViews(rows) {
  if (rows.length === 1) return Float32Array.from(rows[0]);
  const out = new Float32Array(rows[0].length);
  for (let i = 0; i < out.length; i++) {
    let sum = 0;
    for (const row of rows) sum = Math.fround(sum + row[i]);
    out[i] = sum / rows.length;
  }
  return out;
}

/** Index of the largest of the first ``k`` values; the first one on ties (numpy.argmax). */
export function argmax(values, k) {
  let best = 0;
  for (let i = 1; i < k; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * numpy's float64 sum of a short row (``ndarray.sum``): pairwise summation, which for up to 128
 * values is eight running sums added as a tree, then the remainder; a plain loop under 8 values.
 * A plain left-to-right sum differs from it in the last bit for about 1 row in 300.
 */
export function numpySum(values) {
  const n = values.length;
  if (n > 128) throw new Error(`numpySum is written for at most 128 values, got ${n}`);
  let res = 0;
  if (n < 8) {
    for (let i = 0; i < n; i++) res += values[i];
    return res;
  }
  const r = Array.from(values.slice(0, 8));
  let i = 8;
  for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += values[i + j];
  res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
  for (; i < n; i++) res += values[i];
  return res;
}

/** calibrate.in_scope_scores for one row: the model abstains where this is under its threshold. */
export function inScopeScore(probabilities, k, rule) {
  let best = probabilities[0];
  for (let i = 1; i < k; i++) if (probabilities[i] > best) best = probabilities[i];
  if (rule === "top-label" || probabilities.length <= k) return best;
  const total = best + probabilities[k];
  return total > 0 ? best / total : 0;
}

/**
 * conformal.prediction_sets for one answered row: label indices, most likely first. The K label
 * probabilities renormalised to sum to 1 (uniform for an all-zero row), ranked (ties: lower index
 * first); a label's APS score is the mass ranked above it (plus, for RAPS, lam per rank past
 * k_reg); a label is in when its score is within its class's quantile, and the top label always.
 * ``random`` draws the u of a randomised calibration (Python's is unseeded too, so such sets vary).
 */
export function predictionSet(probabilities, conformal, random = Math.random) {
  const k = conformal.nLabels;
  const row = Array.from(probabilities.slice(0, k), Number);
  const total = numpySum(row);
  const known = total > 0 ? row.map((p) => p / total) : row.map(() => 1 / k);
  const order = known.map((_, i) => i).sort((a, b) => known[b] - known[a] || a - b);
  const u = conformal.randomized ? random() : null;
  const members = [];
  let above = 0; // the mass ranked strictly above, summed left to right as numpy.cumsum does
  order.forEach((label, rank) => {
    let score = u === null ? above : above + u * known[label];
    if (conformal.lam > 0) score += conformal.lam * Math.max(rank + 1 - conformal.kReg, 0);
    if (rank === 0 || score <= conformal.labelQhat[label]) members.push(label);
    above += known[label];
  });
  return members;
}

/**
 * One probability row (K labels + the abstain class) to the prediction the API would return
 * (serve.core.prediction_payload), decided as Recognizer.decide_rows: out of scope first (the
 * abstain rule's in-scope score under the threshold: no label, the empty set), then the top
 * label and the conformal set (the top label alone for a model without a calibration).
 */
export function decide(probabilities, facts) {
  const k = facts.labels.length;
  if (probabilities.length !== k + 1) {
    throw new Error(`the model returned ${probabilities.length} probabilities for ${k} labels plus "other"`);
  }
  const best = argmax(probabilities, k);
  const confidence = probabilities[best];
  const answered = inScopeScore(probabilities, k, facts.abstainRule) >= facts.threshold;
  const label = answered ? facts.labels[best] : null;
  const members = !answered ? [] : facts.conformal ? predictionSet(probabilities, facts.conformal) : [best];
  const isLow = (name) => facts.trainingCounts[name] < facts.lowDataBelow;
  const scores = facts.labels
    .map((name, index) => ({
      label: name,
      probability: probabilities[index],
      training_images: facts.trainingCounts[name],
      low_data: isLow(name),
    }))
    .sort((a, b) => b.probability - a.probability); // stable: ties keep the label order, as Python's sorted
  return {
    label,
    display_label: label === null ? facts.abstainText : label,
    confidence,
    abstained: label === null,
    low_data: label !== null && isLow(label),
    prediction_set: members.map((index) => facts.labels[index]),
    coverage: facts.conformal ? facts.conformal.coverage : null,
    scores,
    abstain_probability: probabilities[k],
    model: { name: facts.metadata.name, version: facts.metadata.version },
  };
}

/** The occluded windows of explain._occlude: [y0, y1, x0, x1] for each grid cell, row by row. */
export function occlusionBoxes(size, grid) {
  if (!Number.isInteger(grid) || grid < 2 || grid > 16) throw new Error(`grid must be an integer from 2 to 16, got ${grid}`);
  const cell = size / grid;
  const boxes = [];
  for (let row = 0; row < grid; row++) {
    for (let col = 0; col < grid; col++) {
      const cy = (row + 0.5) * cell;
      const cx = (col + 0.5) * cell;
      boxes.push([
        Math.max(0, roundHalfEven(cy - cell)),
        Math.min(size, roundHalfEven(cy + cell)),
        Math.max(0, roundHalfEven(cx - cell)),
        Math.min(size, roundHalfEven(cx + cell)),
      ]);
    }
  }
  return boxes;
}
