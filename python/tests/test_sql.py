"""SQL from Python: the `queries/` suite through datafusion-python (voxel tables registered over the FFI) and
through `voxelscan.sql` equals the CLI's expected CSVs; the table function and the STORED AS factory work; a
mismatched datafusion major version is refused before any capsule crosses; bad input raises."""

import csv
import io
import math
import re

import datafusion
import pyarrow as pa
import pytest

import voxelscan

CREATE = re.compile(
    r"^\s*CREATE EXTERNAL TABLE (\w+) STORED AS (\w+) LOCATION '([^']*)'\s*(?:OPTIONS\s*\((.*)\))?\s*$",
    re.IGNORECASE | re.DOTALL,
)
OPTION = re.compile(r"'([^']*)'\s+'([^']*)'")


def statements(sql):
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def query_files(repo):
    files = sorted((repo / "queries").glob("*.sql"))
    assert len(files) >= 6
    return files


def same_cell(got, want):
    if got == want:
        return True
    try:
        a, b = float(got), float(want)
    except ValueError:
        return False
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check_against_csv(results, expected_csv, name):
    """`results`: the pyarrow tables of the statements that return columns, in order; the CLI prints each as a
    header line and rows."""
    rows = list(csv.reader(io.StringIO(expected_csv)))
    at = 0
    for table in results:
        assert rows[at] == table.column_names, f"{name}: header {table.column_names} vs {rows[at]}"
        at += 1
        for values in zip(*(col.to_pylist() for col in table.columns)):
            want = rows[at]
            at += 1
            got = ["" if v is None else str(v) for v in values]
            assert all(same_cell(g, w) for g, w in zip(got, want)) and len(got) == len(want), (
                f"{name}: row {got} vs {want}"
            )
    assert at == len(rows), f"{name}: {len(rows) - at} expected rows left over"


def run_in_datafusion(ctx, sql):
    results = []
    for stmt in statements(sql):
        m = CREATE.match(stmt)
        if m and m.group(2).upper() == "NIFTI":
            options = dict(OPTION.findall(m.group(4) or ""))
            ctx.register_table(m.group(1), voxelscan.table(m.group(3), name=m.group(1), **options))
            continue
        table = ctx.sql(stmt).to_arrow_table()
        if table.num_columns:
            results.append(table)
    return results


def test_queries_through_datafusion_python_equal_the_cli(repo, query_dir):
    for path in query_files(repo):
        ctx = datafusion.SessionContext()
        results = run_in_datafusion(ctx, path.read_text())
        check_against_csv(results, path.with_suffix(".csv").read_text(), path.name)


def test_queries_through_the_stored_as_factory(repo, query_dir):
    for path in query_files(repo):
        ctx = datafusion.SessionContext()
        ctx.register_table_factory("NIFTI", voxelscan.table_factory("NIFTI"))
        results = []
        for stmt in statements(path.read_text()):
            table = ctx.sql(stmt).to_arrow_table()
            if table.num_columns and not CREATE.match(stmt):
                results.append(table)
        check_against_csv(results, path.with_suffix(".csv").read_text(), path.name)


def test_queries_through_voxelscan_sql(repo, query_dir):
    for path in query_files(repo):
        stmts = statements(path.read_text())
        results = []
        # voxelscan.sql returns the last statement's rows: statement n is run with all those before it.
        for n, stmt in enumerate(stmts):
            if CREATE.match(stmt):
                continue
            table = voxelscan.sql(";\n".join(stmts[: n + 1]))
            assert isinstance(table, pa.Table)
            if table.num_columns:
                results.append(table)
        check_against_csv(results, path.with_suffix(".csv").read_text(), path.name)


def test_sql_keyword_tables_and_pandas(query_dir):
    table = voxelscan.sql("SELECT t, avg(value) AS mean FROM bold GROUP BY t ORDER BY t", bold="bold.nii")
    df = table.to_pandas()
    assert list(df.columns) == ["t", "mean"] and len(df) == 6
    assert df["mean"].iloc[0] == pytest.approx(31.25)
    reader = voxelscan.sql_reader("SELECT value FROM bold WHERE t = 0", bold="bold.nii")
    assert sum(batch.num_rows for batch in reader) == 8 * 8 * 4


def test_table_function(query_dir):
    ctx = datafusion.SessionContext()
    ctx.register_udtf(datafusion.udtf(voxelscan.table_function(), "voxels"))
    got = ctx.sql("SELECT count(*) AS n, max(t) AS last FROM voxels('runs/')").to_pydict()
    assert got == {"n": [1536 + 432 + 512], "last": [5]}


def test_filters_are_pushed_into_the_scan(query_dir):
    ctx = datafusion.SessionContext()
    ctx.register_table("bold", voxelscan.table("bold.nii"))
    got = ctx.sql("SELECT count(*) AS n FROM bold WHERE k = 1 AND t < 2").to_pydict()
    assert got == {"n": [8 * 8 * 2]}


def test_version_mismatch_is_refused(query_dir, monkeypatch):
    table = voxelscan.table("bold.nii")
    monkeypatch.setattr(datafusion, "__version__", "54.1.0")
    ctx = datafusion.SessionContext()
    with pytest.raises(ImportError, match=r"DataFusion 55.*54\.1\.0"):
        table.__datafusion_table_provider__(ctx)
    with pytest.raises(ImportError, match="54.1.0"):
        ctx.register_table("bold", table)
    with pytest.raises(ImportError, match="54.1.0"):
        voxelscan.table_factory().__datafusion_table_provider_factory__(ctx)


def test_bad_tables_and_queries_raise(query_dir):
    with pytest.raises((FileNotFoundError, ValueError), match="missing.nii"):
        voxelscan.table("missing.nii")
    with pytest.raises(ValueError, match="scaling"):
        voxelscan.table("bold.nii", scaling="sideways")
    with pytest.raises(ValueError, match="SQL"):
        voxelscan.sql("SELEC nothing", bold="bold.nii")
    with pytest.raises(ValueError, match="no_such_table"):
        voxelscan.sql("SELECT * FROM no_such_table")
    with pytest.raises(ValueError, match="unknown voxel format"):
        voxelscan.table_factory("JPEG")
    with pytest.raises(ValueError):
        voxelscan.table("bold.nii").__datafusion_table_provider__(object())
