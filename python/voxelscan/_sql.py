"""Voxel tables for DataFusion's Python API, and SQL run by voxelscan with Arrow results."""

import os

from . import _voxelscan


def _locations(location):
    if isinstance(location, (str, os.PathLike)):
        return [os.fspath(location)]
    return [os.fspath(loc) for loc in location]


def _options(options):
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}


def table(location, *, name="voxels", **options):
    """A voxel table over a file, directory, glob or URL (or a list of them), for
    ``SessionContext.register_table(name, voxelscan.table(...))``.

    ``options`` are those of ``CREATE EXTERNAL TABLE … OPTIONS (…)`` (``scaling="raw"``, ``value_type=…``,
    ``world=False`` to drop the millimetre columns ``x, y, z, world_space, tr``, ``affine="…"`` for npy/raw files,
    ``grid="atlas.nii"`` for ``grid_i, grid_j, grid_k``, object-store keys such as ``**{"aws.region": "…"}``). The table is handed to DataFusion as an FFI table
    provider (filters on i, j, k, t pushed down as in the CLI); a ``datafusion`` package of another major version
    than :data:`DATAFUSION_MAJOR` is refused with an ``ImportError`` before anything crosses the boundary.
    """
    return _voxelscan.table(_locations(location), _options(options), name)


def table_function():
    """The ``voxels('path', 'key', 'value', …)`` table function:
    ``ctx.register_udtf(datafusion.udtf(voxelscan.table_function(), "voxels"))``."""
    return _voxelscan.TableFunction()


def table_factory(format="NIFTI"):
    """The ``CREATE EXTERNAL TABLE … STORED AS <format>`` factory:
    ``ctx.register_table_factory("NIFTI", voxelscan.table_factory("NIFTI"))``."""
    return _voxelscan.TableFactory(format)


def _stream(query, options, tables):
    named = {name: _locations(loc) for name, loc in tables.items()}
    return _voxelscan.run_sql(query, named, _options(options or {}))


def sql(query, *, options=None, **tables):
    """Run ``query`` (one or more statements; the last one's rows are returned) with each keyword registered as a
    voxel table: ``voxelscan.sql("SELECT t, avg(value) FROM bold GROUP BY t", bold="bold.nii")``.

    Returns a ``pyarrow.Table`` built from an Arrow C stream (``.to_pandas()``, ``polars.from_arrow(…)``).
    """
    import pyarrow as pa

    return pa.table(_stream(query, options, tables))


def sql_reader(query, *, options=None, **tables):
    """As :func:`sql`, but a ``pyarrow.RecordBatchReader`` that runs the query batch by batch as it is read."""
    import pyarrow as pa

    return pa.RecordBatchReader.from_stream(_stream(query, options, tables))
