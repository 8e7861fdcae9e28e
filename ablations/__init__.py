"""Ablation sweeps: grids of notebook runs (papermill), collection into tidy CSVs, figures.

    python -m ablations run ablations/quality_vs_size.yaml --preset smoke --jobs 1 [--dry-run]
    python -m ablations collect --preset smoke
    python -m ablations figures --preset dev
    python -m ablations study --preset smoke      # everything, end to end (the README's main job)
"""
