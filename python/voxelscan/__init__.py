"""voxelscan for Python: nibabel images whose data is read by voxelscan, and SQL over voxels.

* :func:`load` — ``nibabel.load`` with voxelscan's array proxy as ``img.dataobj`` (gzip seek-point index for
  ``.nii.gz``, ``s3://`` / ``https://`` URLs, bit-identical to nibabel's proxy).
* :func:`table`, :func:`table_function`, :func:`table_factory` — voxel tables for DataFusion's Python API.
* :func:`sql` — run SQL here and get a ``pyarrow.Table`` (streamed through the Arrow C stream interface).
"""

from ._voxelscan import DATAFUSION_MAJOR, __version__
from ._proxy import VoxelProxy
from ._load import load
from ._sql import sql, sql_reader, table, table_factory, table_function

__all__ = [
    "DATAFUSION_MAJOR",
    "VoxelProxy",
    "__version__",
    "load",
    "sql",
    "sql_reader",
    "table",
    "table_factory",
    "table_function",
]
