//! Links the `flexcore-bench` binary and its tests against the libpython of the `python3` on
//! the PATH (or `PYO3_PYTHON`), with an rpath, so the embedded interpreter (the `python`
//! bench) loads without `LD_LIBRARY_PATH`.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
