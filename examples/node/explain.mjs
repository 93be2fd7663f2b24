#!/usr/bin/env node
// Read the class activation map an onnxcam file computes, with onnxruntime-node.
//
//   node explain.mjs MODEL IMAGE OUT.png [--method gradcam] [--class N|LABEL] [--map MAP.json|MAP.bin]
//
// Prints the class (label, softmax probability), writes the overlay PNG (the graph's `overlay_<method>`
// output when the file carries it, else `cam_<method>` colourised here) and, with --map, the float map
// (.json: {method, class_index, label, probability, height, width, map}; .bin: raw little-endian float32 H·W).

import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';

import { OnnxcamError, explain, openModel, rgbToRGBA } from '../../web/onnxcam.js';

const USAGE = 'usage: node explain.mjs MODEL IMAGE OUT.png [--method NAME] [--class N|LABEL] [--map OUT.json|OUT.bin]';

function fail(message) {
  process.stderr.write(`error: ${String(message).split('\n')[0]}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  const positional = [];
  const opts = { method: null, classIndex: null, map: null };
  const names = { '--method': 'method', '--class': 'classIndex', '--map': 'map' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '-h' || arg === '--help') {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    }
    const eq = arg.indexOf('=');
    const flag = arg.startsWith('--') && eq > 0 ? arg.slice(0, eq) : arg;
    if (flag in names) {
      let value;
      if (eq > 0 && flag !== arg) value = arg.slice(eq + 1);
      else if (i + 1 < argv.length) value = argv[++i];
      else fail(`${flag} needs a value; ${USAGE}`);
      opts[names[flag]] = value;
    } else if (arg.startsWith('--')) {
      fail(`unknown option ${arg}; ${USAGE}`);
    } else {
      positional.push(arg);
    }
  }
  if (positional.length !== 3) fail(USAGE);
  return { model: positional[0], image: positional[1], out: positional[2], ...opts };
}

async function loadCodecs() {
  try {
    const [{ PNG }, jpeg] = await Promise.all([import('pngjs'), import('jpeg-js')]);
    const ort = await import('onnxruntime-node');
    return { PNG, jpeg: jpeg.default ?? jpeg, ort: ort.default ?? ort };
  } catch (err) {
    fail(`cannot load the npm packages (${err.code ?? err.message}); run \`ONNXRUNTIME_NODE_INSTALL=skip npm ci\` in ${
      path.dirname(new URL(import.meta.url).pathname)}`);
  }
  return null;
}

function readFile(file, what) {
  if (!fs.existsSync(file)) fail(`${what} '${file}' does not exist; check the path`);
  if (fs.statSync(file).isDirectory()) fail(`${what} '${file}' is a folder, not a file`);
  return fs.readFileSync(file);
}

/** PNG or JPEG bytes → {width, height, channels: 4, data: RGBA}. */
function decodeImage(bytes, file, { PNG, jpeg }) {
  const isPNG = bytes.length > 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47;
  const isJPEG = bytes.length > 3 && bytes[0] === 0xff && bytes[1] === 0xd8;
  try {
    if (isPNG) {
      const png = PNG.sync.read(bytes);
      return { width: png.width, height: png.height, channels: 4, data: png.data };
    }
    if (isJPEG) {
      const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 1024 });
      return { width: img.width, height: img.height, channels: 4, data: img.data };
    }
  } catch (err) {
    fail(`'${file}' could not be decoded (${String(err.message ?? err).split('\n')[0]}); pass a PNG or JPEG file`);
  }
  fail(`'${file}' is not a PNG or JPEG image; convert it first`);
  return null;
}

function writeMap(file, result) {
  const ext = path.extname(file).toLowerCase();
  if (ext === '.bin') {
    const buf = Buffer.alloc(result.map.length * 4);
    result.map.forEach((v, i) => buf.writeFloatLE(v, i * 4));
    fs.writeFileSync(file, buf);
  } else if (ext === '.json') {
    fs.writeFileSync(file, JSON.stringify({
      method: result.method,
      class_index: result.classIndex,
      label: result.label,
      probability: result.probability,
      height: result.height,
      width: result.width,
      map: Array.from(result.map),
    }));
  } else {
    fail(`--map must end in .json or .bin, got '${file}'`);
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (!args.out.toLowerCase().endsWith('.png')) fail(`the output must be a .png file, got '${args.out}'`);
  if (args.map && !/\.(json|bin)$/i.test(args.map)) fail(`--map must end in .json or .bin, got '${args.map}'`);
  const modelBytes = readFile(args.model, 'model');
  const imageBytes = readFile(args.image, 'image');
  const libs = await loadCodecs();
  const image = decodeImage(imageBytes, args.image, libs);
  const model = await openModel(libs.ort, new Uint8Array(modelBytes), { executionProviders: ['cpu'], logSeverityLevel: 3 }, `'${args.model}'`);
  const result = await explain(libs.ort, model, image, { method: args.method, classIndex: args.classIndex });
  if (!result.overlay) fail(`the map (${result.height}×${result.width}) is not at the input resolution; cannot draw it`);
  const png = new libs.PNG({ width: result.width, height: result.height });
  png.data = Buffer.from(rgbToRGBA(result.overlay, result.width * result.height).buffer);
  fs.mkdirSync(path.dirname(path.resolve(args.out)), { recursive: true });
  fs.writeFileSync(args.out, libs.PNG.sync.write(png));
  if (args.map) writeMap(args.map, result);
  const name = result.label !== null ? `${result.label} (class ${result.classIndex})` : `class ${result.classIndex}`;
  const source = result.overlayFromGraph ? 'overlay from the graph' : 'colourised here';
  process.stdout.write(`${name}, probability ${result.probability.toFixed(4)}; ${result.method} ` +
    `${result.height}×${result.width} → ${args.out} (${source})\n`);
}

main().catch((err) => fail(err instanceof OnnxcamError ? err.message : (err && err.message) || err));
