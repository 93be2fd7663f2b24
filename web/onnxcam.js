// onnxcam.js: read an onnxcam file's metadata, turn an image into the model's input, and run the file.
//
// Plain ES module with no DOM and no Node.js APIs, shared by the browser page (web/app.js) and the Node.js
// example (examples/node/explain.mjs). The ONNX Runtime namespace (onnxruntime-web or onnxruntime-node) is
// passed in by the caller, so the same code runs on both.
//
// Contract (an "embedded" onnxcam file): inputs `input` float32 [N,C,H,W] and `class_index` int64 [N]
// (-1 = the predicted class); outputs `logits` [N,K] and, per embedded method, `cam_<method>` [N,H,W] in
// [0,1] and optionally `overlay_<method>` uint8 [N,H,W,3] (RGB). Metadata: ModelProto.metadata_props,
// JSON values under `onnxcam.*` keys.

export class OnnxcamError extends Error {
  constructor(message) {
    super(message);
    this.name = 'OnnxcamError';
  }
}

/** Preprocessing assumed when a file carries none (the same as the Python runtime's). */
export const IMAGENET_PREPROCESSING = Object.freeze({
  resize: null,
  crop: null,
  scale: 1 / 255,
  mean: [0.485, 0.456, 0.406],
  std: [0.229, 0.224, 0.225],
  channel_order: 'RGB',
});

export const EMBED_HINT = 'embed one with `onnxcam embed MODEL --cam gradcam -o OUT`';

// ---------------------------------------------------------------------------------------------------------
// ONNX metadata: a minimal protobuf reader for ModelProto (graph = field 7, metadata_props = field 14,
// repeated StringStringEntryProto {key = 1, value = 2}).

function readVarint(buf, pos) {
  let value = 0;
  let factor = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new OnnxcamError('truncated varint');
    const byte = buf[pos++];
    value += (byte & 0x7f) * factor;
    if (byte < 0x80) return [value, pos];
    factor *= 128;
  }
  throw new OnnxcamError('bad varint');
}

/** Visit the fields of one protobuf message: callback(field, wireType, value | [start, end]). */
function forEachField(buf, start, end, callback) {
  let pos = start;
  while (pos < end) {
    let key;
    [key, pos] = readVarint(buf, pos);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field < 1) throw new OnnxcamError('bad field number');
    if (wire === 0) {
      let v;
      [v, pos] = readVarint(buf, pos);
      callback(field, wire, v);
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
      if (pos > end) throw new OnnxcamError('truncated field');
      callback(field, wire, null);
    } else if (wire === 2) {
      let len;
      [len, pos] = readVarint(buf, pos);
      if (pos + len > end) throw new OnnxcamError('truncated field');
      callback(field, wire, [pos, pos + len]);
      pos += len;
    } else {
      throw new OnnxcamError(`unsupported wire type ${wire}`);
    }
  }
  if (pos !== end) throw new OnnxcamError('truncated message');
}

/** The metadata_props of an ONNX file's bytes as {key: value}; throws OnnxcamError if it is not ONNX. */
export function readMetadataProps(bytes, name = 'the file') {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const decoder = new TextDecoder('utf-8');
  const props = {};
  let hasGraph = false;
  try {
    forEachField(buf, 0, buf.length, (field, wire, range) => {
      if (field === 7 && wire === 2) hasGraph = true;
      if (field === 14 && wire === 2) {
        let key = '';
        let value = '';
        forEachField(buf, range[0], range[1], (f, w, r) => {
          if (w !== 2) return;
          if (f === 1) key = decoder.decode(buf.subarray(r[0], r[1]));
          if (f === 2) value = decoder.decode(buf.subarray(r[0], r[1]));
        });
        props[key] = value;
      }
    });
  } catch (err) {
    if (!(err instanceof OnnxcamError)) throw err;
    hasGraph = false;
  }
  if (!hasGraph) {
    throw new OnnxcamError(`${name} is not an ONNX file; pass a .onnx file (export one with \`onnxcam export\`)`);
  }
  return props;
}

