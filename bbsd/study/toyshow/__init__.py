"""The toy show: a seeded renderer of stage photos of a puppet cast, with their truth, for a model that can see.

Invariant: everything it draws follows from the seed (and the photo size): the same arguments give
the same photos, byte for byte, and the same `bbsd eval` manifest. The public face is here:
`render_show` writes a show to a folder, `render_photo` gives one photo in memory (for training),
`catalog_toml` gives the cast as a bbsd catalog, and `CAST`/`LOOKALIKES` name the entries.
"""

from bbsd.study.toyshow.cast import CAST, CHARACTERS, LOOKALIKES, PROPS, sprite
from bbsd.study.toyshow.render import Photo, render_photo
from bbsd.study.toyshow.show import MANIFEST, ToyShowError, catalog_toml, render_show

__all__ = ["CAST", "CHARACTERS", "LOOKALIKES", "MANIFEST", "PROPS", "Photo", "ToyShowError", "catalog_toml",
           "render_photo", "render_show", "sprite"]
