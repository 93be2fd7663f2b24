// The page: pick an onnxcam file and a photo, compute the embedded CAM with ONNX Runtime Web (wasm).
// After each run: window.onnxcamResult = {classIndex, label, probability, method, width, height, map: [...]}
// and #status[data-state] is "done" (or "error", with window.onnxcamError = message); it is "loading" until
// the page is ready for input, then "idle".
// index.html?autorun=sample[&method=NAME][&class=N] loads and explains the sample on page load.

import { OnnxcamError, embeddedCams, explain, openModel, rgbToRGBA, selectCam } from './onnxcam.js';

const ORT_DIR = new URL('./node_modules/onnxruntime-web/dist/', import.meta.url).href;
const SAMPLE_MODEL = new URL('./sample/shapes_cnn.cam.onnx', import.meta.url).href;
const SAMPLE_IMAGE = new URL('./sample/sample.png', import.meta.url).href;

const $ = (id) => document.getElementById(id);
const state = { ort: null, model: null, image: null, imageName: null };

function setStatus(text, kind = 'busy') {
  const el = $('status');
  el.textContent = text;
  el.dataset.state = kind;
}

function showError(err) {
  const message = err instanceof OnnxcamError ? err.message : `unexpected error: ${err && err.message ? err.message : err}`;
  window.onnxcamError = message;
  setStatus(message, 'error');
  console.error(message);
}

async function loadOrt() {
  try {
    const ort = await import(`${ORT_DIR}ort.wasm.min.mjs`);
    ort.env.wasm.wasmPaths = ORT_DIR;
    // Threads need a cross-origin isolated page (COOP/COEP headers); a plain static server gives one thread.
    if (!globalThis.crossOriginIsolated) ort.env.wasm.numThreads = 1;
    return ort;
  } catch (err) {
    throw new OnnxcamError(`cannot load onnxruntime-web from ${ORT_DIR} (run \`npm ci\` in web/ and serve web/ ` +
      `from a static server): ${err && err.message ? err.message : err}`);
  }
}

/** Bytes of an image (any format the browser reads) → {width, height, channels: 4, data: RGBA}. */
async function decodeImage(blob, name) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
  } catch {
    throw new OnnxcamError(`'${name}' is not an image this browser can read; pass a JPEG or PNG file`);
  }
  const canvas = document.createElement('canvas');
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
  return { width: canvas.width, height: canvas.height, channels: 4, data };
}

function draw(canvasId, rgb, width, height) {
  const canvas = $(canvasId);
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').putImageData(new ImageData(rgbToRGBA(rgb, width * height), width, height), 0, 0);
}

function fillMethods(model) {
  const select = $('method');
  select.replaceChildren();
  for (const cam of embeddedCams(model.meta, model.session.outputNames)) {
    const option = document.createElement('option');
    option.value = cam.method;
    option.textContent = cam.method + (cam.overlay ? '' : ' (no overlay output)');
    select.append(option);
  }
  select.disabled = select.options.length === 0;
}

async function setModel(bytes, name) {
  state.model = null;
  setStatus(`opening ${name}…`);
  const model = await openModel(state.ort, bytes, { executionProviders: ['wasm'], logSeverityLevel: 3 }, `'${name}'`);
  fillMethods(model);
  selectCam(model.meta, null, model.session.outputNames, `'${name}'`); // no embedded CAM: a one-line error
  state.model = model;
}

async function setImage(blob, name) {
  state.image = await decodeImage(blob, name);
  state.imageName = name;
}

async function run() {
  window.onnxcamResult = null;
  window.onnxcamError = null;
  if (!state.model || !state.image) {
    setStatus(!state.model ? 'choose an onnxcam model' : 'choose an image', 'idle');
    return null;
  }
  setStatus('computing the map…');
  const method = $('method').value || null;
  const result = await explain(state.ort, state.model, state.image, { method, classIndex: $('class').value });
  draw('view', result.view.data, result.view.width, result.view.height);
  if (result.overlay) draw('overlay', result.overlay, result.width, result.height);
  $('overlay-caption').textContent = `${result.method} overlay (${result.overlayFromGraph ? 'from the graph' : 'colourised on the page'})`;
  const name = result.label !== null ? `${result.label} (class ${result.classIndex})` : `class ${result.classIndex}`;
  $('prediction').textContent = `${name}: probability ${result.probability.toFixed(4)}`;
  window.onnxcamResult = {
    classIndex: result.classIndex,
    label: result.label,
    probability: result.probability,
    method: result.method,
    width: result.width,
    height: result.height,
    map: Array.from(result.map),
  };
  setStatus(`done: ${result.method} map ${result.height}×${result.width} for ${state.imageName}`, 'done');
  return result;
}

async function guarded(fn) {
  try {
    await fn();
  } catch (err) {
    showError(err);
  } finally {
    $('run').disabled = !(state.model && state.image);
  }
}

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new OnnxcamError(`cannot fetch ${url} (HTTP ${response.status}); run web/make_sample.py`);
  return response;
}

async function loadSample() {
  const [model, image] = await Promise.all([fetchBytes(SAMPLE_MODEL), fetchBytes(SAMPLE_IMAGE)]);
  await setModel(new Uint8Array(await model.arrayBuffer()), 'sample/shapes_cnn.cam.onnx');
  await setImage(await image.blob(), 'sample/sample.png');
}

async function main() {
  state.ort = await loadOrt();
  $('model').addEventListener('change', () => guarded(async () => {
    const file = $('model').files[0];
    if (!file) return;
    await setModel(new Uint8Array(await file.arrayBuffer()), file.name);
    await run();
  }));
  $('image').addEventListener('change', () => guarded(async () => {
    const file = $('image').files[0];
    if (!file) return;
    await setImage(file, file.name);
    await run();
  }));
  $('method').addEventListener('change', () => guarded(run));
  $('class').addEventListener('change', () => guarded(run));
  $('run').addEventListener('click', () => guarded(run));
  $('sample').addEventListener('click', () => guarded(async () => {
    await loadSample();
    await run();
  }));
  setStatus('choose an onnxcam model and an image, or load the sample', 'idle');
  const params = new URLSearchParams(location.search);
  if (params.get('autorun') === 'sample') {
    await loadSample();
    if (params.get('method')) $('method').value = params.get('method');
    if (params.get('class')) $('class').value = params.get('class');
    if (params.get('method') && $('method').value !== params.get('method')) {
      // not embedded: let explain() give its one-line error
      await explain(state.ort, state.model, state.image, { method: params.get('method') });
    }
    await run();
  }
}

guarded(main);