/** The onnxcam metadata of an ONNX file's bytes (camelCase fields; JSON values parsed). */
export function readMetadata(bytes, name = 'the file') {
  const props = readMetadataProps(bytes, name);
  const get = (key) => {
    const raw = props[`onnxcam.${key}`];
    if (raw === undefined) return undefined;
    try {
      return JSON.parse(raw);
    } catch {
      throw new OnnxcamError(`${name} has malformed metadata onnxcam.${key} (not JSON)`);
    }
  };
  return {
    props,
    isOnnxcam: Object.keys(props).some((k) => k.startsWith('onnxcam.')),
    inputSize: get('input_size') ?? null,
    preprocessing: get('preprocessing') ?? null,
    labels: get('labels') ?? null,
    cams: get('cams') ?? [],
    outputKind: get('output_kind') ?? null,
    formatVersion: get('format_version') ?? null,
  };
}

/** The embedded CAMs of a file whose outputs really exist (from metadata, else from `cam_*` output names). */
export function embeddedCams(meta, outputNames = null) {
  let cams = Array.isArray(meta.cams) ? meta.cams.filter((c) => c && c.output) : [];
  if (outputNames) {
    const have = new Set(outputNames);
    if (!cams.length) {
      cams = outputNames.filter((n) => n.startsWith('cam_')).map((n) => {
        const method = n.slice(4);
        return { method, output: n, overlay: have.has(`overlay_${method}`) ? `overlay_${method}` : null };
      });
    }
    cams = cams.filter((c) => have.has(c.output))
      .map((c) => ({ ...c, overlay: c.overlay && have.has(c.overlay) ? c.overlay : null }));
  }
  return cams;
}

/** The embedded CAM entry for `method` (null: the first one); one-line OnnxcamErrors otherwise. */
export function selectCam(meta, method = null, outputNames = null, name = 'the file') {
  const cams = embeddedCams(meta, outputNames);
  if (!cams.length) throw new OnnxcamError(`${name} has no embedded CAM; ${EMBED_HINT}`);
  if (method === null || method === undefined || method === '') return cams[0];
  const wanted = String(method).toLowerCase();
  const found = cams.find((c) => String(c.method).toLowerCase() === wanted);
  if (!found) {
    const have = cams.map((c) => c.method).join(', ');
    throw new OnnxcamError(`unknown method '${method}': ${name} embeds ${have} ` +
      `(embed others with \`onnxcam embed MODEL --cam ${method} -o OUT\`)`);
  }
  return found;
}

/** A class given as an index or a label name → its index (-1 / null / '' = the predicted class). */
export function classIndexOf(spec, labels, numClasses = null) {
  if (spec === null || spec === undefined || spec === '') return -1;
  const text = String(spec).trim();
  let index;
  if (/^-?\d+$/.test(text)) {
    index = Number(text);
  } else if (labels && labels.includes(text)) {
    index = labels.indexOf(text);
  } else {
    const hint = labels ? `a label (${labels.slice(0, 8).join(', ')}${labels.length > 8 ? ', …' : ''}) or ` : '';
    throw new OnnxcamError(`unknown class '${spec}'; pass ${hint}an index`);
  }
  const k = numClasses ?? (labels ? labels.length : null);
  if (index < -1 || (k !== null && index >= k)) {
    throw new OnnxcamError(`class ${index} is out of range; the model has ${k ?? 'fewer'} classes (0…${k - 1})`);
  }
  return index;
}

// ---------------------------------------------------------------------------------------------------------
// Images: {width, height, data, channels} with data a Uint8Array/Uint8ClampedArray of width*height*channels
// (channels 1, 2 = gray+alpha, 3 = RGB or 4 = RGBA).

