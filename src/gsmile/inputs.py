"""Mask -> model input: the text the model sees when only some units are kept.

The explained text (the prompt, or a grounding context) is split into units by a
:class:`~gsmile.units.Segmentation`; a mask keeps some of them. When a context is
explained, the prompt stays fixed and both are placed in the user turn by a template.
Everything that turns a mask into a model input lives here, so the explainer, the
faithfulness measures and the server's detection scores build the same texts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError
from .units import Segmentation

#: How a context and the prompt share the user turn when the context is explained.
CONTEXT_TEMPLATE = "Context:\n{context}\n\nQuestion: {prompt}"


def check_template(template: object) -> str:
    """``template`` if it is text with ``{context}`` and ``{prompt}`` (other braces doubled),
    else InvalidInputError naming ``context_template``."""
    try:
        ok = isinstance(template, str) and "{context}" in template and "{prompt}" in template
        ok = ok and template.format(context="", prompt="") is not None
    except (KeyError, IndexError, ValueError):
        ok = False
    if not ok:
        raise InvalidInputError(
            "context_template must be text containing {context} and {prompt} (write other braces as {{ and }})",
            field="context_template",
        )
    return template


def user_turn(prompt: str, context: str | None, template: str = CONTEXT_TEMPLATE) -> str:
    """The user turn for ``prompt`` with ``context`` (the prompt alone without one)."""
    if context is None or not context.strip():
        return prompt
    return template.format(context=context, prompt=prompt)


@dataclass(frozen=True)
class ModelInput:
    """The model's input for any mask over the explained units.

    segmentation: the explained text's units; prompt: the prompt; context: the context when
    the context is explained (then ``segmentation`` is over it, and ``template`` joins it
    with the fixed prompt)."""

    segmentation: Segmentation
    prompt: str
    context: str | None = None
    template: str = CONTEXT_TEMPLATE

    def render(self, mask) -> str:
        """The model's input with the units of ``mask`` kept."""
        text = self.segmentation.render(mask)
        return text if self.context is None else self.template.format(context=text, prompt=self.prompt)

    def render_all(self, masks) -> list[str]:
        return [self.render(m) for m in np.atleast_2d(np.asarray(masks, dtype=bool))]

    @property
    def original(self) -> str:
        """The input with every unit kept."""
        return self.render(self.segmentation.full_mask)

    @classmethod
    def of(cls, explanation) -> "ModelInput":
        """The inputs an :class:`~gsmile.explanation.Explanation` was made from."""
        segmentation = Segmentation(explanation.text, explanation.units)
        if explanation.explained == "context":
            template = explanation.params.get("context_template") or CONTEXT_TEMPLATE
            return cls(segmentation, explanation.prompt, explanation.context, template)
        return cls(segmentation, explanation.prompt)
