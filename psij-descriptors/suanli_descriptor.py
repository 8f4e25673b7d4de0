"""PSI/J finds its executors through ``psij-descriptors/*.py`` files on ``sys.path`` (a namespace folder, no
``__init__.py``); the class is looked up under the same ``sys.path`` entry, so this folder is installed next to
the ``suanli`` package (pyproject.toml: ``[tool.setuptools]``)."""

from packaging.version import Version
from psij.descriptor import Descriptor

__PSI_J_EXECUTORS__ = [
    Descriptor(name="suanli", nice_name="suanli", version=Version("0.1.0"),
               cls="suanli.interop._psij_plugin.SuanliJobExecutor"),
]