/** Any decoded image → RGB {width, height, data} (alpha dropped, gray replicated). */
export function toRGB(image) {
  const { width, height } = image;
  const n = width * height;
  const ch = image.channels ?? Math.round(image.data.length / n);
  if (![1, 2, 3, 4].includes(ch) || image.data.length < n * ch) {
    throw new OnnxcamError(`cannot read a ${width}×${height} image with ${image.data.length} bytes`);
  }
  const out = new Uint8Array(n * 3);
  const src = image.data;
  for (let i = 0; i < n; i++) {
    if (ch >= 3) {
      out[3 * i] = src[ch * i];
      out[3 * i + 1] = src[ch * i + 1];
      out[3 * i + 2] = src[ch * i + 2];
    } else {
      const g = src[ch * i];
      out[3 * i] = g;
      out[3 * i + 1] = g;
      out[3 * i + 2] = g;
    }
  }
  return { width, height, channels: 3, data: out };
}

/** Python's round(): halves to even. */
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Per output index: [[srcIndex, weight], ...] along one axis. Area averaging when shrinking (`area`),
 * bilinear with half-pixel centres otherwise (the conventions of OpenCV's INTER_AREA / INTER_LINEAR). */
function axisWeights(src, dst, area) {
  const scale = src / dst;
  const table = [];
  for (let i = 0; i < dst; i++) {
    const taps = [];
    if (area && scale > 1) {
      const lo = i * scale;
      const hi = Math.min(src, lo + scale);
      for (let s = Math.floor(lo); s < hi; s++) {
        const w = Math.min(hi, s + 1) - Math.max(lo, s);
        if (w > 1e-12) taps.push([s, w / scale]);
      }
    } else {
      let x = (i + 0.5) * scale - 0.5;
      if (x < 0) x = 0;
      let x0 = Math.floor(x);
      let f = x - x0;
      if (x0 >= src - 1) {
        x0 = src - 1;
        f = 0;
      }
      taps.push([x0, 1 - f]);
      if (f > 0) taps.push([x0 + 1, f]);
    }
    table.push(taps);
  }
  return table;
}

/** Resize an RGB image to width × height (area when it shrinks in pixel count, else bilinear). */
export function resizeRGB(image, width, height) {
  const { width: sw, height: sh, data } = image;
  if (sw === width && sh === height) return image;
  const area = width * height < sw * sh;
  const wx = axisWeights(sw, width, area);
  const wy = axisWeights(sh, height, area);
  const rows = new Float64Array(sh * width * 3);
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        let acc = 0;
        for (const [s, w] of wx[x]) acc += w * data[(y * sw + s) * 3 + c];
        rows[(y * width + x) * 3 + c] = acc;
      }
    }
  }
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        let acc = 0;
        for (const [s, w] of wy[y]) acc += w * rows[(s * width + x) * 3 + c];
        out[(y * width + x) * 3 + c] = Math.min(255, Math.max(0, Math.round(acc)));
      }
    }
  }
  return { width, height, channels: 3, data: out };
}

function cropRGB(image, top, left, height, width) {
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const start = ((top + y) * image.width + left) * 3;
    out.set(image.data.subarray(start, start + width * 3), y * width * 3);
  }
  return { width, height, channels: 3, data: out };
}

/** The part of the image the model sees, RGB at [H, W]: short side to `resize`, centre `crop`, then (if the
 * size still differs) a plain resize to H × W. */
export function modelView(image, spec, size) {
  const [h, w] = size;
  let img = toRGB(image);
  if (spec.resize) {
    const short = Number(spec.resize);
    const scale = short / Math.min(img.width, img.height);
    img = resizeRGB(img, Math.max(1, roundHalfEven(img.width * scale)), Math.max(1, roundHalfEven(img.height * scale)));
  }
  if (spec.crop) {
    const [ch, cw] = Array.isArray(spec.crop) ? spec.crop : [spec.crop, spec.crop];
    const top = Math.max(0, Math.floor((img.height - ch) / 2));
    const left = Math.max(0, Math.floor((img.width - cw) / 2));
    img = cropRGB(img, top, left, Math.min(ch, img.height - top), Math.min(cw, img.width - left));
  }
  if (img.width !== w || img.height !== h) img = resizeRGB(img, w, h);
  return img;
}

function perChannel(value, fallback, channels) {
  const v = value === undefined || value === null ? fallback : value;
  const list = Array.isArray(v) ? v.map(Number) : [Number(v)];
  if (list.length !== 1 && list.length !== channels) {
    throw new OnnxcamError(`preprocessing needs ${channels} values (or one) per channel, got ${JSON.stringify(v)}`);
  }
  return Array.from({ length: channels }, (_, c) => Math.fround(list.length === 1 ? list[0] : list[c]));
}

/** RGB view → Float32Array [1, C, H, W]: x = (pixel·scale − mean) / std in `channel_order` (float32 steps,
 * as numpy does); a one-channel model gets the luma 0.299 R + 0.587 G + 0.114 B. */
export function normalise(view, spec, channels = 3) {
  const { width, height, data } = view;
  const n = width * height;
  const scale = Math.fround(spec.scale ?? 1 / 255);
  const mean = perChannel(spec.mean, 0, channels);
  const std = perChannel(spec.std, 1, channels);
  const bgr = String(spec.channel_order ?? 'RGB').toUpperCase() === 'BGR';
  const f = Math.fround;
  const luma = [f(0.299), f(0.587), f(0.114)];
  const out = new Float32Array(channels * n);
  for (let c = 0; c < channels; c++) {
    const src = bgr ? 2 - c : c;
    for (let i = 0; i < n; i++) {
      let p;
      if (channels === 1) {
        p = f(f(f(data[3 * i] * luma[0]) + f(data[3 * i + 1] * luma[1])) + f(data[3 * i + 2] * luma[2]));
      } else {
        p = data[3 * i + src];
      }
      out[c * n + i] = f(f(f(p * scale) - mean[c]) / std[c]);
    }
  }
  return out;
}

/** Class probabilities from logits: softmax, or a sigmoid for multi-label (`sigmoid`) heads. */
export function probabilities(logits, outputKind = null) {
  const z = Array.from(logits, Number);
  if (outputKind === 'sigmoid') return z.map((v) => 1 / (1 + Math.exp(-v)));
  const m = Math.max(...z);
  const e = z.map((v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Index of the largest value (the first one on ties, like numpy's argmax). */
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/** The jet colormap at t in [0, 1] → [r, g, b] bytes. */
export function jet(t) {
  const v = Math.min(1, Math.max(0, t));
  const ramp = (x) => Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - x)));
  return [ramp(3), ramp(2), ramp(1)].map((x) => Math.round(x * 255));
}

/** (1 − alpha)·view + alpha·jet(map), RGB bytes; for files that carry a CAM but no overlay output. */
export function colourise(view, map, alpha = 0.5) {
  const n = view.width * view.height;
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const heat = jet(map[i]);
    for (let c = 0; c < 3; c++) {
      const v = (1 - alpha) * view.data[3 * i + c] + alpha * heat[c] + 0.5;
      out[3 * i + c] = Math.min(255, Math.max(0, Math.floor(v)));
    }
  }
  return out;
}

