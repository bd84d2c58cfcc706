"""The network, its loss and metrics, the evaluator and the LightningModule."""
