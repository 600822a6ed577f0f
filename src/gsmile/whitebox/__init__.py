"""White-box tools for local causal LMs, computed through the model's own tensors.

* :mod:`.gradients`: gradient × input and integrated gradients over the input embeddings
  (Captum), summed over each unit's tokens;
* :mod:`.attention`: last-layer attention and attention rollout, summed the same way (hints,
  not attributions);
* :mod:`.attnlrp`: AttnLRP relevance (Llama models) through a private functional forward;
* :mod:`.patching`: activation patching between a clean and a corrupted prompt.

The methods of :mod:`gsmile.methods.whitebox` call the first three; ``gsmile patch`` the last.
Nothing here changes the shared model: no hook outlives its own forward pass, and none acts on
another thread's pass.
"""
