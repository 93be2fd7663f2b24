"""``python -m onnxcam.cli`` runs the onnxcam command."""

from onnxcam.cli.main import main

main()
