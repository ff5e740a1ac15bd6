"""The public API: lazy names that all resolve, light modules that never load Opacus, no global warnings filter."""

import subprocess
import sys
import textwrap
from pathlib import Path

import dpsat_core

ROOT = Path(__file__).resolve().parents[1]


def fresh_python(code: str) -> str:
    """Run `code` in a new interpreter (nothing imported yet) and return what it printed."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_every_public_name_resolves():
    for name in dpsat_core.__all__:
        assert getattr(dpsat_core, name) is not None, name
    assert callable(dpsat_core.sweep) and dpsat_core.sweep.__module__ == "dpsat_core.sweeps"


def test_reading_a_store_drawing_and_reporting_never_import_opacus():
    out = fresh_python(
        """
        import sys
        import dpsat_core
        assert "torch" not in sys.modules, "import dpsat_core must be instant"
        import dpsat_core.store, dpsat_core.figures, dpsat_core.export, dpsat_core.report, dpsat_core.compare
        from dpsat_core import RunStore, RunRecord, METHODS, cached_analyses
        print(sorted(m for m in sys.modules if m.split(".")[0] == "opacus"))
        """
    )
    assert out == "[]"


def test_the_cli_parser_and_listing_runs_import_no_torch_pandas_or_opacus(tmp_path):
    out = fresh_python(
        f"""
        import contextlib, io, sys
        from dpsat_core.cli import build_parser, main
        import dpsat_core.cluster  # light too: a Ray actor imports it
        build_parser()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main(["runs", "--store", {str(tmp_path / "r.db")!r}])
        print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "opacus", "pandas", "plotly", "ray"}}))
        """
    )
    assert out == "[]"  # so `dpsat --help` and `dpsat runs` start in under half a second; Ray only for its sweeps


def test_importing_every_module_installs_no_warnings_filter():
    out = fresh_python(
        """
        import importlib, pkgutil, sys, warnings
        callers = []
        for name in ("filterwarnings", "simplefilter"):
            def record(*args, _real=getattr(warnings, name), **kwargs):
                callers.append(sys._getframe(1).f_code.co_filename)
                return _real(*args, **kwargs)
            setattr(warnings, name, record)
        import dpsat_core
        for module in pkgutil.walk_packages(dpsat_core.__path__, "dpsat_core."):
            if module.name != "dpsat_core.__main__":
                importlib.import_module(module.name)
        print(len(callers) > 0, sorted({c for c in callers if "dpsat_core" in c}))
        """
    )
    assert out == "True []"  # third-party packages did install filters (the check works); we did not


def test_the_overview_draws_from_the_store_without_torch_opacus_sklearn_or_scipy(tmp_path):
    from dpsat_core import RunStore
    from tests.factories import record

    store = RunStore(tmp_path / "runs.db")
    for method, eps in (("sgd", None), ("dpsgd", 1.0), ("dpsat", 1.0), ("dpsgd", 3.0), ("dpsat", 3.0)):
        for seed in (0, 1):
            made = record(method, eps, seed, acc=0.8 + 0.01 * seed)
            store.finish(store.create_run(made.config), made.summary, {})
    out = fresh_python(
        f"""
        import os, sys
        os.environ["DPSAT_STORE"] = {str(store.path)!r}
        import dpsat_core.workers
        dpsat_core.workers.warm_up = lambda: None  # the fork server's imports are its own process's: not started here
        from streamlit.testing.v1 import AppTest
        at = AppTest.from_file({str(ROOT / "dashboard" / "app.py")!r}, default_timeout=60).run()
        assert not at.exception, at.exception
        assert at.title[0].value.startswith("Do flat minima help") and len(at.get("plotly_chart")) >= 1
        print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "opacus", "sklearn", "scipy"}}))
        """
    )
    assert out == "[]"  # the first paint waits for no heavy import (bench/first_paint.py times it)
