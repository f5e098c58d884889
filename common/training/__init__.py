"""The one training loop and the objectives: trainer, reconstruction metrics, the SAE / NFM / joint objectives."""
