// Pillow's bilinear resize and Gaussian blur for 8-bit RGB, bit for bit, so the page feeds the
// model exactly the pixels Python's views.render_views and explain.py do (local/views.js). Canvas smoothing is
// not used: its filter and rounding differ between browsers and from Pillow.
//
// Transcribed from Pillow's src/libImaging/Resample.c (precompute_coeffs, normalize_coeffs_8bpc,
// ImagingResample{Horizontal,Vertical}_8bpc, ImagingResampleInner) and BoxBlur.c
// (_gaussian_blur_radius, ImagingHorizontalBoxBlur, ImagingLineBoxBlur32, ImagingBoxBlur).
// Images here are packed RGB: Uint8Array of width * height * 3.

const PRECISION_BITS = 32 - 8 - 2;
const f32 = Math.fround;

/** Pillow's bilinear filter: a triangle of support 1, widened by the scale when reducing. */
function bilinear(x) {
  const a = x < 0 ? -x : x;
  return a < 1 ? 1 - a : 0;
}

/** Per output pixel: first input index, count, and fixed-point weights (Pillow's precompute_coeffs). */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const row = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = bilinear((x + xmin - center + 0.5) * ss);
      row[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      let k = x < xmax ? row[x] : 0;
      if (x < xmax && ww !== 0) k /= ww;
      // normalize_coeffs_8bpc: round half away from zero to 22 fractional bits.
      weights[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * (1 << PRECISION_BITS)) : Math.trunc(0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, weights, ksize };
}

/** Pillow's clip8: the accumulator shifted back to 8 bits and clamped. */
function clip8(value) {
  const shifted = Math.floor(value / (1 << PRECISION_BITS));
  return shifted < 0 ? 0 : shifted > 255 ? 255 : shifted;
}

/**
 * Resize packed RGB from (width, height) to (outWidth, outHeight) as Pillow's
 * ``Image.resize(size, Image.Resampling.BILINEAR)`` does (no reducing_gap): a horizontal pass
 * into an 8-bit intermediate over the rows the vertical pass needs, then a vertical pass.
 */
