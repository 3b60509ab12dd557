"""Before a labeler takes its first photo: does the prompt leave a photo room in the context, and a
warm-up label so the first photo of a show is not the slow one.

Invariant: run wherever the model is opened (the engine worker, or in-process with `[worker] isolate =
false`), the same checks with the same messages; a catalog that cannot fit fails the start, never
every photo.
"""

from __future__ import annotations

import time

import structlog
from PIL import Image

from bbsd.errors import ConfigError, PhotoError

log = structlog.get_logger("bbsd.worker")


_FIT_HINT = "raise [engine] context_size, or shorten the catalog (fewer entries, shorter descriptions)"


def warm_up(labeler, settings) -> None:
    """Label a generated image once before the first photo, so the first photo of a show is not
    the slow one: the prompt prefix gets cached and lazily allocated buffers exist. Memory is
    measured after this, so the recycling baseline includes them."""
    from bbsd.engine import prompt

    t0 = time.perf_counter()
    try:
        image = Image.new("RGB", (64, 48), (128, 128, 128))
        r = labeler.infer(image, prompt.for_settings(settings), attempt=0, cancelled=lambda: False)
    except PhotoError as e:  # the service still starts; the first photo will say what is wrong
        if e.code == "context_overflow":  # ... unless no photo can fit: then none would ever be labelled
            raise ConfigError(f"the prompt does not fit the context ({e.message})", _FIT_HINT) from None
        log.warning("engine.warm_up_failed", code=e.code, message=e.message, hint=e.hint)
        return
    log.info("engine.warmed_up", ms=round((time.perf_counter() - t0) * 1000), prompt_tokens=r.prompt_tokens,
             evaluated_tokens=r.evaluated_tokens)


def check_fit(labeler, settings) -> None:
    """Refuse, at start, a prompt that leaves a photo no room in the context: every photo would get an
    error sidecar while the service looked healthy. Measured with the real prompt (catalog, questions,
    reference gallery) and the costliest photo at `image_max_side`: a square (the most pixels), or for a
    family that tiles by shape its worst shape (InternVL: 4:3, 12 tiles + thumbnail; `families.Fit`).
    A backend that cannot measure (no `layout`, no context size) is not checked."""
    from bbsd.engine import prompt

    layout, context = getattr(labeler, "layout", None), getattr(settings.backend, "context_size", None)
    if layout is None or context is None:
        return
    side = settings.engine.image_max_side
    fit = getattr(labeler, "fit", None)
    shape = fit.costliest(side) if hasattr(fit, "costliest") else (side, side)
    try:
        parts = layout(prompt.for_settings(settings), Image.new("RGB", shape, (128, 128, 128)))
    except PhotoError as e:  # a reference photo unreadable: its photos wait for it (references.Images)
        log.warning("engine.fit_unmeasured", code=e.code, message=e.message)
        return
    needed, room = sum(parts.values()), settings.engine.max_output_tokens
    if needed > context:
        entries = len(settings.catalog.characters) + len(settings.catalog.props)
        refs = settings.catalog.reference_count() if settings.prompt.references != "off" else 0
        shown, fewer = (f" and its {refs} reference photos", ", fewer reference photos") if refs else ("", "")
        raise ConfigError(f"the prompt with a photo needs {needed} tokens ({parts['prefix']} before the photo: the "
                          f"instructions and the catalog of {entries} entries{shown}), [engine] context_size is "
                          f"{context}", f"raise [engine] context_size to at least {needed + room}, or shorten the "
                          f"catalog (fewer entries, shorter descriptions{fewer})")
    if context - needed < room:
        log.warning("engine.context_tight", prompt_tokens=needed, context_size=context, max_output_tokens=room,
                    hint=f"a long reply may not fit: raise [engine] context_size to {needed + room}")
