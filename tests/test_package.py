"""The public API: lazy names that all resolve, light modules that never load Opacus, no global warnings filter."""

import subprocess
import sys
import textwrap

import dpsat_core


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