export function resizeBilinear(rgb, width, height, outWidth, outHeight) {
  if (rgb.length !== width * height * 3) throw new Error("resizeBilinear: buffer size does not match");
  const needHorizontal = outWidth !== width;
  const needVertical = outHeight !== height;
  if (!needHorizontal && !needVertical) return new Uint8Array(rgb);
  const vertical = coefficients(height, outHeight);
  const first = vertical.bounds[0];
  const last = vertical.bounds[outHeight * 2 - 2] + vertical.bounds[outHeight * 2 - 1];
  let source = rgb;
  let sourceWidth = width;
  let rowOffset = 0;
  if (needHorizontal) {
    const { bounds, weights, ksize } = coefficients(width, outWidth);
    const rows = last - first;
    const temp = new Uint8Array(outWidth * rows * 3);
    const half = 1 << (PRECISION_BITS - 1);
    for (let yy = 0; yy < rows; yy++) {
      const inRow = (yy + first) * width * 3;
      const outRow = yy * outWidth * 3;
      for (let xx = 0; xx < outWidth; xx++) {
        const xmin = bounds[xx * 2];
        const count = bounds[xx * 2 + 1];
        const k = xx * ksize;
        let s0 = half;
        let s1 = half;
        let s2 = half;
        for (let x = 0; x < count; x++) {
          const w = weights[k + x];
          const p = inRow + (x + xmin) * 3;
          s0 += rgb[p] * w;
          s1 += rgb[p + 1] * w;
          s2 += rgb[p + 2] * w;
        }
        const o = outRow + xx * 3;
        temp[o] = clip8(s0);
        temp[o + 1] = clip8(s1);
        temp[o + 2] = clip8(s2);
      }
    }
    source = temp;
    sourceWidth = outWidth;
    rowOffset = first; // the intermediate starts at the first row the vertical pass reads
  }
  if (!needVertical) return source;
  const { bounds, weights, ksize } = vertical;
  const out = new Uint8Array(sourceWidth * outHeight * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = bounds[yy * 2] - rowOffset;
    const count = bounds[yy * 2 + 1];
    const k = yy * ksize;
    const outRow = yy * sourceWidth * 3;
    for (let xx = 0; xx < sourceWidth; xx++) {
      let s0 = half;
      let s1 = half;
      let s2 = half;
      for (let y = 0; y < count; y++) {
        const w = weights[k + y];
        const p = ((y + ymin) * sourceWidth + xx) * 3;
        s0 += source[p] * w;
        s1 += source[p + 1] * w;
        s2 += source[p + 2] * w;
      }
      const o = outRow + xx * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return out;
}

/** The extended-box radius Pillow uses for a Gaussian of ``radius`` (float32 arithmetic, as in C). */
export function gaussianBoxRadius(radius, passes) {
  const r = f32(radius);
  const sigma2 = f32(f32(r * r) / passes);
  const L = f32(Math.sqrt(12.0 * sigma2 + 1.0));
  const l = f32(Math.floor((L - 1.0) / 2.0));
  let a = f32(f32(f32(2 * l) + 1) * f32(f32(l * f32(l + 1)) - f32(3 * sigma2)));
  const l1 = f32(l + 1);
  a = f32(a / f32(6 * f32(sigma2 - f32(l1 * l1))));
  return f32(l + a);
}

/**
 * One pass of Pillow's extended box blur along ``count`` pixels that start at ``start`` and lie
 * ``stride`` bytes apart, in place (ImagingLineBoxBlur32 reading a copy of the line).
 */
function boxBlurLine(data, start, stride, count, radius, edgeA, edgeB, ww, fw, line) {
  for (let i = 0; i < count; i++) {
    const p = start + i * stride;
    line[i * 3] = data[p];
    line[i * 3 + 1] = data[p + 1];
    line[i * 3 + 2] = data[p + 2];
  }
  const lastx = count - 1;
  for (let c = 0; c < 3; c++) {
    const at = (x) => line[x * 3 + c];
    const save = (x, bulk) => {
      data[start + x * stride + c] = Math.floor((bulk + (1 << 23)) / (1 << 24)) & 255;
    };
    let acc = at(0) * (radius + 1);
    for (let x = 0; x < edgeA - 1; x++) acc += at(x);
    acc += at(lastx) * (radius - edgeA + 1);
    if (edgeA <= edgeB) {
      for (let x = 0; x < edgeA; x++) {
        acc += at(x + radius) - at(0);
        save(x, acc * ww + (at(0) + at(x + radius + 1)) * fw);
      }
      for (let x = edgeA; x < edgeB; x++) {
        acc += at(x + radius) - at(x - radius - 1);
        save(x, acc * ww + (at(x - radius - 1) + at(x + radius + 1)) * fw);
      }
      for (let x = edgeB; x <= lastx; x++) {
        acc += at(lastx) - at(x - radius - 1);
        save(x, acc * ww + (at(x - radius - 1) + at(lastx)) * fw);
      }
    } else {
      for (let x = 0; x < edgeB; x++) {
        acc += at(x + radius) - at(0);
        save(x, acc * ww + (at(0) + at(x + radius + 1)) * fw);
      }
      for (let x = edgeB; x < edgeA; x++) {
        acc += at(lastx) - at(0);
        save(x, acc * ww + (at(0) + at(lastx)) * fw);
      }
      for (let x = edgeA; x <= lastx; x++) {
        acc += at(lastx) - at(x - radius - 1);
        save(x, acc * ww + (at(x - radius - 1) + at(lastx)) * fw);
      }
    }
  }
}

/** ``passes`` box-blur passes of float ``boxRadius`` along every line of one direction. */
function boxBlurDirection(data, lines, count, lineStep, stride, boxRadius, passes) {
  const radius = Math.trunc(boxRadius);
  const ww = Math.trunc(f32(16777216 / f32(f32(boxRadius * 2) + 1)));
  const fw = Math.floor((16777216 - (radius * 2 + 1) * ww) / 2);
  const edgeA = Math.min(radius + 1, count);
  const edgeB = Math.max(count - radius - 1, 0);
  const line = new Uint8Array(count * 3);
  for (let pass = 0; pass < passes; pass++) {
    for (let l = 0; l < lines; l++) boxBlurLine(data, l * lineStep, stride, count, radius, edgeA, edgeB, ww, fw, line);
  }
}

/** ``image.filter(ImageFilter.GaussianBlur(radius))`` on packed RGB (three extended-box passes each way). */
export function gaussianBlur(rgb, width, height, radius, passes = 3) {
  const out = new Uint8Array(rgb);
  if (radius === 0) return out;
  const boxRadius = gaussianBoxRadius(radius, passes);
  if (boxRadius !== 0) {
    boxBlurDirection(out, height, width, width * 3, 3, boxRadius, passes); // rows
    boxBlurDirection(out, width, height, 3, width * 3, boxRadius, passes); // columns
  }
  return out;
}

/** ``Image.crop((left, top, right, bottom))`` of packed RGB, for a box inside the image. */
export function crop(rgb, width, height, left, top, right, bottom) {
  if (!(0 <= left && left < right && right <= width && 0 <= top && top < bottom && bottom <= height)) {
    throw new Error(`crop: box ${[left, top, right, bottom]} is not inside ${width}x${height}`);
  }
  const rowBytes = (right - left) * 3;
  const out = new Uint8Array(rowBytes * (bottom - top));
  for (let y = top; y < bottom; y++) {
    const from = (y * width + left) * 3;
    out.set(rgb.subarray(from, from + rowBytes), (y - top) * rowBytes);
  }
  return out;
}

/** ``ImageOps.mirror``: flip packed RGB left to right. */
export function mirror(rgb, width, height) {
  const out = new Uint8Array(rgb.length);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const from = (y * width + x) * 3;
      const to = (y * width + (width - 1 - x)) * 3;
      out[to] = rgb[from];
      out[to + 1] = rgb[from + 1];
      out[to + 2] = rgb[from + 2];
    }
  }
  return out;
}

