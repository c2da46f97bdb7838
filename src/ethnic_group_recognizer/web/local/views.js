// The views of a photo the model looks at, as views.py renders them, bit for bit: the whole
// photo, its mirror and overlapping crops, each a box of the photo (fractions of its width and
// height) cropped to whole pixels (Python's round, half to even), resized with Pillow's bilinear
// filter to the model's square and, for a mirrored view, flipped. One resize per distinct box.
import { crop, mirror, resizeBilinear, toTensor } from "./pillow.js";

/** views.FULL: the whole photo, as fractions of its width and height. */
export const FULL_BOX = [0, 0, 1, 1];
/** model_dir.READABLE_VERSIONS: 1 (one view a row, averaged here), 2 (views averaged in the graph). */
const READABLE_FORMATS = [1, 2];
const isNumber = (value) => typeof value === "number" && Number.isFinite(value);
const isFull = (box) => box.every((value, index) => value === FULL_BOX[index]);

/** Python's round(): half to even (JavaScript's Math.round rounds x.5 up). */
export function roundHalfEven(value) {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * The views of a photo the model looks at, checked as ``views.parse_views`` checks them: format 2
 * reads ``preprocessing.views`` (``[{box: [l, t, r, b], mirror}]``, averaged inside the graph);
 * format 1 has the photo and, with ``tta``, its mirror (rows averaged by the page, as Recognizer.run).
 */
export function modelViews(metadata) {
  const format = metadata.format_version ?? 1;
  if (!READABLE_FORMATS.includes(format)) {
    throw new Error(`the model's format version ${format} is not one this page reads (${READABLE_FORMATS.join(", ")})`);
  }
  if (format < 2) {
    const views = [{ box: FULL_BOX, mirror: false }];
    return metadata.tta ? [...views, { box: FULL_BOX, mirror: true }] : views;
  }
  const data = (metadata.preprocessing || {}).views;
  const fail = (what) => {
    throw new Error(`the model's preprocessing.views is not usable: ${what}`);
  };
  if (!Array.isArray(data) || data.length < 1 || data.length > 32) fail("it must be a list of 1 to 32 views");
  return data.map((view) => {
    if (typeof view !== "object" || view === null || Array.isArray(view)) fail("each view must be an object");
    if (Object.keys(view).some((key) => key !== "box" && key !== "mirror")) fail("a view has only 'box' and 'mirror'");
    const { box } = view;
    const flipped = view.mirror ?? false;
    if (!Array.isArray(box) || box.length !== 4 || !box.every(isNumber)) fail("a view's box must be 4 numbers");
    const [left, top, right, bottom] = box;
    if (!(left >= 0 && left < right && right <= 1 && top >= 0 && top < bottom && bottom <= 1)) {
      fail(`a view's box must lie inside the photo (0..1), got [${box}]`);
    }
    if (typeof flipped !== "boolean") fail("a view's mirror must be true or false");
    return { box: [...box], mirror: flipped };
  });
}

/** views.pixel_box: a fractional box in whole pixels, ``round(left * width)`` etc. in Python's rounding. */
export function pixelBox(box, width, height) {
  const [left, top, right, bottom] = box;
  return [
    roundHalfEven(left * width),
    roundHalfEven(top * height),
    roundHalfEven(right * width),
    roundHalfEven(bottom * height),
  ];
}

/** One box of packed RGB (width x height) cropped to whole pixels and resized to size x size. */
export function renderBox(rgb, width, height, box, size) {
  if (isFull(box)) return resizeBilinear(rgb, width, height, size, size);
  const [left, top, right, bottom] = pixelBox(box, width, height);
  if (right <= left || bottom <= top) {
    throw new Error(`the photo (${width}x${height}) is too small for the model's view [${box}]`);
  }
  return resizeBilinear(crop(rgb, width, height, left, top, right, bottom), right - left, bottom - top, size, size);
}

/**
 * views.render_views: the model's input for ``views`` of one photo (packed RGB, already on
 * white), (V, 3, size, size) float32 ``(pixel - 127) / 128`` in the views' order, and the full
 * photo's resized RGB (what an explanation occludes).
 */
export function renderViews(rgb, width, height, views, size) {
  const plane = 3 * size * size;
  const pixels = new Float32Array(views.length * plane);
  const rendered = new Map();
  const render = (box) => {
    const key = box.join(",");
    if (!rendered.has(key)) rendered.set(key, renderBox(rgb, width, height, box, size));
    return rendered.get(key);
  };
  views.forEach((view, index) => {
    const resized = render(view.box);
    toTensor(view.mirror ? mirror(resized, size, size) : resized, size, pixels, index * plane);
  });
  return { pixels, full: render(FULL_BOX) };
}
