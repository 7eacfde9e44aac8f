"""Research on trained dual encoders in the DCASE 2025 Task 6 setting.

Clotho and captions data (`data`), the contrastive and distillation losses (`losses`), training with
its config and data pipeline (`train`, `train_config`, `train_data`), evaluation, prediction and
ensembling (`evaluation`), and retrieval metrics as pure functions (`metrics`). Modules here may import
the ground floor and `audiofind.models`, never `library`, `server` or `cli`.
"""
