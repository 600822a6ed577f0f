"""White-box tools: methods that read or change a local model's internal activations."""
