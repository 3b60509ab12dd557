# bbsd imports its backends lazily by name (engines.BACKENDS) and ships its sidecar JSON Schema.
from PyInstaller.utils.hooks import collect_data_files, collect_submodules

hiddenimports = collect_submodules("bbsd")
datas = collect_data_files("bbsd")
