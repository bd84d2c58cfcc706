"""The InverseFaceNet LightningModule, losses and metrics (SPEC §4, §7)."""
