//! Links this crate's binaries and tests against the libpython that `python3` on the PATH uses,
//! with an rpath, so that the right shared library loads at run time.

fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
