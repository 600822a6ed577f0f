"""White-box attributions for local causal LMs: gradients (:mod:`.gradients`) and attention
hints (:mod:`.attention`), computed through the model's own tensors."""
