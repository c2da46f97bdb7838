// What Recognizer.probabilities, Recognizer.decide and explain._occlude decide, in JavaScript.
// Everything comes from the model's metadata.json and labels.json, as in Python, so a retrained
// model needs no change here. A field the page does not know yet (the prediction set of the
// conformal calibration) is read in one place, predictionSet(), and shown when present.

/** Facts the decision needs, from labels.json, metadata.json and the site manifest. */
export function modelFacts(labels, metadata, site) {
  const counts = metadata.training_counts || {};
  const threshold = Number(metadata.threshold);
  if (!(threshold >= 0 && threshold <= 1)) throw new Error(`the model's threshold is not between 0 and 1: ${metadata.threshold}`);
  return {
    labels,
    metadata,
    threshold,
    tta: Boolean(metadata.tta),
    imageSize: Number(metadata.preprocessing.image_size),
    trainingCounts: Object.fromEntries(labels.map((label) => [label, Number(counts[label] || 0)])),
    lowDataBelow: site.low_data_below,
    abstainText: site.abstain_text,
  };
}

/** Average the original and mirrored views' probability rows (float32, as numpy does). */
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
 * The prediction set, once the model's metadata carries a conformal calibration (issue 13):
 * null until then, so the page shows the single label or "none of these" exactly as today.
 * Implement it here, from ``facts.metadata``, as Python's Recognizer does.
 */
export function predictionSet(probabilities, facts, label) {
  void probabilities;
  void facts;
  void label;
  return null;
}

/** One probability row (K labels + the abstain class) to the prediction the API would return. */
export function decide(probabilities, facts) {
  const k = facts.labels.length;
  if (probabilities.length !== k + 1) {
    throw new Error(`the model returned ${probabilities.length} probabilities for ${k} labels plus "other"`);
  }
  const best = argmax(probabilities, k);
  const confidence = probabilities[best];
  const label = confidence >= facts.threshold ? facts.labels[best] : null;
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
    abstain_probability: probabilities[k],
    low_data: label !== null && isLow(label),
    scores,
    prediction_set: predictionSet(probabilities, facts, label),
  };
}

/** Python's round(): half to even. */
export function roundHalfEven(value) {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
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
