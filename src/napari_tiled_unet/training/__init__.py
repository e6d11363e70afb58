"""Fine-tuning and training: targets from painted labels, patches, losses, the loop."""
