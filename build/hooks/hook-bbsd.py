# bbsd imports its backends lazily by name (engines.BACKENDS) and ships data files: its sidecar JSON Schema,
# the model registry (bbsd/models/models.toml), the toy model's weights.
from PyInstaller.utils.hooks import collect_data_files, collect_submodules

hiddenimports = collect_submodules("bbsd")
datas = collect_data_files("bbsd")