/** RGB bytes → RGBA bytes (opaque), e.g. for ImageData or PNG encoders. */
export function rgbToRGBA(rgb, n) {
  const out = new Uint8ClampedArray(n * 4);
  for (let i = 0; i < n; i++) {
    out[4 * i] = rgb[3 * i];
    out[4 * i + 1] = rgb[3 * i + 1];
    out[4 * i + 2] = rgb[3 * i + 2];
    out[4 * i + 3] = 255;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Running a file.

/** An onnxcam file opened with an ONNX Runtime namespace: {session, meta, name}. */
export async function openModel(ort, bytes, options = {}, name = 'the file') {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const meta = readMetadata(data, name);
  let session;
  try {
    session = await ort.InferenceSession.create(data, options);
  } catch (err) {
    const first = String(err && err.message ? err.message : err).split('\n')[0];
    throw new OnnxcamError(`ONNX Runtime cannot open ${name}: ${first}`);
  }
  return { session, meta, name };
}

function inputShape(model) {
  if (Array.isArray(model.meta.inputSize) && model.meta.inputSize.length === 3) return model.meta.inputSize.map(Number);
  const info = model.session.inputMetadata;
  const shape = info && info[0] && info[0].shape;
  if (shape && shape.length === 4 && shape.slice(1).every((d) => typeof d === 'number')) return shape.slice(1);
  throw new OnnxcamError(`${model.name} does not record its input size (onnxcam.input_size); re-export it with onnxcam`);
}

/** Explain one decoded image with an embedded CAM.
 * Returns {method, classIndex, label, probability, probabilities, logits, width, height, map (Float32Array
 * H·W in [0,1]), overlay (RGB bytes from the graph or colourised here), overlayFromGraph, view}. */
export async function explain(ort, model, image, { method = null, classIndex = null } = {}) {
  const { session, meta, name } = model;
  const cam = selectCam(meta, method, session.outputNames, name);
  const [channels, h, w] = inputShape(model);
  const spec = { ...IMAGENET_PREPROCESSING, ...(meta.preprocessing || {}) };
  const view = modelView(image, spec, [h, w]);
  const x = normalise(view, spec, channels);
  const index = classIndexOf(classIndex, meta.labels);
  const [inputName, indexName] = session.inputNames.includes('input')
    ? ['input', 'class_index'] : session.inputNames;
  const feeds = {
    [inputName]: new ort.Tensor('float32', x, [1, channels, h, w]),
    [indexName]: new ort.Tensor('int64', BigInt64Array.of(BigInt(index)), [1]),
  };
  const logitsName = session.outputNames.includes('logits') ? 'logits' : session.outputNames[0];
  const fetches = [logitsName, cam.output, ...(cam.overlay ? [cam.overlay] : [])];
  let out;
  try {
    out = await session.run(feeds, fetches);
  } catch (err) {
    const first = String(err && err.message ? err.message : err).split('\n')[0];
    throw new OnnxcamError(`ONNX Runtime failed to run ${name}: ${first}`);
  }
  const logits = Array.from(out[logitsName].data, Number);
  if (index >= logits.length) {
    throw new OnnxcamError(`class ${index} is out of range; the model has ${logits.length} classes`);
  }
  const chosen = index < 0 ? argmax(logits) : index;
  const probs = probabilities(logits, meta.outputKind);
  const camTensor = out[cam.output];
  const dims = camTensor.dims;
  const [mh, mw] = dims.length >= 3 ? dims.slice(-2) : [h, w];
  let map = camTensor.data;
  if (camTensor.type === 'uint8') map = Float32Array.from(map, (v) => v / 255);
  else if (!(map instanceof Float32Array)) map = Float32Array.from(map, Number);
  map = map.slice(0, mh * mw);
  let overlay = null;
  let overlayFromGraph = false;
  if (cam.overlay && out[cam.overlay]) {
    overlay = Uint8Array.from(out[cam.overlay].data.subarray(0, mh * mw * 3));
    overlayFromGraph = true;
  } else if (mh === view.height && mw === view.width) {
    overlay = colourise(view, map);
  }
  return {
    method: cam.method,
    output: cam.output,
    classIndex: chosen,
    label: meta.labels && meta.labels[chosen] !== undefined ? String(meta.labels[chosen]) : null,
    probability: probs[chosen],
    probabilities: probs,
    logits,
    width: mw,
    height: mh,
    map,
    overlay,
    overlayFromGraph,
    view,
  };
}
