"""The runtime and the CLI's explain and bench paths work in a process where importing torch is impossible."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"torch is blocked in this test ({name})")
            return None

    sys.meta_path.insert(0, BlockTorch())
    import numpy as np
    import onnxcam.runtime
    from onnxcam.runtime import Explainer
    from onnxcam.cli.main import main

    model, image, out = sys.argv[1:4]
    explainer = Explainer(model, providers="cpu")
    for method in ("gradcam", "cfcam"):
        result = explainer.explain([image], method=method)
        assert result.cams.shape == (1, 32, 32) and np.isfinite(result.cams).all()
    try:
        main(["explain", model, image, "-o", out], standalone_mode=False)
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    import click
    try:
        main(["bench", model, "--batch", "1", "--method", "gradcam", "--warmup", "0", "--repeats", "1"],
             standalone_mode=False)
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
    try:
        main(["bench", model, "--torch-module", "nowhere:build"], standalone_mode=False)
        raise AssertionError("--torch-module without torch should fail")
    except click.ClickException as exc:
        assert "needs PyTorch" in exc.message, exc.message
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    assert not loaded, loaded
    print("NO-TORCH-OK")
""")


def test_explain_without_torch(tiny_model, images, tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model), str(images[0]), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "NO-TORCH-OK" in proc.stdout
    assert (tmp_path / "out" / "disc.cfcam.png").is_file()


def test_blocker_really_blocks():
    """The blocker in SCRIPT does stop a torch import (so the test above can fail)."""
    code = SCRIPT.split("import numpy as np")[0] + "import torch\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr
