"""``python -m onnxcam.cli`` runs the onnxcam command."""

from .main import main

main()
