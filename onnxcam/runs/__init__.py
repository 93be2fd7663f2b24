"""Whole jobs: a folder of images into files and records (manifest.jsonl, errors.jsonl, summary.json), on the
local engine or on Ray Data, with resume."""