/**
 * RGBA (as a canvas returns it) to packed RGB, transparent areas composited on white with
 * Pillow's integer ``alpha_composite`` (what images.load_image does for images with alpha).
 */
export function rgbaToRgbOnWhite(rgba) {
  const n = rgba.length / 4;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const a = rgba[i * 4 + 3];
    for (let c = 0; c < 3; c++) {
      const v = rgba[i * 4 + c];
      if (a === 255) {
        out[i * 3 + c] = v;
      } else if (a === 0) {
        out[i * 3 + c] = 255;
      } else {
        // AlphaComposite.c with an opaque white destination: coef1 = a * 128, coef2 = (255 - a) * 128.
        const tmp = v * a * 128 + 255 * (255 - a) * 128 + (0x80 << 7);
        out[i * 3 + c] = ((((tmp >>> 8) + tmp) >>> 8) >>> 7) & 255;
      }
    }
  }
  return out;
}

/** Packed RGB (size x size) to the model's CHW float32 input, ``(pixel - 127) / 128``. */
export function toTensor(rgb, size, into = new Float32Array(3 * size * size), offset = 0) {
  const plane = size * size;
  for (let i = 0; i < plane; i++) {
    into[offset + i] = (rgb[i * 3] - 127) / 128;
    into[offset + plane + i] = (rgb[i * 3 + 1] - 127) / 128;
    into[offset + 2 * plane + i] = (rgb[i * 3 + 2] - 127) / 128;
  }
  return into;
}
