"""Per-family prompt conventions, in one table rather than branches through the engine.

The generic path needs nothing: the chat template comes from the text GGUF, and libmtmd wraps
the image in each family's own markers (<img>…</img> for InternVL, <|vision_start|>… for Qwen-VL,
<start_of_image> for Gemma 3). A row here only records what a family needs beyond that.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    system_role: bool = True  # False: the template refuses a system turn; prepend it to the user turn
    image_first: bool = True  # the image before the instruction (what these models were tuned on)
    fallback_template: str | None = None  # used only when the GGUF carries no chat template


VICUNA = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
          "{% elif m['role'] == 'user' %}USER: {% for p in m['content'] %}{{ p['text'] }}{% endfor %}\n"
          "{% endif %}{% endfor %}ASSISTANT:")

# keyed by the mmproj's clip.projector_type
FAMILIES: dict[str, Family] = {
    "mlp": Family(fallback_template=VICUNA),  # LLaVA 1.5 GGUFs often ship without a template
    "mlp_norm": Family(fallback_template=VICUNA),
    "ldp": Family(fallback_template=VICUNA),
    "pixtral": Family(system_role=False),  # Mistral templates accept only user/assistant turns
}
DEFAULT = Family()


def for_projector(projector: str | None) -> Family:
    return FAMILIES.get(projector or "", DEFAULT)
