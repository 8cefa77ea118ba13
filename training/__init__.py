"""Library code behind the `train/` scripts: checkpoint building, data preparation and training for Omni models."""
