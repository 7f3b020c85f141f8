//! Generates the gRPC code from `distd/**/*.proto` with a vendored `protoc`,
//! so a fresh machine builds without installing protobuf.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "distd/v1/types.proto",
        "distd/v1/content.proto",
        "distd/v1/images.proto",
        "distd/v1/leases.proto",
        "distd/v1/store.proto",
        "distd/v1/transfer.proto",
        "distd/v1/plugins.proto",
        "distd/transport/v1/transport.proto",
    ];
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.include_file("distd_protos.rs");
    // Blob chunks travel as `Bytes`, so they are handed through without copies.
    config.bytes(["."]);
    tonic_prost_build::configure().compile_with_config(config, &protos, &["."])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
