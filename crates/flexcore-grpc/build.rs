//! Compiles `proto/flexcore/v1/*.proto` without a system `protoc`: `protox` parses them into a
//! descriptor set, which is written to `OUT_DIR` (for server reflection) and handed to
//! `tonic-prost-build` for the Rust messages, servers and clients.

use std::path::PathBuf;

/// The contract's files, relative to the repository's `proto/` directory.
const PROTOS: [&str; 3] = [
    "flexcore/v1/command.proto",
    "flexcore/v1/query.proto",
    "flexcore/v1/event_store.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed={}", root.display());
    for file in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }

    let mut compiler = protox::Compiler::new([&root])?;
    // Imports (google/protobuf/empty.proto) go into the set too, so that reflection clients can
    // resolve every type; source info carries the .proto comments into the Rust docs.
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    std::fs::write(
        out_dir.join("flexcore_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
