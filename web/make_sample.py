"""Make the page's committed sample: shapes_cnn with Grad-CAM and LayerCAM (and their overlays) embedded,
plus one of the sample images.

    python web/make_sample.py

writes web/sample/shapes_cnn.cam.onnx (``onnxcam embed sample_models/shapes_cnn.onnx --cam gradcam,layercam
--overlay -o ...``) and web/sample/sample.png (a copy of sample_models/images/triangle_1.png, 64×64 like the
model's input, so the page's map equals Python's without any resizing).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE_MODEL = ROOT / "sample_models" / "shapes_cnn.onnx"
SOURCE_IMAGE = ROOT / "sample_models" / "images" / "triangle_1.png"
SAMPLE = pathlib.Path(__file__).resolve().parent / "sample"
METHODS = "gradcam,layercam"


def main() -> int:
    SAMPLE.mkdir(exist_ok=True)
    out = SAMPLE / "shapes_cnn.cam.onnx"
    cmd = [sys.executable, "-m", "onnxcam.cli", "embed", str(SOURCE_MODEL), "--cam", METHODS, "--overlay",
           "-o", str(out)]
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode != 0:
        print(f"error: `{' '.join(cmd[2:])}` failed (exit {done.returncode})", file=sys.stderr)
        return done.returncode
    shutil.copyfile(SOURCE_IMAGE, SAMPLE / "sample.png")
    print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size} bytes) and {(SAMPLE / 'sample.png').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
